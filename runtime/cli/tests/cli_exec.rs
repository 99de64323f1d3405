//! `shmrt run --exec thread|fiber|callback`: the same plugin gives the
//! same output in every mode, through every framing; a plugin without a
//! callback is refused as one with a message that says what to do; the
//! limits hold in each mode.

mod common;

use std::time::{Duration, Instant};

use common::{bytes, guest, len32, parse_len32, run, stderr, write_wat};

const MODES: [&str; 3] = ["thread", "fiber", "callback"];

#[test]
fn echo_gives_the_same_output_in_every_mode_and_framing() {
    let echo = guest("examples/echo");
    let lines: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let raw = bytes(7, 3 << 20);
    let sizes = [0usize, 1, 247, 248, 249, 4095, 4096, 4097, 65536, 1 << 20];
    let records: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u64, n))
        .collect();
    for mode in MODES {
        let out = run(&["--exec", mode], &echo, &lines);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(out.stdout == lines, "{mode}: lines changed");

        let out = run(&["--exec", mode, "--framing", "raw"], &echo, &raw);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(out.stdout == raw, "{mode}: raw bytes changed");

        let out = run(
            &["--exec", mode, "--framing", "len32"],
            &echo,
            &len32(&records),
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            parse_len32(&out.stdout) == records,
            "{mode}: records changed"
        );
    }
}

#[test]
fn a_plugin_with_only_a_blocking_loop_is_refused_as_a_callback_and_runs_otherwise() {
    // A WASI command (std, a `main` loop): no `shmrt_on_messages`.
    let std_echo = guest("runtime/tests/guests/std-echo");
    let out = run(&["--exec", "callback"], &std_echo, b"hi\n");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("shmrt_on_messages") && err.contains("--exec thread"),
        "{err}"
    );
    // It exits with the number of messages it saw; a WASI sleep (a
    // blocking call) suspends a fiber, not the run.
    for mode in ["thread", "fiber"] {
        let out = run(&["--exec", mode], &std_echo, b"hi\nsleep 50\n");
        assert_eq!(out.status.code(), Some(2), "{mode}: {}", stderr(&out));
        assert_eq!(out.stdout, b"std:hi\nstd:sleep 50\n", "{mode}");
    }
    // Without --exec it is not asked to be a callback.
    let out = run(&[], &std_echo, b"hi\n");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_looping_guest_times_out_in_every_mode() {
    let spin = write_wat(
        "cli-exec",
        "spin.wat",
        r#"(module
      (memory (export "memory") 1)
      (func $spin (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)))
      (func (export "shmrt_main") (result i32) (call $spin) (i32.const 0))
      (func (export "shmrt_on_messages") (result i32) (call $spin) (i32.const 0)))"#,
    );
    for mode in MODES {
        let started = Instant::now();
        let out = run(&["--exec", mode, "--timeout", "300ms"], &spin, b"go\n");
        assert_eq!(out.status.code(), Some(124), "{mode}: {}", stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(10), "{mode}");
    }
}

#[test]
fn exec_is_checked_against_attach_and_spelled_out() {
    let echo = guest("examples/echo");
    let out = common::shmrt()
        .args(["run", "--exec", "fiber", "--attach", "/nonexistent.seg"])
        .arg(&echo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--attach"), "{}", stderr(&out));
    let out = run(&["--exec", "green-threads"], &echo, b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("thread, fiber or callback"),
        "{}",
        stderr(&out)
    );
}

/// A handler that takes 1 ms a message, fed 2,500 of them at once: a
/// callback answers them all. Before, the callback's 1 s slice bounded a
/// whole batch of queued messages, and the run ended with "the callback
/// ran for more than 1s" after about 900 answers; the SDK now returns
/// from a call after 20 ms of a batch, so the slice bounds one message's
/// handling. By default the lines go packed, to a fiber (a pack of 2,500
/// lines in one callback call would take its whole slice and more).
#[test]
fn a_callback_with_slow_messages_answers_a_long_batch() {
    let plugin = common::guest("runtime/tests/guests/slow-handler");
    let input = "1000\n".repeat(2500);
    // As a callback, by name (lines then go one a message), and by default
    // (they go packed, to a fiber): each of the 2,500 lines answered.
    for exec in [&["--exec", "callback"][..], &[]] {
        let out = common::run(exec, &plugin, input.as_bytes());
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{exec:?}: {err}");
        assert_eq!(
            out.stdout.len(),
            input.len(),
            "{exec:?}: every line answered: {err}"
        );
    }
}

/// `--callback-slice` sets how long one call may hold shmrt's thread.
#[test]
fn the_callback_slice_is_set_from_the_command_line() {
    let probe = common::guest("runtime/tests/guests/probe");
    let started = Instant::now();
    let out = common::run(
        &["--exec", "callback", "--callback-slice", "200ms"],
        &probe,
        b"spin\n",
    );
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("more than 200ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
