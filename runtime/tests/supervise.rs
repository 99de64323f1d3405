//! Supervision: a failed sandbox restarted on a fresh segment under the
//! embedder's policy, with nothing of the crashed ones left behind.

mod common;

use shmrt::{RestartPolicy, Runtime, SandboxError, SandboxOptions};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_crashing_guest_is_restarted_until_it_succeeds_and_nothing_leaks() {
    let runtime = Runtime::new().unwrap();
    let wasm = std::fs::read(common::guest("runtime/tests/guests/probe")).unwrap();
    let options = SandboxOptions {
        name: "flaky".into(),
        ..SandboxOptions::default()
    };
    // Warm up (the module cache, the epoch thread), then count.
    let warm = runtime.supervise(&wasm, &options, RestartPolicy::Never, |mut sb, _| {
        sb.sender().goodbye();
        sb.join()
    });
    assert_eq!(warm.unwrap(), 0);
    let (fds, maps) = (open_fds(), mappings());

    let mut attempts = 0;
    let status = runtime.supervise(
        &wasm,
        &options,
        RestartPolicy::OnFailure { max_restarts: 30 },
        |mut sb, attempt| {
            attempts += 1;
            // Crash on the first 25 attempts, in the middle of slot traffic.
            sb.sender().send(&[9; 5000])?;
            assert_eq!(sb.receiver().recv()?.len(), 5000);
            if attempt < 25 {
                sb.sender().send(b"panic crash on purpose")?;
            } else {
                sb.sender().send(b"hello")?;
                assert_eq!(sb.receiver().recv()?.as_bytes(), b"hello");
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
    assert!(
        mappings() <= maps + 8,
        "mappings grew from {maps} to {}",
        mappings()
    );
}

#[test]
fn the_policy_bounds_restarts_and_host_errors_are_not_retried() {
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
