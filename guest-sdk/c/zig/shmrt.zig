//! shmrt.zig: the shmrt guest SDK for Zig, a thin wrapper of
//! shmrt_guest.h (the C ABI of the Rust SDK, linked as a static library):
//! slices instead of pointer and length, error unions instead of codes.
//! `shmrt build` gives a Zig plugin this file as the module `shmrt`.
//!
//!     const shmrt = @import("shmrt");
//!
//!     fn handle(msg: shmrt.Message) shmrt.Error!void {
//!         const bytes = try msg.bytes();
//!         try shmrt.send(bytes);
//!     }
//!     comptime {
//!         shmrt.exportHandler(handle);
//!     }

/// The declarations of shmrt_guest.h, in Zig (Zig 0.16 and later have no
/// `@cImport`; the header test checks that these name the same functions).
pub const c = struct {
    pub const shmrt_msg = u32;
    pub const shmrt_reservation = u32;
    pub const shmrt_call = u32;
    pub const shmrt_handler_fn = ?*const fn (shmrt_msg) callconv(.c) i32;
    pub const shmrt_transform_fn = ?*const fn ([*c]u8, usize, ?*anyopaque) callconv(.c) usize;
    pub const shmrt_export_fn = ?*const fn (shmrt_call) callconv(.c) i32;
    pub const shmrt_export = extern struct { name: [*c]const u8, func: shmrt_export_fn };

    pub const SHMRT_OK: i32 = 0;
    pub const SHMRT_E_NULL: i32 = -1;
    pub const SHMRT_E_HANDLE: i32 = -2;
    pub const SHMRT_E_RELEASED: i32 = -3;
    pub const SHMRT_E_BUSY: i32 = -4;
    pub const SHMRT_E_OVER_COMMIT: i32 = -5;
    pub const SHMRT_E_GOODBYE: i32 = -6;
    pub const SHMRT_E_TOO_LARGE: i32 = -7;
    pub const SHMRT_E_WOULD_BLOCK: i32 = -8;
    pub const SHMRT_E_SLOTS_EXHAUSTED: i32 = -9;
    pub const SHMRT_E_PROTOCOL: i32 = -10;
    pub const SHMRT_E_OPEN: i32 = -11;
    pub const SHMRT_E_NO_CHANNEL: i32 = -12;
    pub const SHMRT_E_IN_HANDLER: i32 = -13;
    pub const SHMRT_E_MODE: i32 = -14;
    pub const SHMRT_E_NOT_UTF8: i32 = -15;
    pub const SHMRT_E_BAD_ARG: i32 = -16;
    pub const SHMRT_E_NOT_FOUND: i32 = -17;
    pub const SHMRT_E_TOO_SHORT: i32 = -18;
    pub const SHMRT_E_HOST_FAILED: i32 = -19;
    pub const SHMRT_E_HOST_PANICKED: i32 = -20;
    pub const SHMRT_E_REFUSED: i32 = -21;

    pub extern fn shmrt_serve(handler: shmrt_handler_fn) i32;
    pub extern fn shmrt_answer_queued(handler: shmrt_handler_fn) i32;
    pub extern fn shmrt_serve_exports(exports: [*c]const shmrt_export, count: usize) i32;
    pub extern fn shmrt_answer_exports(exports: [*c]const shmrt_export, count: usize) i32;
    pub extern fn shmrt_recv(msg: *shmrt_msg) i32;
    pub extern fn shmrt_msg_data(msg: shmrt_msg, data: *[*c]const u8, len: *usize) i32;
    pub extern fn shmrt_msg_is_slot(msg: shmrt_msg) i32;
    pub extern fn shmrt_release(msg: shmrt_msg) i32;
    pub extern fn shmrt_reply_in_place(msg: shmrt_msg, transform: shmrt_transform_fn, ctx: ?*anyopaque) i32;
    pub extern fn shmrt_send(data: [*c]const u8, len: usize) i32;
    pub extern fn shmrt_reserve(len: usize, res: *shmrt_reservation, data: *[*c]u8) i32;
    pub extern fn shmrt_commit(res: shmrt_reservation, len: usize) i32;
    pub extern fn shmrt_abandon(res: shmrt_reservation) i32;
    pub extern fn shmrt_goodbye() i32;
    pub extern fn shmrt_host_goodbye() i32;
    pub extern fn shmrt_call_input(call: shmrt_call, data: *[*c]const u8, len: *usize) i32;
    pub extern fn shmrt_call_reply(call: shmrt_call, data: [*c]const u8, len: usize) i32;
    pub extern fn shmrt_call_fail(call: shmrt_call, code: i32, message: [*c]const u8, len: usize) i32;
    pub extern fn shmrt_log(level: i32, text: [*c]const u8, len: usize) i32;
    pub extern fn shmrt_peer_id() u32;
    pub extern fn shmrt_now_ns() u64;
    pub extern fn shmrt_strerror(code: i32) [*c]const u8;
    pub extern fn shmrt_config_get(key: [*c]const u8, key_len: usize, out: [*c]u8, cap: usize, len: *usize) i32;
    pub extern fn shmrt_host_call(name: [*c]const u8, name_len: usize, input: [*c]const u8, input_len: usize, out: [*c]u8, cap: usize, out_len: *usize) i32;
    pub extern fn shmrt_host_output(out: [*c]u8, cap: usize, len: *usize) i32;
    pub extern fn shmrt_host_error(code: *i32, message: [*c]u8, cap: usize, len: *usize) i32;
};

/// Every SHMRT_E_* code of shmrt_guest.h, by name.
pub const Error = error{
    Null,
    Handle,
    Released,
    Busy,
    OverCommit,
    Goodbye,
    TooLarge,
    WouldBlock,
    SlotsExhausted,
    Protocol,
    Open,
    NoChannel,
    InHandler,
    Mode,
    NotUtf8,
    BadArg,
    NotFound,
    TooShort,
    HostFailed,
    HostPanicked,
    Refused,
    Unknown,
};

const codes = [_]struct { code: i32, err: Error }{
    .{ .code = c.SHMRT_E_NULL, .err = error.Null },
    .{ .code = c.SHMRT_E_HANDLE, .err = error.Handle },
    .{ .code = c.SHMRT_E_RELEASED, .err = error.Released },
    .{ .code = c.SHMRT_E_BUSY, .err = error.Busy },
    .{ .code = c.SHMRT_E_OVER_COMMIT, .err = error.OverCommit },
    .{ .code = c.SHMRT_E_GOODBYE, .err = error.Goodbye },
    .{ .code = c.SHMRT_E_TOO_LARGE, .err = error.TooLarge },
    .{ .code = c.SHMRT_E_WOULD_BLOCK, .err = error.WouldBlock },
    .{ .code = c.SHMRT_E_SLOTS_EXHAUSTED, .err = error.SlotsExhausted },
    .{ .code = c.SHMRT_E_PROTOCOL, .err = error.Protocol },
    .{ .code = c.SHMRT_E_OPEN, .err = error.Open },
    .{ .code = c.SHMRT_E_NO_CHANNEL, .err = error.NoChannel },
    .{ .code = c.SHMRT_E_IN_HANDLER, .err = error.InHandler },
    .{ .code = c.SHMRT_E_MODE, .err = error.Mode },
    .{ .code = c.SHMRT_E_NOT_UTF8, .err = error.NotUtf8 },
    .{ .code = c.SHMRT_E_BAD_ARG, .err = error.BadArg },
    .{ .code = c.SHMRT_E_NOT_FOUND, .err = error.NotFound },
    .{ .code = c.SHMRT_E_TOO_SHORT, .err = error.TooShort },
    .{ .code = c.SHMRT_E_HOST_FAILED, .err = error.HostFailed },
    .{ .code = c.SHMRT_E_HOST_PANICKED, .err = error.HostPanicked },
    .{ .code = c.SHMRT_E_REFUSED, .err = error.Refused },
};

/// A result of the C ABI: its value, or its code as an `Error`.
pub fn check(result: i32) Error!i32 {
    if (result >= 0) return result;
    for (codes) |entry| {
        if (entry.code == result) return entry.err;
    }
    return error.Unknown;
}

/// The SHMRT_E_* code of `err` (what a handler returns to end the plugin).
pub fn code(err: Error) i32 {
    for (codes) |entry| {
        if (entry.err == err) return entry.code;
    }
    return c.SHMRT_E_BAD_ARG;
}

/// A received message, valid until released (or its handler returns).
pub const Message = struct {
    handle: c.shmrt_msg,

    /// The payload, in place.
    pub fn bytes(self: Message) Error![]const u8 {
        var data: [*c]const u8 = null;
        var len: usize = 0;
        _ = try check(c.shmrt_msg_data(self.handle, &data, &len));
        if (len == 0) return &[_]u8{};
        return data[0..len];
    }

    /// Whether it came in a slot (else inline in the ring).
    pub fn isSlot(self: Message) Error!bool {
        return (try check(c.shmrt_msg_is_slot(self.handle))) == 1;
    }

    /// Gives its ring bytes or slot back.
    pub fn release(self: Message) Error!void {
        _ = try check(c.shmrt_release(self.handle));
    }

    /// Answers it with its own bytes rewritten in place by `transform`,
    /// which returns the reply's length; releases it.
    pub fn replyInPlace(self: Message, comptime transform: fn ([]u8) usize) Error!void {
        const T = struct {
            fn call(ptr: [*c]u8, len: usize, _: ?*anyopaque) callconv(.c) usize {
                if (len == 0) return transform(&[_]u8{});
                return transform(ptr[0..len]);
            }
        };
        _ = try check(c.shmrt_reply_in_place(self.handle, &T.call, null));
    }
};

/// Waits for the next message (a receive loop): null once the host said
/// goodbye and everything is read.
pub fn recv() Error!?Message {
    var handle: c.shmrt_msg = 0;
    if (try check(c.shmrt_recv(&handle)) == 0) return null;
    return Message{ .handle = handle };
}

/// Sends a copy of `bytes`.
pub fn send(bytes: []const u8) Error!void {
    _ = try check(c.shmrt_send(bytes.ptr, bytes.len));
}

/// Room for a message, filled in place, then committed.
pub const Reservation = struct {
    handle: c.shmrt_reservation,
    bytes: []u8,

    /// Sends the first `len` bytes.
    pub fn commit(self: Reservation, len: usize) Error!void {
        _ = try check(c.shmrt_commit(self.handle, len));
    }

    /// Gives the room back unsent.
    pub fn abandon(self: Reservation) Error!void {
        _ = try check(c.shmrt_abandon(self.handle));
    }
};

/// Reserves `len` bytes for a message.
pub fn reserve(len: usize) Error!Reservation {
    var handle: c.shmrt_reservation = 0;
    var data: [*c]u8 = null;
    _ = try check(c.shmrt_reserve(len, &handle, &data));
    return Reservation{ .handle = handle, .bytes = if (len == 0) &[_]u8{} else data[0..len] };
}

/// Log levels.
pub const Level = enum(i32) { trace = 0, debug = 1, info = 2, warn = 3, err = 4 };

/// Logs UTF-8 `text` at `level`.
pub fn log(level: Level, text: []const u8) Error!void {
    _ = try check(c.shmrt_log(@intFromEnum(level), text.ptr, text.len));
}

/// Whether the host said goodbye.
pub fn hostGoodbye() Error!bool {
    return (try check(c.shmrt_host_goodbye())) == 1;
}

/// The configuration value of `key` in `buf`; null without such a key.
pub fn configGet(key: []const u8, buf: []u8) Error!?[]u8 {
    var len: usize = 0;
    _ = check(c.shmrt_config_get(key.ptr, key.len, buf.ptr, buf.len, &len)) catch |e| {
        if (e == error.NotFound) return null;
        return e;
    };
    return buf[0..len];
}

/// Calls the host function `name`; its output in `out`.
pub fn hostCall(name: []const u8, input: []const u8, out: []u8) Error![]u8 {
    var len: usize = 0;
    _ = try check(c.shmrt_host_call(name.ptr, name.len, input.ptr, input.len, out.ptr, out.len, &len));
    return out[0..len];
}

fn handlerStatus(result: Error!void) i32 {
    result catch |e| return code(e);
    return 0;
}

/// Exports `handler` as the plugin (shmrt_main and shmrt_on_messages), so
/// it runs in every execution mode; an error it returns ends the plugin.
/// Call it in a `comptime` block.
pub fn exportHandler(comptime handler: fn (Message) Error!void) void {
    const H = struct {
        fn handle(msg: c.shmrt_msg) callconv(.c) i32 {
            return handlerStatus(handler(Message{ .handle = msg }));
        }
        fn main() callconv(.c) i32 {
            return c.shmrt_serve(&handle);
        }
        fn onMessages() callconv(.c) i32 {
            return c.shmrt_answer_queued(&handle);
        }
    };
    @export(&H.main, .{ .name = "shmrt_main" });
    @export(&H.onMessages, .{ .name = "shmrt_on_messages" });
}
