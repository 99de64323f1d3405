//! zig-checksum: answers every message with one line, `<length> <sum>\n`,
//! where the sum adds the payload's little-endian u64 words (the last one
//! zero-padded), computed in place: a slot payload is never copied. The
//! reply carries its own newline, so run it with `--framing raw`.
//!
//! Run: head -c 3000000 /dev/urandom | shmrt run --framing raw $(shmrt build examples/zig-checksum)
const std = @import("std");
const shmrt = @import("shmrt");

/// The wrapping sum of the little-endian u64 words of `bytes`.
pub fn sum64(bytes: []const u8) u64 {
    var sum: u64 = 0;
    var i: usize = 0;
    while (i + 8 <= bytes.len) : (i += 8) {
        sum +%= std.mem.readInt(u64, bytes[i..][0..8], .little);
    }
    if (i < bytes.len) {
        var tail: [8]u8 = @splat(0);
        @memcpy(tail[0 .. bytes.len - i], bytes[i..]);
        sum +%= std.mem.readInt(u64, &tail, .little);
    }
    return sum;
}

fn handle(msg: shmrt.Message) shmrt.Error!void {
    const bytes = try msg.bytes();
    var line: [48]u8 = undefined;
    const text = std.fmt.bufPrint(&line, "{d} {x:0>16}\n", .{ bytes.len, sum64(bytes) }) catch unreachable;
    // The slot goes back before the answer takes room of its own.
    try msg.release();
    try shmrt.send(text);
}

comptime {
    shmrt.exportHandler(handle);
}

test "sum64 adds little-endian words, the tail zero-padded" {
    try std.testing.expectEqual(@as(u64, 0), sum64(""));
    try std.testing.expectEqual(@as(u64, 0x0201), sum64("\x01\x02"));
    try std.testing.expectEqual(@as(u64, 2), sum64("\x01\x00\x00\x00\x00\x00\x00\x00\x01"));
}
