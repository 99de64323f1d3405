//! Supervision: a failed sandbox restarted on a fresh segment under the
//! embedder's policy, with nothing of the crashed ones left behind.

mod common;

use std::sync::Mutex;

use shmrt::{RestartPolicy, Runtime, SandboxError, SandboxOptions};

/// The tests here count what the process holds, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What sandboxes leave behind if they leak: mappings of their segment
/// memfds, and the reservations of their memory windows (4 GiB and more).
/// Other mappings (malloc arenas of new threads, code) come and go on
/// their own, so the total is no measure of a leak.
fn sandbox_mappings() -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut segments = 0;
    let mut windows = 0;
    for line in maps.lines() {
        if line.contains("memfd:shmrt-segment") {
            segments += 1;
        }
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let len = u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
        if len >= 4 << 30 {
            windows += 1;
        }
    }
    (segments, windows)
}

#[test]
fn a_crashing_guest_is_restarted_until_it_succeeds_and_nothing_leaks() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = Runtime::new().unwrap();
    let wasm = std::fs::read(common::guest("runtime/tests/guests/probe")).unwrap();
    // A memfd segment, whose mappings show in /proc (an in-process one
    // is pages of the guest's memory: tests/density.rs counts those).
    let options = SandboxOptions {
        name: "flaky".into(),
        segment_source: shmrt::SegmentSource::Memfd,
        ..SandboxOptions::default()
    };
    // Warm up (the module cache, the epoch thread), then count.
    let warm = runtime.supervise(&wasm, &options, RestartPolicy::Never, |mut sb, _| {
        sb.sender().goodbye();
        sb.join()
    });
    assert_eq!(warm.unwrap(), 0);
    let (fds, maps) = (open_fds(), sandbox_mappings());

    let mut attempts = 0;
    let status = runtime.supervise(
        &wasm,
        &options,
        RestartPolicy::OnFailure { max_restarts: 30 },
        |mut sb, attempt| {
            attempts += 1;
            let (segments, windows) = sandbox_mappings();
            assert!(
                segments > maps.0 && windows > maps.1,
                "a live sandbox shows as its segment mapping and window reservation"
            );
            // Crash on the first 25 attempts, in the middle of slot traffic.
            sb.sender().send(&[9; 5000])?;
            assert_eq!(sb.receiver().recv()?.len(), 5000);
            if attempt < 25 {
                sb.sender().send(b"panic crash on purpose")?;
            } else {
                sb.sender().send(b"hello")?;
                assert_eq!(sb.receiver().recv()?.to_vec(), b"hello");
                sb.sender().goodbye();
            }
            sb.join()
        },
    );
    assert_eq!(status.unwrap(), 0);
    assert_eq!(attempts, 26);
    // Every crashed sandbox's segment, mapping and memfd are gone.
    assert!(
        open_fds() <= fds + 2,
        "file descriptors grew from {fds} to {}",
        open_fds()
    );
    assert_eq!(
        sandbox_mappings(),
        maps,
        "(segment mappings, window reservations) before and after 25 crashes"
    );
}

#[test]
fn the_policy_bounds_restarts_and_host_errors_are_not_retried() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = Runtime::new().unwrap();
    let wasm = std::fs::read(common::guest("runtime/tests/guests/probe")).unwrap();
    let options = SandboxOptions {
        name: "doomed".into(),
        ..SandboxOptions::default()
    };
    let mut attempts = 0;
    let r = runtime.supervise(
        &wasm,
        &options,
        RestartPolicy::OnFailure { max_restarts: 2 },
        |mut sb, _| {
            attempts += 1;
            sb.sender().send(b"panic always")?;
            sb.join()
        },
    );
    assert!(matches!(r, Err(SandboxError::Trap { .. })));
    assert_eq!(attempts, 3, "one run and two restarts");

    let mut attempts = 0;
    let r = runtime.supervise(&wasm, &options, RestartPolicy::Never, |mut sb, _| {
        attempts += 1;
        sb.sender().send(b"panic once")?;
        sb.join()
    });
    assert!(r.is_err());
    assert_eq!(attempts, 1);

    let r = runtime.supervise(
        b"not wasm",
        &options,
        RestartPolicy::OnFailure { max_restarts: 5 },
        |sb, _| sb.join(),
    );
    assert!(
        matches!(r, Err(SandboxError::Compile { .. })),
        "a bad module is not a guest failure"
    );
}
