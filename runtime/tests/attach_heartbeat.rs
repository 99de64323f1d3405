//! `Runtime::attach` keeps the guest's heartbeat in a segment another
//! program made, on a thread of its own, whatever interval that program
//! wrote: the thread ends with its sandbox, not after half the interval.
//! (Alone in its binary: it counts this process's threads.)

mod common;

use std::time::{Duration, Instant};

use shmrt::SegmentFile;
use shmrt::primitives::SegmentConfig;
use shmrt::{Runtime, SandboxError, SandboxOptions};

/// Threads of this process named `shmrt-heartbeat`.
fn heartbeat_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "shmrt-heartbeat")
        .count()
}

fn wait_for(done: impl Fn() -> bool, what: &str) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_absurd_heartbeat_interval_leaks_no_thread() {
    let dir = common::TempDir::new("heartbeat");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = std::fs::read(common::guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut config = SegmentConfig::single_guest();
    config.heartbeat_interval_ns = u64::MAX / 2;
    for round in 0..20 {
        let path = dir.join(format!("seg{round}"));
        // The other program, which made the file and keeps it.
        let host = SegmentFile::create_named(&path, &config, false).unwrap();
        let options = SandboxOptions {
            name: format!("attached {round}"),
            ..SandboxOptions::default()
        };
        let (handle, _peer) = runtime.attach(&wasm, &path, None, options).unwrap();
        // Named by the thread itself once it runs.
        wait_for(|| heartbeat_threads() == 1, "the heartbeat to start");
        if round % 2 == 1 {
            // A guest that returns on its own stops its heartbeat before
            // anyone joins it.
            host.segment().header().say_goodbye();
            wait_for(
                || heartbeat_threads() == 0,
                "the heartbeat of a guest that ended to stop",
            );
            assert!(handle.is_finished());
        }
        handle.stop();
        assert!(matches!(
            handle.join(),
            Err(SandboxError::Stopped { .. }) | Ok(_)
        ));
        // Joined, but the kernel lists an exited thread a moment longer
        // (its tid is cleared, which ends the join, before it is reaped):
        // a thread that outlived its sandbox stays listed, 10 s fails.
        wait_for(
            || heartbeat_threads() == 0,
            &format!("round {round}: the heartbeat thread to go with its sandbox"),
        );
        drop(host);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
