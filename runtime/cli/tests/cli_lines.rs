//! Lines packed many to a message (`shmrt run --framing lines` with a
//! plugin that exports `shmrt_packed_lines_v1`, as `handler!` plugins do):
//! byte-exact in every execution mode, plugins without the marker fed a
//! line a message as before, answers of a line that come before the next
//! line is written, a malformed packed answer refused clearly, and a
//! batch lost with a guest that fails in it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{guest, in_exec_mode, run, shmrt, stderr, wait_at_most};

/// Lines of every kind: empty ones, CRLF ones, bytes of every value but
/// the newline (the packed header's magic among them), lines longer than
/// a packed message (64 KiB) and than a 4 KiB slot, and a last line
/// without its newline.
fn random_lines(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for i in 0..60_000u32 {
        let r = next();
        let len = match i % 1000 {
            0 => 70_000 + (r % 5000) as usize,
            1 => 5000,
            2 => 0,
            _ => (r % 40) as usize,
        };
        let start = out.len();
        for _ in 0..len {
            let b = (next() % 256) as u8;
            out.push(if b == b'\n' { b'.' } else { b });
        }
        match i % 97 {
            // A line that opens as a packed-lines header would.
            5 => {
                let header = shmrt::primitives::call_header::PACKED_LINES_HEADER;
                out.splice(start..start, header.iter().copied());
            }
            7 => out.push(b'\r'),
            _ => {}
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"the last line, without its newline");
    out
}

/// What `shmrt run` writes for `input` through an echo: every line with
/// its newline (the last one gains one).
fn echoed(input: &[u8]) -> Vec<u8> {
    let mut want = input.to_vec();
    if !want.ends_with(b"\n") {
        want.push(b'\n');
    }
    want
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes came back for {}, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn random_lines_round_trip_byte_exact_in_every_mode() {
    let input = random_lines(0x5EED);
    let want = echoed(&input);
    let echo = guest("examples/echo");
    for mode in ["auto", "callback", "fiber", "thread"] {
        in_exec_mode(mode, || {
            let out = run(&[], &echo, &input);
            assert!(out.status.success(), "{mode}: {}", stderr(&out));
            assert_same(&out.stdout, &want, mode);
        });
    }
}

/// A plugin without the marker (its own loops, not `handler!`) gets a
/// line a message, as before: the same bytes back.
#[test]
fn a_plugin_without_the_marker_is_fed_a_line_a_message() {
    // The probe takes some lines for commands: every line here starts
    // with a letter none of them does.
    let input: Vec<u8> = random_lines(7)
        .split(|&b| b == b'\n')
        .flat_map(|l| {
            let mut l = l.to_vec();
            l.insert(0, b'x');
            l.push(b'\n');
            l
        })
        .collect();
    let probe = guest("runtime/tests/guests/probe");
    // On a thread: the probe's own callback loop sends without checking
    // for room, which a 70 KB line does not always find in a callback.
    let out = run(&["--exec", "thread"], &probe, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same(&out.stdout, &input, "probe");
}

/// Any number of answers to a line, none included, in every mode: what a
/// line a message gave.
#[test]
fn several_answers_or_none_for_a_line_keep_their_order() {
    let probe = guest("runtime/cli/tests/guests/lines-probe");
    let mut input = Vec::new();
    let mut want = Vec::new();
    for i in 0..20_000 {
        match i % 4 {
            0 => {
                input.extend_from_slice(format!("twice {i}\n").as_bytes());
                want.extend_from_slice(format!("{i}\n{i}\n").as_bytes());
            }
            1 => input.extend_from_slice(b"none\n"),
            2 => {
                input.extend_from_slice(b"twice \n");
                want.extend_from_slice(b"\n\n");
            }
            _ => {
                input.extend_from_slice(format!("line {i}\r\n").as_bytes());
                want.extend_from_slice(format!("line {i}\r\n").as_bytes());
            }
        }
    }
    for mode in ["auto", "callback", "fiber", "thread"] {
        in_exec_mode(mode, || {
            let out = run(&[], &probe, &input);
            assert!(out.status.success(), "{mode}: {}", stderr(&out));
            assert_same(&out.stdout, &want, mode);
        });
    }
}

/// Answers written over the lines (in place, none, shorter than their
/// lines, so that later ones move back) keep their bytes and order in
/// every mode; a pack whose answers leave the lines' place midway (a line
/// answered twice) too.
#[test]
fn answers_in_place_shorter_or_none_keep_their_order() {
    let probe = guest("runtime/cli/tests/guests/lines-probe");
    let mut input = Vec::new();
    let mut want = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 1000 {
            0..=299 => {
                input.extend_from_slice(format!("short {i}-{}\n", x % 97).as_bytes());
                want.extend_from_slice(format!("{i}-{}\n", x % 97).as_bytes());
            }
            300..=399 => input.extend_from_slice(b"none\n"),
            // Rarely: a line answered twice, from which on the pack's
            // answers are gathered.
            400 => {
                input.extend_from_slice(format!("twice {i}\n").as_bytes());
                want.extend_from_slice(format!("{i}\n{i}\n").as_bytes());
            }
            _ => {
                let line = format!("line {i} {}", "x".repeat((x % 40) as usize));
                input.extend_from_slice(format!("{line}\n").as_bytes());
                want.extend_from_slice(format!("{line}\n").as_bytes());
            }
        }
    }
    // The last line without its newline, answered in place shorter.
    input.extend_from_slice(b"short last");
    want.extend_from_slice(b"last\n");
    for mode in ["auto", "callback", "fiber", "thread"] {
        in_exec_mode(mode, || {
            let out = run(&[], &probe, &input);
            assert!(out.status.success(), "{mode}: {}", stderr(&out));
            assert_same(&out.stdout, &want, mode);
        });
    }
}

/// A producer that writes a line at a time: each line's answer comes
/// before the next line is written (nothing waits to fill a batch).
#[test]
fn a_slow_producer_gets_each_answer_before_writing_the_next_line() {
    let echo = guest("examples/echo");
    for mode in ["auto", "callback", "fiber", "thread"] {
        let mut child = shmrt()
            .args(["-q", "run", "--exec", mode])
            .arg(&echo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shmrt run");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        for i in 0..5 {
            let line = format!("line {i} of a slow producer\n");
            let sent = Instant::now();
            stdin.write_all(line.as_bytes()).unwrap();
            stdin.flush().unwrap();
            let mut got = String::new();
            stdout.read_line(&mut got).unwrap();
            assert_eq!(got, line, "{mode}");
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "{mode}: an answer took {:?}",
                sent.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(stdin);
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{mode}");
        assert!(child.wait().unwrap().success(), "{mode}");
    }
}

/// A plugin that says it reads packed lines but answers with a malformed
/// packed message: a clear error, in time, no panic.
#[test]
fn a_malformed_packed_answer_is_a_clear_error() {
    let probe = guest("runtime/cli/tests/guests/lines-probe");
    for mode in ["auto", "fiber", "thread"] {
        let mut child = shmrt()
            .args(["run", "--exec", mode])
            .arg(&probe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shmrt run");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"a\nliar\nc\n")
            .unwrap();
        let status = wait_at_most(&mut child, Duration::from_secs(30), mode);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{mode}: {err}");
        assert!(
            err.contains("malformed packed-lines message")
                && err.contains("does not end with a newline"),
            "{mode}: {err}"
        );
        assert!(!common::host_panicked(&err), "{mode}: {err}");
    }
}

/// A guest that fails in a batch loses that batch (the answers it
/// gathered for its lines go with it, as a line's answer goes with the
/// line it failed in); the restart note says so, and the lines written
/// after the restart are answered by the next guest.
#[test]
fn a_batch_in_flight_when_the_guest_traps_is_lost_whole_and_reported() {
    let probe = guest("runtime/cli/tests/guests/lines-probe");
    for mode in ["auto", "fiber", "thread"] {
        let mut child = shmrt()
            .args(["run", "--restart", "on-failure", "--exec", mode])
            .arg(&probe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shmrt run");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr_pipe = BufReader::new(child.stderr.take().unwrap());
        // One batch answered, then one the guest fails in.
        stdin.write_all(b"first\n").unwrap();
        let mut got = String::new();
        stdout.read_line(&mut got).unwrap();
        assert_eq!(got, "first\n", "{mode}");
        stdin.write_all(b"lost\nboom\n").unwrap();
        // Written once the next guest runs.
        let mut err = String::new();
        while !err.contains("restarting it") {
            let mut line = String::new();
            if stderr_pipe.read_line(&mut line).unwrap() == 0 {
                panic!("{mode}: shmrt ended without restarting: {err}");
            }
            err.push_str(&line);
        }
        // A line sent between the trap and the next guest's start may go
        // to the failed guest's ring (lost, as without packing): give the
        // restart time.
        std::thread::sleep(Duration::from_secs(1));
        stdin.write_all(b"after\n").unwrap();
        drop(stdin);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        stderr_pipe.read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3), "{mode}: {err}");
        // "lost" went in the batch the guest failed in, or alone before
        // it: answered, or lost with it; "after" always comes.
        assert!(
            rest == "after\n" || rest == "lost\nafter\n",
            "{mode}: {rest:?}"
        );
        assert!(
            err.contains("the plugin was restarted 1 times") && err.contains("batch of lines"),
            "{mode}: {err}"
        );
    }
}

/// `shmrt.lines` is shmrt run's own configuration key.
#[test]
fn the_packing_configuration_key_is_reserved() {
    let out = run(
        &["--config", "shmrt.lines=packed-v1"],
        &guest("examples/echo"),
        b"a\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("shmrt.lines"), "{}", stderr(&out));
}

/// A callback that traps on a message after answering others in the same
/// call: those answers are written, as in thread and fiber mode (the SDK
/// leaves its cursors for the host after each message, and the host
/// publishes them after the trap too), then the run ends with the trap's
/// status. Length-prefixed, so that each line is a message of its own.
#[test]
fn answers_made_before_a_trap_in_the_same_call_are_written() {
    let probe = guest("runtime/cli/tests/guests/lines-probe");
    let mut input = Vec::new();
    for m in [&b"one"[..], b"two", b"boom", b"four"] {
        input.extend_from_slice(&(m.len() as u32).to_le_bytes());
        input.extend_from_slice(m);
    }
    for mode in ["callback", "fiber", "thread"] {
        let mut child = shmrt()
            .args(["run", "--framing", "len32", "--exec", mode])
            .arg(&probe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shmrt run");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let status = wait_at_most(&mut child, Duration::from_secs(30), mode);
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(70), "{mode}: {err}");
        assert_eq!(
            out, b"\x03\0\0\0one\x03\0\0\0two",
            "{mode}: the answers before the trap"
        );
        assert!(!common::host_panicked(&err), "{mode}: {err}");
    }
}
