//! What a guest writes for people to read (its WASI stdout and stderr, its
//! `shmrt.log` lines) reaches the host's stderr contained: one log line
//! per line, escaped, rate-limited. A guest can not flood the terminal,
//! drive it with escape sequences, or print a line that looks like one of
//! shmrt's own.

mod common;

use common::{run, stderr};

/// What the guest prints, over and over: a terminal title, a screen
/// clear, and text.
const NASTY: &[u8] = b"\x1b]0;pwned\x07\x1b[2J FORGED\n";

/// The bytes of `data` as a WAT string.
fn wat_bytes(data: &[u8]) -> String {
    data.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A guest whose `_start` (and callback, which then ends with status 5)
/// writes [`NASTY`] 5,000 times to stdout and 10 to stderr.
fn printer() -> std::path::PathBuf {
    let text = r#"(module
          (import "shmrt" "ring" (func))
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "\10\00\00\00LEN\00\00\00")
          (data (i32.const 16) "TEXT")
          (func $print (param $fd i32) (param $n i32)
            (loop $l
              (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
              (local.set $n (i32.sub (local.get $n) (i32.const 1)))
              (br_if $l (i32.gt_s (local.get $n) (i32.const 0)))))
          (func $both
            (drop (i32.atomic.load (i32.const 0)))
            (call $print (i32.const 1) (i32.const 5000))
            (call $print (i32.const 2) (i32.const 10)))
          (func (export "_start") (call $both))
          (func (export "shmrt_on_messages") (result i32) (call $both) (i32.const 5)))"#
        .replace("LEN", &wat_bytes(&[NASTY.len() as u8]))
        .replace("TEXT", &wat_bytes(NASTY));
    common::write_wat("output", "printer.wat", &text)
}

#[test]
fn wasi_output_is_escaped_and_rate_limited_in_every_mode() {
    let printer = printer();
    for (mode, status) in [("thread", 0), ("fiber", 0), ("callback", 5)] {
        let started = std::time::Instant::now();
        let out = run(&["--exec", mode], &printer, b"go\n");
        // A burst of 1000 lines, then 200 a second.
        let allowed = 1000 + 200 * (started.elapsed().as_secs() as usize + 1);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(status), "{mode}: {err}");
        assert!(!common::host_panicked(&err), "{mode}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{mode}: stdout carries messages only"
        );
        assert!(
            !out.stderr.iter().any(|&b| b == 0x1b || b == 0x07),
            "{mode}: a raw escape sequence reached the terminal"
        );
        let printed: Vec<&str> = err.lines().filter(|l| l.contains("FORGED")).collect();
        assert!(
            (100..=allowed).contains(&printed.len()),
            "{mode}: {} of 5,010 lines printed, not at most {allowed}",
            printed.len()
        );
        for line in &printed {
            assert!(
                line.contains("shmrt::guest") && line.contains("\\u{1b}]0;pwned"),
                "{mode}: printed as something other than an escaped log line: {line}"
            );
        }
        assert!(err.contains("were dropped"), "{mode}: {err}");
    }
}

/// `shmrt.log` text with line breaks stays one log line: the second line
/// of the text can not pass for a line of shmrt's.
#[test]
fn a_guest_log_line_can_not_forge_a_host_log_line() {
    let forged = b"hello\n2030-01-01T00:00:00.000000Z ERROR shmrt: the host is compromised\r\n";
    let text = r#"(module
          (import "shmrt" "log" (func $log (param i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "TEXT")
          (func (export "shmrt_main") (result i32)
            (drop (i32.atomic.load (i32.const 0)))
            (call $log (i32.const 2) (i32.const 0) (i32.const LEN))
            (i32.const 0)))"#
        .replace("TEXT", &wat_bytes(forged))
        .replace("LEN", &forged.len().to_string());
    let guest = common::write_wat("output", "forger.wat", &text);
    let out = run(&[], &guest, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("hello\\n2030-01-01"), "{err}");
    assert!(
        !err.lines().any(|l| l.starts_with("2030-01-01")),
        "a forged line: {err}"
    );
}
