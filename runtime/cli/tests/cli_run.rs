//! `shmrt build` and `shmrt run` driven as a user would, with guests built
//! from source.

mod common;

use common::{bytes, guest, len32, parse_len32, run, shmrt, stderr, workspace};
use shmrt::primitives::checksum::checksum64;

#[test]
fn upper_prints_hello_world() {
    let out = run(&[], &guest("examples/upper"), b"hello\nworld\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWORLD\n");
}

/// The host parks at once (`--spin 0`) or spins long: the same output,
/// and a budget that is not a number is refused by name.
#[test]
fn spin_budget_changes_waiting_not_results() {
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let want = String::from_utf8_lossy(&input).to_uppercase();
    for spin in ["0", "1000000"] {
        let out = run(&["--spin", spin], &guest("examples/upper"), &input);
        assert!(out.status.success(), "--spin {spin}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "--spin {spin}");
    }
    let out = run(&["--spin", "lots"], &guest("examples/upper"), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--spin"), "{}", stderr(&out));
}

/// Every frame kind both ways: sizes around the inline threshold (248
/// bytes of payload with the default threshold of 256) and one byte under,
/// at and over each slot class's capacity (4 KiB, 64 KiB, 1 MiB).
#[test]
fn echo_every_frame_kind_and_boundary_size_both_ways() {
    let mut sizes = vec![0usize, 1, 2, 3, 4, 5, 247, 248, 249];
    for cap in [4096usize, 65536, 1 << 20] {
        sizes.extend([cap - 1, cap]);
        if cap < 1 << 20 {
            sizes.push(cap + 1);
        }
    }
    let records: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u64, n))
        .collect();
    let out = run(
        &["--framing", "len32"],
        &guest("examples/echo"),
        &len32(&records),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got = parse_len32(&out.stdout);
    assert_eq!(got.len(), records.len());
    for (g, r) in got.iter().zip(&records) {
        assert!(
            g == r,
            "a {}-byte message came back as {} bytes or changed",
            r.len(),
            g.len()
        );
    }
}

#[test]
fn a_message_larger_than_any_slot_is_refused_clearly() {
    let records = vec![b"fine".to_vec(), vec![7u8; (1 << 20) + 1]];
    let out = run(
        &["--framing", "len32"],
        &guest("examples/echo"),
        &len32(&records),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("announces 1048577 bytes, more than the largest message the segment carries (1048576 bytes)")
            && err.contains("--slot-classes"),
        "{err}"
    );
}

#[test]
fn a_raw_chunk_that_no_message_can_carry_is_refused_before_the_guest_starts() {
    let echo = guest("examples/echo");
    for (args, needle) in [
        (
            &["--chunk", "0"][..],
            "--chunk 0: a raw message needs at least 1 byte",
        ),
        (
            &["--chunk", "2MiB"],
            "--chunk 2097152 is larger than the largest message the segment carries (1048576 bytes)",
        ),
        (
            &["--chunk", "64KiB", "--slot-classes", "4KiB:16"],
            "--chunk 65536 is larger than the largest message the segment carries (4096 bytes)",
        ),
    ] {
        let out = run(&[&["--framing", "raw"], args].concat(), &echo, b"abc");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing was sent");
    }
    // The largest that fits is fine; --chunk without raw framing is said
    // to be meaningless, not ignored.
    let out = run(
        &[
            "--framing",
            "raw",
            "--chunk",
            "4KiB",
            "--slot-classes",
            "4KiB:16",
        ],
        &echo,
        b"abc",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"abc");
    let out = run(&["--chunk", "4096"], &echo, b"abc\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--chunk applies to --framing raw only"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hundred_thousand_messages_without_loss_duplication_or_reordering() {
    let input: String = (0..100_000).map(|i| format!("{i}\n")).collect();
    let out = run(&[], &guest("examples/echo"), input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == input.as_bytes(),
        "the echoed sequence differs"
    );
}

#[test]
fn ring_wraps_under_sustained_traffic_in_a_small_ring() {
    // 4 KiB rings: lines of 1..300 bytes wrap the ring hundreds of times,
    // inline and in slots.
    let mut input = Vec::new();
    for i in 0..20_000usize {
        let len = 1 + (i * 37) % 300;
        input.extend(bytes(i as u64, len).iter().map(|b| b'a' + b % 26));
        input.push(b'\n');
    }
    let out = run(
        &["--ring-capacity", "4KiB"],
        &guest("examples/echo"),
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == input, "the echoed stream differs");
}

#[test]
fn three_megabytes_of_random_bytes_through_raw_echo_are_byte_exact() {
    let input = bytes(42, 3_000_000);
    let out = run(&["--framing", "raw"], &guest("examples/echo"), &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "raw echo is not byte-exact");
}

#[test]
fn checksum_reads_slot_payloads_in_place() {
    let input = bytes(7, 1_000_000);
    let out = run(
        &["--framing", "raw", "--chunk", "300KiB"],
        &guest("examples/checksum"),
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let want: String = input
        .chunks(300 * 1024)
        .map(|c| format!("{} {:016x}\n", c.len(), checksum64(c)))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

/// `shmrt build` takes the target a guest's .cargo/config.toml names (the
/// other tests build their guests with plain cargo, see tests/common) and
/// prints the .wasm it built, for a no_std and a WASI guest.
#[test]
fn shmrt_build_builds_a_no_std_and_a_wasi_guest_for_their_targets() {
    for (dir, target) in [
        ("runtime/tests/guests/probe", "wasm32-unknown-unknown"),
        ("runtime/tests/guests/std-echo", "wasm32-wasip1"),
    ] {
        let out = shmrt()
            .arg("build")
            .arg(workspace().join(dir))
            .env(
                "CARGO_TARGET_DIR",
                workspace().join("target").join("guests"),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{dir}: {}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let wasm = std::path::PathBuf::from(stdout.lines().last().expect("a path"));
        assert!(wasm.is_file(), "{dir}: {wasm:?} is not a file");
        assert!(
            wasm.components().any(|c| c.as_os_str() == target),
            "{dir}: {wasm:?} is not built for {target}"
        );
    }
}

#[test]
fn a_wasi_std_guest_prints_to_stderr_and_exits_with_its_status() {
    let out = run(&[], &guest("runtime/tests/guests/std-echo"), b"x\ny\nz\n");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "std:x\nstd:y\nstd:z\n"
    );
    assert!(
        stderr(&out).contains("std-echo saw 3 messages"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_no_std_guest_exits_with_the_value_of_shmrt_main() {
    let out = run(
        &[],
        &guest("runtime/tests/guests/probe"),
        b"before\nexit 7\nnever read\n",
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
}

#[test]
fn a_trapping_guest_is_reported_with_its_message() {
    let out = run(
        &[],
        &guest("runtime/tests/guests/probe"),
        b"panic the probe gave up\n",
    );
    assert_eq!(out.status.code(), Some(70));
    let err = stderr(&out);
    assert!(
        err.contains("guest trapped") && err.contains("the probe gave up"),
        "{err}"
    );
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "the host must not panic: {err}"
    );
}

#[test]
fn a_spinning_guest_is_ended_by_its_timeout() {
    let start = std::time::Instant::now();
    let out = run(
        &["--timeout", "300ms"],
        &guest("runtime/tests/guests/probe"),
        b"spin\n",
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 300ms"),
        "{}",
        stderr(&out)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_module_without_atomics_is_refused_with_the_fix() {
    let dir = tempdir();
    let wat = dir.join("no-atomics.wat");
    std::fs::write(
        &wat,
        r#"(module
             (import "shmrt" "ring" (func))
             (memory (export "memory") 1)
             (func (export "shmrt_main") (result i32) i32.const 0))"#,
    )
    .unwrap();
    let out = run(&[], &wat, b"");
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("no atomic instruction") && err.contains("+atomics,+bulk-memory"),
        "{err}"
    );
}

#[test]
fn unreadable_and_invalid_plugins_give_clear_errors() {
    let out = run(&[], "/nonexistent/plugin.wasm".as_ref(), b"");
    assert_eq!(out.status.code(), Some(66));
    assert!(
        stderr(&out).contains("cannot read plugin /nonexistent/plugin.wasm"),
        "{}",
        stderr(&out)
    );
    let dir = tempdir();
    let bad = dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\xff\xff").unwrap();
    let out = run(&[], &bad, b"");
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("invalid WebAssembly module"),
        "{}",
        stderr(&out)
    );
}

fn tempdir() -> common::TempDir {
    common::TempDir::new("run")
}

#[test]
fn restart_on_failure_starts_the_plugin_again_within_its_budget() {
    let probe = guest("runtime/tests/guests/probe");
    let out = run(
        &["--restart", "on-failure", "--max-restarts", "2"],
        &probe,
        b"panic first run\n",
    );
    let err = stderr(&out);
    // The run restarted, then ended well: 3, and stderr says so.
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("restarting it on a fresh segment (restart 1)")
            && err.contains("the plugin was restarted 1 times"),
        "{err}"
    );
    let out = run(
        &["--restart", "on-failure", "--max-restarts", "0"],
        &probe,
        b"panic no budget\n",
    );
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
}

/// A WASI command that is not a plugin (it imports nothing from `shmrt`):
/// counts the lines of its stdin, prints `lines: N` on stdout, exits 3.
const LINE_COUNT_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 700) "lines: ")
  (func (export "_start")
    (local $n i32) (local $i i32) (local $lines i32) (local $p i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (block $eof
      (loop $read
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (local.set $n (i32.load (i32.const 16)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $scanned (loop $scan
          (br_if $scanned (i32.ge_u (local.get $i) (local.get $n)))
          (if (i32.eq (i32.load8_u (i32.add (i32.const 1024) (local.get $i))) (i32.const 10))
            (then (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $scan)))
        (br $read)))
    (i32.store8 (i32.const 600) (i32.const 10))
    (local.set $p (i32.const 600))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $lines) (i32.const 10))))
      (local.set $lines (i32.div_u (local.get $lines) (i32.const 10)))
      (br_if $digit (local.get $lines)))
    (local.set $p (i32.sub (local.get $p) (i32.const 7)))
    (memory.copy (local.get $p) (i32.const 700) (i32.const 7))
    (i32.store (i32.const 32) (local.get $p))
    (i32.store (i32.const 36) (i32.sub (i32.const 601) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 48)))
    (call $proc_exit (i32.const 3))))"#;

/// A plain WASI program runs as `wasmtime run` would run it: it reads the
/// host's stdin (before: consumed as messages, it saw none), writes the
/// host's stdout (before: stderr), and its exit status passes through;
/// `-v` says how it was run, and plugin-only options are refused.
#[test]
fn a_plain_wasi_command_runs_with_stdin_stdout_and_its_exit_status() {
    let program = common::write_wat("plain-command", "line-count.wat", LINE_COUNT_WAT);
    let out = run_without_rust_log(&["-v"], &program, b"one\ntwo\nthree\n");
    let err = stderr(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lines: 3\n", "{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("plain WASI command"), "{err}");
    // 1,000 lines: more than one read of stdin.
    let input = "x\n".repeat(1000);
    let out = run(&[], &program, input.as_bytes());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lines: 1000\n");
    assert!(!stderr(&out).contains("plain WASI"), "quiet without -v");
    let out = run(&["--restart", "on-failure"], &program, b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a plugin"), "{}", stderr(&out));
}

/// `-v` tells what shmrt did on a normal run (before: nothing at all):
/// how the module was compiled, where its guest ran, how it ended.
#[test]
fn verbose_runs_say_what_shmrt_did() {
    let upper = guest("examples/upper");
    let out = run_without_rust_log(&["-v", "--no-cache"], &upper, b"hello\n");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
    assert!(err.contains("compiled the module"), "{err}");
    // Lines go packed to a handler! plugin, and so to a fiber.
    assert!(err.contains("fiber guest, segment of"), "{err}");
    assert!(err.contains("the guest returned 0 after"), "{err}");
}

/// `shmrt run ARGS PLUGIN` with `input` on stdin and the log levels of
/// `-v`/`-q` (no `RUST_LOG`, which overrides them).
fn run_without_rust_log(
    args: &[&str],
    plugin: &std::path::Path,
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = shmrt()
        .arg("run")
        .args(args)
        .arg(plugin)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmrt run");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().expect("wait for shmrt run")
}
