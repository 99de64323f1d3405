//! The slot pool under pressure and misconfiguration: a host that waits
//! for slots a guest holds parks instead of spinning, and slot sizes that
//! would misalign the slots' length prefixes are refused on the command
//! line and in foreign segments.

mod common;

#[path = "../../../primitives/tests/support/vox_restated.rs"]
mod vox_restated;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, shmrt, stderr};
use shm_primitives as theirs;
use shmrt::{Runtime, SandboxError, SandboxOptions};
use vox_restated::VoxLayout;

/// Writes a hand-made module for this file's tests.
fn wat_file(name: &str, text: &str) -> std::path::PathBuf {
    common::write_wat("pool", name, text)
}

/// How long the sleeping guests sleep.
const SLEEP: Duration = Duration::from_secs(2);

/// A guest that sleeps [`SLEEP`] in WASI `poll_oneoff` (not in the shmrt
/// `wait`, which returns at once while messages are queued) without
/// reading anything, then returns 0. The atomic load is there because the
/// runtime refuses guests without atomics.
fn sleeper_wat() -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff"
            (func $poll (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "shmrt_main") (result i32)
            (drop (i32.atomic.load (i32.const 0)))
            ;; One subscription at 0: a relative CLOCK_MONOTONIC timeout.
            (i32.store8 (i32.const 8) (i32.const 0))
            (i32.store (i32.const 16) (i32.const 1))
            (i64.store (i32.const 24) (i64.const {ns}))
            (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
            (i32.const 0)))"#,
        ns = SLEEP.as_nanos()
    )
}

fn cpu_of(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The host keeps sending 1000-byte lines (slot messages) to a guest that
/// sleeps: once the host holds its share of the slots it must park on the
/// doorbell until the guest frees some, not spin. Measured on the whole
/// `shmrt run` process (wait4's rusage): a spinning host used ~100% of a
/// core for the whole sleep.
#[test]
#[expect(
    clippy::zombie_processes,
    reason = "reaped with wait4, which also gives its rusage"
)]
fn shmrt_run_parks_while_a_sleeping_guest_holds_the_slots() {
    let plugin = wat_file("sleeper.wat", &sleeper_wat());
    let mut child = shmrt()
        .arg("run")
        .arg(&plugin)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmrt run");
    let start = Instant::now();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let line = [&[b'x'; 999][..], b"\n"].concat();
        for _ in 0..400 {
            // The guest ends without reading it all: a broken pipe is fine.
            if stdin.write_all(&line).is_err() {
                break;
            }
        }
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is our unwaited child; status and usage are valid
    // out-pointers. std never waits for it after this (we do not call
    // `wait` on `child`).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(pid, child.id() as i32, "wait4");
    feeder.join().unwrap();
    let err = errs.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}: {err}"
    );
    assert!(
        wall >= SLEEP,
        "the guest slept {SLEEP:?}; the run took {wall:?}"
    );
    let cpu = cpu_of(&usage);
    assert!(
        cpu < wall / 10,
        "shmrt run used {cpu:?} of CPU in {wall:?} while the guest slept: the host spins \
         waiting for slots"
    );
}

/// The same through the library: a thread blocked in `send` for slots
/// uses next to no CPU (RUSAGE_THREAD of that thread), and learns that the
/// guest ended.
#[test]
fn a_library_send_waiting_for_slots_parks() {
    let runtime = Runtime::new().unwrap();
    let sandbox = runtime
        .spawn(
            sleeper_wat().as_bytes(),
            SandboxOptions {
                name: "sleeper".into(),
                timeout: Some(Duration::from_secs(30)),
                ..SandboxOptions::default()
            },
        )
        .unwrap();
    let (mut tx, _rx, handle) = sandbox.split();
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let payload = [7u8; 1000];
        let mut sent = 0;
        let end = loop {
            match tx.send(&payload) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        // SAFETY: an all-zero rusage is valid for getrusage to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer; RUSAGE_THREAD is this thread.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0, "getrusage");
        (sent, end, cpu_of(&usage), start.elapsed())
    });
    let (sent, end, cpu, wall) = sender.join().unwrap();
    assert_eq!(handle.join().unwrap(), 0);
    assert!(
        matches!(end, SandboxError::Closed { .. }),
        "the send ends when the guest does: {end}"
    );
    assert!(sent >= 1, "some messages fit before the pool ran dry");
    assert!(wall >= SLEEP / 2, "the sender waited {wall:?}");
    assert!(
        cpu < wall / 10,
        "the sending thread used {cpu:?} of CPU in {wall:?} waiting for slots"
    );
}

/// A payload size that would misalign the slots' length prefixes is a
/// usage error naming the flag and the nearest valid sizes.
#[test]
fn misaligned_slot_classes_are_a_usage_error() {
    let plugin = wat_file("sleeper-usage.wat", &sleeper_wat());
    let out = run(&["--slot-classes", "301:8"], &plugin, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--slot-classes"), "{err}");
    assert!(err.contains("300 or 304"), "{err}");
    assert!(!common::host_panicked(&err), "{err}");
}

/// A segment file made by another program (shm-primitives 0.3.1, which
/// takes any slot size) with a 301-byte class: `--attach` refuses it
/// before the guest runs (its atomics on the slot prefixes would trap, and
/// the host's would be undefined behaviour), naming the class and field.
#[test]
fn attach_refuses_a_foreign_segment_with_a_misaligned_slot_size() {
    let classes = [
        theirs::SizeClassConfig {
            slot_size: 301,
            slot_count: 8,
        },
        theirs::SizeClassConfig {
            slot_size: 65540,
            slot_count: 2,
        },
    ];
    let l = VoxLayout::new(1, 4096, &classes);
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u8; 64]);
    let mut lines = vec![Line([0; 64]); l.total_size.div_ceil(64)];
    let base = lines.as_mut_ptr() as *mut u8;
    // SAFETY: `lines` holds total_size zeroed, 64-aligned bytes, ours
    // alone (the reference writes only headers, metas and ring words).
    unsafe { l.init(theirs::Region::from_raw(base, l.total_size), &classes, 0) };
    // SAFETY: the same bytes, read back as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(base, l.total_size) };
    let path = wat_file("misaligned-301.seg", "");
    std::fs::write(&path, bytes).unwrap();
    let plugin = wat_file("sleeper-attach.wat", &sleeper_wat());
    let out = shmrt()
        .args(["run", "--attach"])
        .arg(&path)
        .arg(&plugin)
        .stdin(Stdio::null())
        .output()
        .expect("run shmrt run --attach");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(67), "{err}");
    assert!(
        err.contains("size class 0: slot_size = 301") && err.contains("multiple of 4"),
        "{err}"
    );
}
