//! `shmrt run` as a Unix citizen, with real pipes and signals: a closed
//! stdout, a full disk, SIGINT/SIGTERM/SIGHUP, a truncated len32 record,
//! option values it refuses, files that are not modules, and its logging.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{guest, run, shmrt, stderr, wait_at_most};

fn echo() -> std::path::PathBuf {
    guest("examples/echo")
}

fn read_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// `seq 1 100000 | shmrt run echo.wasm | head -1`: the reader goes away
/// after one line. shmrt ends promptly, by SIGPIPE as `cat` does, and says
/// nothing (before: it never exited, the guest blocked on a full ring).
#[test]
fn a_closed_stdout_ends_the_run_by_sigpipe() {
    let mut child = shmrt()
        .arg("run")
        .arg(echo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let lines: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
        let _ = stdin.write_all(lines.as_bytes());
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "1\n");
    // The reader (and with it the pipe's read end) is gone now.
    let status = wait_at_most(
        &mut child,
        Duration::from_secs(20),
        "run with a closed stdout",
    );
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
    let err = read_stderr(&mut child);
    assert!(err.is_empty(), "nothing said on stderr: {err}");
    feeder.join().unwrap();
}

/// Output to a full disk: the run ends with status 74 and says why.
#[test]
fn a_full_disk_ends_the_run_with_a_message() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = shmrt()
        .arg("run")
        .arg(echo())
        .stdin(Stdio::piped())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let lines: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
        let _ = stdin.write_all(lines.as_bytes());
    });
    let status = wait_at_most(&mut child, Duration::from_secs(20), "run to /dev/full");
    let err = read_stderr(&mut child);
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(
        err.contains("writing standard output") && err.contains("No space left on device"),
        "{err}"
    );
    feeder.join().unwrap();
}

/// SIGINT, SIGTERM and SIGHUP stop the guest, remove the named segment,
/// and end the run with 128 + the signal (before: the file stayed, and a
/// second run on the path failed).
#[test]
fn signals_stop_the_run_and_remove_the_named_segment() {
    let dir = common::TempDir::new("signals");
    std::fs::create_dir_all(&dir).unwrap();
    for (signal, status) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let segment = dir.join(format!("run-{signal}.seg"));
        let (mut child, stdin) = echo_running_on(&segment, &[]);
        assert!(segment.exists(), "the named segment is there while it runs");
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let got = wait_at_most(&mut child, Duration::from_secs(10), "run after a signal");
        assert_eq!(got.code(), Some(status), "signal {signal}: {got:?}");
        assert!(
            !segment.exists(),
            "signal {signal}: the segment file was removed"
        );
        drop(stdin);
    }
}

/// `shmrt run --segment PATH [extra] echo`, once a line has gone through
/// the guest (the sandbox is up, the file made); stdin stays open.
fn echo_running_on(segment: &std::path::Path, extra: &[&str]) -> (Child, std::process::ChildStdin) {
    let mut child = shmrt()
        .arg("run")
        .arg("--segment")
        .arg(segment)
        .args(extra)
        .arg(echo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"up\n").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    (child, stdin)
}

/// `--keep-segment` keeps the file through a signal.
#[test]
fn keep_segment_keeps_it_through_a_signal() {
    let dir = common::TempDir::new("keep");
    std::fs::create_dir_all(&dir).unwrap();
    let segment = dir.join("kept.seg");
    let (mut child, stdin) = echo_running_on(&segment, &["--keep-segment"]);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let got = wait_at_most(&mut child, Duration::from_secs(10), "run after SIGTERM");
    assert_eq!(got.code(), Some(143));
    assert!(segment.exists(), "kept");
    std::fs::remove_file(&segment).unwrap();
    drop(stdin);
}

/// A len32 stream that ends inside a length prefix is an error that says
/// how many bytes of it were there (before: dropped silently, exit 0).
#[test]
fn a_partial_len32_prefix_is_an_error() {
    let mut input = 5u32.to_le_bytes().to_vec();
    input.extend(b"hello");
    input.extend([7, 0]);
    let out = run(&["--framing", "len32"], &echo(), &input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inside a len32 length prefix: 2 of its 4 bytes"),
        "{err}"
    );
    // The whole record before it went through.
    assert_eq!(out.stdout, [&5u32.to_le_bytes()[..], b"hello"].concat());
}

/// Option values shmrt can not run with are usage errors (status 2) that
/// name the option, before any guest starts.
#[test]
fn bad_option_values_are_usage_errors_naming_the_option() {
    for (args, needle) in [
        (
            &["--dir", "/nonexistent-shmrt-dir"][..],
            "--dir /nonexistent-shmrt-dir",
        ),
        (&["--fuel", "0"][..], "--fuel"),
        (&["--timeout", "0"][..], "--timeout"),
        (
            &["--chunk", "4096"][..],
            "--chunk applies to --framing raw only",
        ),
    ] {
        let out = run(args, &echo(), b"");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A file that is not a module says so, whether it is text or bytes
/// (before: text was parsed as WAT, "expected '('", and random bytes gave
/// "input bytes aren't valid utf-8").
#[test]
fn files_that_are_not_modules_say_so() {
    let dir = common::TempDir::new("notwasm");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "just some notes\n").unwrap();
    let random = dir.join("random.bin");
    std::fs::write(&random, common::bytes(3, 4096)).unwrap();
    for file in [&text, &random] {
        let out = run(&[], file, b"");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(65), "{err}");
        assert!(
            err.contains("not a WebAssembly module") && err.contains("\\0asm"),
            "{err}"
        );
    }
}

/// `-v` shows shmrt's own info, `-vv` the guest's debug; neither shows
/// wasmtime's or cranelift's events; no colour codes when stderr is not a
/// terminal.
#[test]
fn verbosity_is_shmrt_s_own_and_uncoloured_off_a_terminal() {
    let probe = guest("runtime/tests/guests/probe");
    let logged = |args: &[&str]| {
        let mut child = shmrt()
            .arg("run")
            .args(args)
            .arg(&probe)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"log 1 a debug line\nlog 2 an info line\n")
            .unwrap();
        let status = wait_at_most(&mut child, Duration::from_secs(30), "run");
        assert!(status.success());
        read_stderr(&mut child)
    };
    let quiet = logged(&[]);
    assert!(
        quiet.contains("an info line") && !quiet.contains("a debug line"),
        "{quiet}"
    );
    let v = logged(&["-v"]);
    assert!(
        v.contains("an info line") && !v.contains("a debug line"),
        "{v}"
    );
    let vv = logged(&["-vv"]);
    assert!(vv.contains("a debug line"), "{vv}");
    for err in [&quiet, &v, &vv] {
        assert!(
            !err.contains('\x1b'),
            "no ANSI escapes off a terminal: {err}"
        );
        assert!(
            !err.contains("cranelift") && !err.contains("wasmtime::"),
            "no engine events without RUST_LOG: {} lines",
            err.lines().count()
        );
    }
}

/// `--restart on-failure` says on stderr how many restarts happened and
/// how many messages the failed sandbox never read, and a run that
/// restarted exits 3, not 0 (before: only a warning, status 0).
#[test]
fn a_restart_says_what_was_lost_and_the_status_says_it_happened() {
    let probe = guest("runtime/tests/guests/probe");
    let out = run(
        &["--restart", "on-failure"],
        &probe,
        b"one\npanic boom\ntwo\nthree\n",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("the plugin was restarted 1 times")
            && err.contains("messages may have been lost"),
        "{err}"
    );
    // What was still in the failed sandbox's ring is counted (the message
    // it failed on included): together with what the new one echoed, that
    // is everything from the panic on. "Up to": a guest releases ring
    // room lazily, so some of it may have been read.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("one\n"), "{stdout}");
    let lost: usize = err
        .split("up to ")
        .nth(1)
        .and_then(|tail| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count of lost messages");
    assert_eq!(lost + stdout.lines().count() - 1, 3, "{err}\n{stdout}");
}

/// Compiled modules are kept in the user's cache directory and used by
/// the next run; `--no-cache` keeps nothing; a damaged entry is compiled
/// again, not trusted.
#[test]
fn compiled_modules_are_cached_between_runs() {
    let cache = common::TempDir::new("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run_with_cache = |extra: &[&str]| {
        let mut child = shmrt()
            .arg("run")
            .args(extra)
            .arg(echo())
            .env("XDG_CACHE_HOME", &cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"cached\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(out.stdout, b"cached\n");
    };
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.join("shmrt").join("modules"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    run_with_cache(&["--no-cache"]);
    assert!(entries().is_empty(), "--no-cache keeps nothing");
    run_with_cache(&[]);
    let kept = entries();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].extension().is_some_and(|e| e == "cwasm"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cache.join("shmrt").join("modules"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is the user's own");
    let written = std::fs::metadata(&kept[0]).unwrap().modified().unwrap();
    run_with_cache(&[]);
    assert_eq!(entries(), kept);
    assert_eq!(
        std::fs::metadata(&kept[0]).unwrap().modified().unwrap(),
        written,
        "the second run loaded the entry, it did not write it again"
    );
    // A damaged entry is compiled again and replaced: not a module at
    // all, or a module with bytes flipped in its machine code (which
    // wasmtime alone would load and run: a host crash).
    std::fs::write(&kept[0], b"not a module").unwrap();
    run_with_cache(&[]);
    let mut whole = std::fs::read(&kept[0]).unwrap();
    assert!(whole.len() > 100, "replaced");
    let middle = whole.len() / 2;
    for b in &mut whole[middle..middle + 64] {
        *b ^= 0xFF;
    }
    std::fs::write(&kept[0], &whole).unwrap();
    run_with_cache(&[]);
    // Another module's entry under this module's name is not run: the
    // echo still echoes (upper's code would upper-case).
    let upper_out = {
        let mut child = shmrt()
            .arg("run")
            .arg(guest("examples/upper"))
            .env("XDG_CACHE_HOME", &cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"x\n").unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(upper_out.status.success());
    let upper_entry = entries()
        .into_iter()
        .find(|p| p != &kept[0])
        .expect("upper's entry");
    std::fs::copy(&upper_entry, &kept[0]).unwrap();
    run_with_cache(&[]);
    let _ = std::fs::remove_dir_all(&cache);
}

/// A cache directory others may write is not used (its entries would be
/// code anyone could plant): the run goes on, compiling, and says why.
#[test]
fn a_cache_directory_others_may_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = common::TempDir::new("open-cache");
    let modules = cache.join("shmrt").join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    for dir in [cache.join("shmrt"), modules.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut child = shmrt()
        .arg("run")
        .arg(echo())
        .env("XDG_CACHE_HOME", &cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"open\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"open\n");
    assert!(
        stderr(&out).contains("not using the compiled-module cache"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(&modules).unwrap().count(),
        0,
        "nothing written there"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// The same for a cache directory of this user's under a directory others
/// may write (not sticky): they could swap the cache for their own between
/// the check and the load. Every directory above the cache is checked.
#[test]
fn a_cache_under_a_directory_others_may_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let open = common::TempDir::new("open-parent");
    let _ = std::fs::remove_dir_all(&open);
    let cache = open.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = shmrt()
        .arg("run")
        .arg(echo())
        .env("XDG_CACHE_HOME", &cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"open\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, b"open\n");
    assert!(
        err.contains("not using the compiled-module cache") && err.contains("shmrt-open-parent"),
        "{err}"
    );
    let entries = std::fs::read_dir(cache.join("shmrt").join("modules"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "nothing written there");
    let _ = std::fs::remove_dir_all(&open);
}

/// A module refused by the cheap checks (it imports `shmrt` without an
/// atomic instruction) is refused before it is compiled: no entry of it
/// is written to the cache.
#[test]
fn a_refused_module_is_not_compiled_into_the_cache() {
    let cache = common::TempDir::new("refused-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let plain = common::write_wat(
        "refused-cache",
        "no-atomics.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func (export "shmrt_main") (result i32) (i32.const 0)))"#,
    );
    let out = shmrt()
        .arg("run")
        .arg(&plain)
        .env("XDG_CACHE_HOME", &cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("atomic"), "{err}");
    let entries = std::fs::read_dir(cache.join("shmrt").join("modules"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "a refused module was compiled and kept");
    let _ = std::fs::remove_dir_all(&cache);
}

/// `--segment` on a path that is someone else's file fails and leaves the
/// file alone (before: the file was removed at exit).
#[test]
fn a_segment_path_that_exists_is_left_alone() {
    let dir = common::TempDir::new("precious");
    std::fs::create_dir_all(&dir).unwrap();
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, b"keep me").unwrap();
    let out = run(&["--segment", precious.to_str().unwrap()], &echo(), b"hi\n");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}
