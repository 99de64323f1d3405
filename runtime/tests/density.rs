//! Many sandboxes in one process: thousands spawned from one prepared
//! plugin on this thread, every one answering, and nothing left behind
//! once they are gone (descriptors, mappings, threads); a hostile one
//! among them stops alone.

mod common;

use std::time::Duration;

use common::guest;
use shmrt::primitives::{SegmentConfig, SegmentLayout};
use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

/// Entries of a `/proc/self` directory or lines of a `/proc/self` file.
fn count(what: &str) -> usize {
    let path = format!("/proc/self/{what}");
    match std::fs::read_dir(&path) {
        Ok(dir) => dir.count(),
        Err(_) => std::fs::read_to_string(&path).unwrap().lines().count(),
    }
}

fn resources() -> [usize; 3] {
    [count("fd"), count("maps"), count("task")]
}

/// The tests of this file count the process's resources: one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(name: String, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name,
        execution,
        timeout: Some(Duration::from_secs(60)),
        ..SandboxOptions::default()
    }
}

#[test]
fn thousands_of_sandboxes_answer_and_leave_nothing_behind() {
    let _alone = one_at_a_time();
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let plugin = runtime.prepare(&echo).unwrap();
    // Warm up what a process sets up once (the epoch thread's first run,
    // the allocator's arenas, the wake timer).
    for mode in [Execution::Callback, Execution::Fiber] {
        let mut sb = runtime
            .spawn_plugin(&plugin, options("warm".into(), mode))
            .unwrap();
        sb.sender().send(b"warm").unwrap();
        drop(sb.receiver().recv().unwrap());
        sb.sender().goodbye();
        sb.join().unwrap();
    }
    let before = resources();
    for (mode, n) in [(Execution::Callback, 3000), (Execution::Fiber, 1500)] {
        let mut live: Vec<_> = (0..n)
            .map(|i| {
                runtime
                    .spawn_plugin(&plugin, options(format!("many-{i}"), mode))
                    .unwrap()
            })
            .collect();
        let during = resources();
        // In-process sandboxes hold no descriptor and no thread.
        assert_eq!(during[0], before[0], "{mode:?}: descriptors");
        assert_eq!(during[2], before[2], "{mode:?}: threads");
        // Callback: the reservation split in three (initial pages, the
        // window mapped from the segment template, the rest); a fiber adds
        // its stack and guard page.
        let per_sandbox = if mode == Execution::Fiber { 5 } else { 3 };
        assert!(
            during[1] - before[1] <= per_sandbox * n + 16,
            "{mode:?}: {} mappings for {n} sandboxes",
            during[1] - before[1]
        );
        for (i, sb) in live.iter_mut().enumerate() {
            let msg = format!("hello {i}");
            sb.sender().send(msg.as_bytes()).unwrap();
            assert_eq!(sb.receiver().recv().unwrap().to_vec(), msg.as_bytes());
        }
        // Half say goodbye and are joined; the rest are dropped as they
        // are (stopped).
        for (i, mut sb) in live.drain(..).enumerate() {
            if i % 2 == 0 {
                sb.sender().goodbye();
                assert_eq!(sb.join().unwrap(), 0, "{mode:?}");
            }
        }
        let after = resources();
        assert_eq!(after[0], before[0], "{mode:?}: descriptors left behind");
        assert_eq!(after[2], before[2], "{mode:?}: threads left behind");
        assert!(
            after[1] <= before[1] + 4,
            "{mode:?}: {} mappings left behind",
            after[1] - before[1]
        );
    }
}

/// A sandbox breaking the protocol among many on one thread stops alone;
/// one whose callback never returns is ended by its slice; the others go
/// on answering.
#[test]
fn a_hostile_sandbox_among_many_stops_alone() {
    let _alone = one_at_a_time();
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    let runtime = Runtime::new().unwrap();
    let plugin = runtime.prepare(&echo).unwrap();
    for mode in [Execution::Callback, Execution::Fiber] {
        let mut many: Vec<_> = (0..300)
            .map(|i| {
                runtime
                    .spawn_plugin(&plugin, options(format!("good-{i}"), mode))
                    .unwrap()
            })
            .collect();
        let mut bad = runtime.spawn(&probe, options("bad".into(), mode)).unwrap();
        let layout = SegmentLayout::compute(&SegmentConfig::single_guest()).unwrap();
        // Forges its guest-to-host write cursor past the ring.
        bad.sender()
            .send(format!("poke {} 999999", layout.g2h_ring_offset(0)).as_bytes())
            .unwrap();
        match bad.receiver().recv() {
            Err(SandboxError::Protocol { sandbox, .. }) => assert_eq!(sandbox, "bad"),
            other => panic!("{mode:?}: {:?}", other.map(|m| m.len())),
        }
        assert!(matches!(bad.join(), Err(SandboxError::Protocol { .. })));
        for round in 0..3 {
            for (i, sb) in many.iter_mut().enumerate() {
                let msg = format!("{round} {i}");
                sb.sender().send(msg.as_bytes()).unwrap();
                assert_eq!(sb.receiver().recv().unwrap().to_vec(), msg.as_bytes());
            }
        }
        for mut sb in many {
            sb.sender().goodbye();
            assert_eq!(sb.join().unwrap(), 0);
        }
    }
    // A callback that never returns, among others.
    let hog = r#"(module
      (memory (export "memory") 1)
      (func (export "shmrt_on_messages") (result i32)
        (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)) (i32.const 0)))"#;
    let mut others: Vec<_> = (0..50)
        .map(|i| {
            runtime
                .spawn_plugin(&plugin, options(format!("ok-{i}"), Execution::Callback))
                .unwrap()
        })
        .collect();
    let mut opts = options("hog".into(), Execution::Callback);
    opts.callback_slice = Some(Duration::from_millis(100));
    let mut hog = runtime.spawn(hog.as_bytes(), opts).unwrap();
    hog.sender().send(b"go").unwrap();
    assert!(matches!(
        hog.receiver().recv(),
        Err(SandboxError::Closed { .. })
    ));
    assert!(matches!(hog.join(), Err(SandboxError::Trap { .. })));
    for sb in &mut others {
        sb.sender().send(b"still").unwrap();
        assert_eq!(sb.receiver().recv().unwrap().to_vec(), b"still");
    }
}
