//! Hostile guests against the host's limits: what a guest makes the host
//! decode, sleep through or allocate. Each case here hurt the host before
//! (a crash, a run that outlived its timeout, memory past the limit).

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::{guest, run, shmrt, stderr, wait_at_most};
use shmrt::primitives::{SegmentConfig, SegmentLayout};
use shmrt::{Runtime, SandboxError, SandboxOptions};

/// Writes a hand-made module for this file's tests.
fn wat_file(name: &str, text: &str) -> std::path::PathBuf {
    common::write_wat("limits", name, text)
}

fn std_echo() -> std::path::PathBuf {
    guest("runtime/tests/guests/std-echo")
}

/// The guest logs the low byte of its G2H read cursor after each message
/// while the host, draining, rewrites it: the host validated the byte in
/// place, then decoded it as it had become (a lead byte of a 4-byte
/// sequence), and the decoder ran past the end of the string until it
/// faulted. Now the bytes are copied out first.
#[test]
fn log_of_bytes_the_host_rewrites_meanwhile() {
    let layout = SegmentLayout::compute(&SegmentConfig::single_guest()).unwrap();
    let read_cursor = layout.g2h_ring_offset(0) + 64;
    let probe = guest("runtime/tests/guests/probe");
    for _ in 0..3 {
        // On a thread of its own: the host drains while the guest logs
        // (a callback's 200,000 sends would find the ring full).
        let out = run(
            &["--exec", "thread"],
            &probe,
            format!("lograce {read_cursor} 1 200000\n").as_bytes(),
        );
        assert_eq!(out.status.signal(), None, "{}", stderr(&out));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(out.stdout.len(), 2 * 200_000, "every message came out");
    }
}

/// A WASI sleep (poll_oneoff on a clock) ends at the deadline: before, a
/// guest sleeping forever outlived `--timeout` forever, and one sleeping
/// a minute under `--timeout 500ms` ran its minute.
#[test]
fn a_wasi_sleep_ends_at_the_timeout() {
    for (sleep, timeout) in [("sleep 100000000\n", "1s"), ("sleep 60000\n", "500ms")] {
        let mut child = shmrt()
            .args(["run", "--timeout", timeout])
            .arg(std_echo())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sleep.as_bytes())
            .unwrap();
        // Compiling the WASI guest takes a few seconds of this bound.
        let status = wait_at_most(&mut child, Duration::from_secs(30), sleep.trim());
        assert_eq!(status.code(), Some(124), "{sleep}");
    }
}

/// `stop()` ends a guest sleeping in WASI, and `join` says it was stopped.
#[test]
fn stop_ends_a_wasi_sleep() {
    let runtime = Runtime::new().unwrap();
    let mut sandbox = runtime
        .spawn_file(&std_echo(), SandboxOptions::default())
        .unwrap();
    sandbox.sender().send(b"sleep 100000000").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (_tx, _rx, handle) = sandbox.split();
    handle.stop();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(handle.join()));
    match done_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Err(SandboxError::Stopped { .. })) => {}
        Ok(other) => panic!("expected a stop, got {other:?}"),
        Err(_) => panic!("join did not return after stop(): the WASI sleep went on"),
    }
}

/// The guest has ended (its timeout) while stdin stays open: `shmrt run`
/// exits then, it does not wait for the end of stdin.
#[test]
fn the_run_ends_with_the_guest_while_stdin_stays_open() {
    let mut child = shmrt()
        .args(["run", "--timeout", "1s"])
        .arg(guest("runtime/tests/guests/probe"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"spin\n").unwrap();
    stdin.flush().unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(15), "run with stdin open");
    assert_eq!(status.code(), Some(124));
    drop(stdin);
}

/// One budget across every memory: three extra memories of 16 MiB each
/// under a 32 MiB limit. Before, each memory had the whole limit (7 of
/// 56 MiB reached 408 MiB under a 64 MiB limit). The module returns 7
/// when a growth is refused, 0 when all were allowed.
#[test]
fn one_memory_budget_across_every_memory() {
    let multi = wat_file(
        "multi-memory.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (memory $b 1) (memory $c 1) (memory $d 1)
             (func (export "shmrt_main") (result i32)
               (drop (i32.atomic.load (i32.const 0)))
               (if (i32.eq (memory.grow $b (i32.const 256)) (i32.const -1)) (then (return (i32.const 7))))
               (if (i32.eq (memory.grow $c (i32.const 256)) (i32.const -1)) (then (return (i32.const 7))))
               (if (i32.eq (memory.grow $d (i32.const 256)) (i32.const -1)) (then (return (i32.const 7))))
               (i32.const 0)))"#,
    );
    let out = run(&["--max-memory", "32MiB"], &multi, b"");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = run(&["--max-memory", "64MiB"], &multi, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "within the budget: {}",
        stderr(&out)
    );
}

/// Tables count in the same budget (8 bytes an element): before, 50
/// tables of a million elements reached ~400 MiB under a 1 MiB limit.
#[test]
fn tables_count_in_the_memory_budget() {
    let tables = wat_file(
        "tables.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (table $a 1 funcref) (table $b 1 funcref)
             (func (export "shmrt_main") (result i32)
               (drop (i32.atomic.load (i32.const 0)))
               (if (i32.eq (table.grow $a (ref.null func) (i32.const 100000)) (i32.const -1))
                 (then (return (i32.const 8))))
               (if (i32.eq (table.grow $b (ref.null func) (i32.const 100000)) (i32.const -1))
                 (then (return (i32.const 8))))
               (i32.const 0)))"#,
    );
    // 2 x 800 KB of elements and the 64 KiB page: over 1 MiB, under 2.
    let out = run(&["--max-memory", "1MiB"], &tables, b"");
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let out = run(&["--max-memory", "2MiB"], &tables, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "within the budget: {}",
        stderr(&out)
    );
}

/// Counts of memories and tables are bounded whatever the budget, with an
/// error that says the bound.
#[test]
fn too_many_memories_or_tables_are_refused() {
    let memories = wat_file(
        "five-memories.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (memory 1) (memory 1) (memory 1) (memory 1)
             (func (export "shmrt_main") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#,
    );
    let out = run(&[], &memories, b"");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("module has 5 linear memories; shmrt allows at most 4"),
        "{}",
        stderr(&out)
    );
    let many_tables: String = (0..17).map(|_| "(table 1 funcref) ").collect();
    let tables = wat_file(
        "seventeen-tables.wat",
        &format!(
            r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1) {many_tables}
             (func (export "shmrt_main") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#
        ),
    );
    let out = run(&[], &tables, b"");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("module has 17 tables; shmrt allows at most 16"),
        "{}",
        stderr(&out)
    );
}

/// A guest that logs as fast as it can is cut to the rate limit, and the
/// host says how many lines it dropped.
#[test]
fn a_log_flood_is_rate_limited_and_counted() {
    // Offset 0 is the header's magic: "TELX" in every line logged.
    let out = run(
        &[],
        &guest("runtime/tests/guests/probe"),
        b"lograce 0 4 20000\n",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let shown = err.lines().filter(|l| l.contains("TELX")).count();
    assert!(
        (1000..5000).contains(&shown),
        "{shown} of 20000 lines shown (a burst of 1000, then 200 a second)"
    );
    assert!(
        err.contains("log lines of this guest were dropped"),
        "the drop is said: {}",
        &err[err.len().saturating_sub(2000)..]
    );
}

/// A WASI guest opening a FIFO an operator put in its `--dir` blocks in a
/// host call nothing interrupts: the run still ends at its timeout (the
/// guest's thread is left behind), instead of never.
#[test]
fn a_fifo_in_a_dir_does_not_hold_the_run_past_its_timeout() {
    let dir = common::TempDir::new("fifo-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo call on our own path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let opener = wat_file(
        "open-fifo.wat",
        r#"(module
             (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (data (i32.const 0) "fifo")
             (func (export "_start")
               (drop (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 0)
                                 (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 100)))
               (i32.store (i32.const 200) (i32.const 300))
               (i32.store (i32.const 204) (i32.const 16))
               (call $exit (call $read (i32.load (i32.const 100)) (i32.const 200) (i32.const 1) (i32.const 400)))))"#,
    );
    let mut child = shmrt()
        .args(["run", "--timeout", "1s", "--dir"])
        .arg(format!("{}::.", dir.display()))
        .arg(&opener)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(
        &mut child,
        Duration::from_secs(20),
        "a guest opening a FIFO",
    );
    assert_eq!(status.code(), Some(124));
}

/// A guest that never reads, under 1000-byte lines: the host's send finds
/// no slot, and after the slot wait the run ends with 75 and the error,
/// instead of waiting forever.
#[test]
fn a_host_send_that_finds_no_slot_ends_with_75() {
    let noread = wat_file(
        "no-read.wat",
        r#"(module
             (import "shmrt" "wait" (func $wait (param i64) (result i32)))
             (memory (export "memory") 1)
             (func (export "shmrt_main") (result i32)
               (drop (i32.atomic.load (i32.const 64)))
               (loop $l (br_if $l (i32.ne (call $wait (i64.const -1)) (i32.const 2))))
               (i32.const 0)))"#,
    );
    let mut child = shmrt()
        .arg("run")
        .arg(&noread)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let line = format!("{}\n", "a".repeat(1000));
    let feeder = std::thread::spawn(move || while stdin.write_all(line.as_bytes()).is_ok() {});
    let status = wait_at_most(
        &mut child,
        Duration::from_secs(30),
        "a host send finding no slot",
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(
        err.contains("no slot for a 1000-byte message") && err.contains("allocated by the host"),
        "{err}"
    );
    feeder.join().unwrap();
}

/// `poll_oneoff` on a file descriptor (stdin) with a clock goes to
/// wasmtime-wasi and answers (before: every such set trapped).
#[test]
fn poll_oneoff_on_a_descriptor_answers() {
    let poller = wat_file(
        "poll-stdin.wat",
        r#"(module
             (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 2)
             (func (export "_start")
               (i64.store (i32.const 0) (i64.const 100))
               (i32.store8 (i32.const 8) (i32.const 0))
               (i32.store (i32.const 16) (i32.const 1))
               (i64.store (i32.const 24) (i64.const 3600000000000))
               (i64.store (i32.const 48) (i64.const 101))
               (i32.store8 (i32.const 56) (i32.const 1))
               (i32.store (i32.const 64) (i32.const 0))
               (if (call $poll (i32.const 0) (i32.const 1024) (i32.const 2) (i32.const 2048))
                 (then (call $exit (i32.const 9))))
               ;; One event, for the descriptor (userdata 101).
               (call $exit (i32.add (i32.load (i32.const 2048))
                                    (i32.mul (i32.const 10) (i64.ne (i64.load (i32.const 1024)) (i64.const 101)))))))"#,
    );
    let out = run(&["--timeout", "30s"], &poller, b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// Values a user may well give: a timeout too large for a clock is no
/// timeout (before: a host panic), a negative guest status is a failure
/// (before: exit 0), a segment too large for a 32-bit memory is the
/// options' fault (2, before: 65, "instantiation failed").
#[test]
fn huge_timeouts_negative_statuses_and_oversized_segments() {
    let echo = guest("examples/echo");
    let out = run(&["--timeout", "10000000000000000000s"], &echo, b"hi\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"hi\n");
    let negative = wat_file(
        "negative.wat",
        r#"(module (memory (export "memory") 1) (func (export "shmrt_main") (result i32) (i32.const -1)))"#,
    );
    let out = run(&[], &negative, b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("status -1, outside 0..=255"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--slot-classes", "1GiB:4"], &echo, b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not fit a 32-bit linear memory"),
        "{}",
        stderr(&out)
    );
}

/// What stdin or the plugin path can make the host buffer is bounded: a
/// len32 record larger than any message is refused before it is read,
/// and so is a "plugin" that never ends.
#[test]
fn input_the_host_would_buffer_is_bounded() {
    let echo = guest("examples/echo");
    let mut huge = 0xF0FF_FFFFu32.to_le_bytes().to_vec();
    huge.extend(std::iter::repeat_n(0u8, 1 << 20));
    let out = run(&["--framing", "len32"], &echo, &huge);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than the largest message the segment carries"),
        "{}",
        stderr(&out)
    );
    let long_line = vec![b'x'; 3 << 20];
    let out = run(&[], &echo, &long_line);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a line of more than"),
        "{}",
        stderr(&out)
    );
    let out = run(&[], std::path::Path::new("/dev/zero"), b"");
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 256 MiB"),
        "{}",
        stderr(&out)
    );
}
