//! The epoch ticker sleeps while no guest runs wasm, and a guest that
//! starts running wakes it: a deadline reaches a busy guest on time, in
//! every mode, however long the process was idle before. A guest on the
//! host's thread (callback, fiber) tells the ticker with a flag of its own
//! and only a compiler fence, and lowers it while it waits in the host
//! (a WASI sleep inside a callback); a wake-up lost there, or a flag left
//! lowered, would leave the ticker asleep for its longest nap (1 s) while
//! the guest loops past its deadline. Its own test binary: no other test runs guests meanwhile, so
//! the ticker is surely asleep when each guest starts.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

/// Loops forever once a message is there: its entry point waits for one
/// first (a thread guest then waits in the host, so the ticker sleeps
/// until the loop starts), its callback is called for one.
const SPIN: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func $spin (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)))
  (func (export "shmrt_main") (result i32)
    (drop (call $wait (i64.const -1)))
    (call $spin)
    (i32.const 0))
  (func (export "shmrt_on_messages") (result i32) (call $spin) (i32.const 0)))"#;

/// A callback that sleeps 50 ms (WASI), then loops forever: it waits in
/// the host inside the call, and runs wasm again after.
const SLEEP_THEN_SPIN: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "shmrt_on_messages") (result i32)
    ;; one relative clock subscription of 50 ms at 0, events at 64
    (i64.store (i32.const 24) (i64.const 50000000))
    (i32.store (i32.const 16) (i32.const 1))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (loop $l (drop (i32.atomic.load (i32.const 256))) (br $l))
    (i32.const 0)))"#;

/// How long the process idles before each guest starts (the ticker looks
/// every 10 ms, and sleeps at its first look with no guest running).
const IDLE: Duration = Duration::from_millis(150);
const TIMEOUT: Duration = Duration::from_millis(300);
/// Past its deadline, how late the guest may end: ticks come every 10 ms;
/// the rest is room for a busy machine. A lost wake-up is ~700 ms late.
const LATE: Duration = Duration::from_millis(350);

/// One test at a time: each tells its runtime's ticker thread from the
/// others by the threads that appear when the runtime starts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_guest_started_while_the_ticker_sleeps_still_times_out_on_time() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = Runtime::new().unwrap();
    let guests = [
        (Execution::Callback, SPIN),
        (Execution::Callback, SLEEP_THEN_SPIN),
        (Execution::Fiber, SPIN),
        (Execution::Thread, SPIN),
    ];
    for round in 0..3 {
        for (i, (execution, wat)) in guests.into_iter().enumerate() {
            let spawned = Instant::now();
            let mut sandbox = runtime
                .spawn(
                    wat.as_bytes(),
                    SandboxOptions {
                        name: format!("spin-{i}-{}-{round}", execution.name()),
                        execution,
                        timeout: Some(TIMEOUT),
                        ..SandboxOptions::default()
                    },
                )
                .unwrap();
            std::thread::sleep(IDLE);
            // The send lands in the ring; the receive runs the guest
            // (callback, fiber) or waits for it (thread).
            sandbox.sender().send(b"go").unwrap();
            let err = sandbox.receiver().recv().unwrap_err();
            let ended = spawned.elapsed();
            assert!(
                matches!(err, SandboxError::Closed { .. }),
                "guest {i}, {execution:?}: {err}"
            );
            assert!(
                matches!(sandbox.join(), Err(SandboxError::Timeout { .. })),
                "guest {i}, {execution:?}"
            );
            assert!(
                ended < TIMEOUT + LATE,
                "guest {i}, {execution:?}, round {round}: a {TIMEOUT:?} deadline ended the \
                 guest only after {ended:?} (the ticker slept while it ran)"
            );
        }
    }
}

/// Waits in the host (`wait`) for ever, as a fiber or on a thread.
const WAITER: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func (export "shmrt_main") (result i32)
    (loop $l
      (drop (i32.atomic.load (i32.const 0)))
      (drop (call $wait (i64.const -1)))
      (br $l))
    (i32.const 0))
  (func (export "shmrt_on_messages") (result i32) (i32.const 0)))"#;

/// Threads of this process named `shmrt-epoch` (the runtimes' tickers).
fn ticker_threads() -> HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{t}/comm")).ok()?;
            (comm.trim() == "shmrt-epoch").then_some(t)
        })
        .collect()
}

/// The times thread `tid` gave up its CPU (it sleeps at each tick).
fn switches(tid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a count of voluntary switches")
}

/// Once every guest waits in the host (a callback between calls, a fiber
/// suspended in `wait`, a thread parked in it), the ticker sleeps: an
/// idle process wakes for nothing. A guest on the host's thread that left
/// its flag raised would keep it ticking 100 times a second.
#[test]
fn the_ticker_sleeps_while_every_guest_waits_in_the_host() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = ticker_threads();
    let runtime = Runtime::new().unwrap();
    let mut sandboxes = Vec::new();
    for execution in [Execution::Callback, Execution::Fiber, Execution::Thread] {
        let mut sandbox = runtime
            .spawn(
                WAITER.as_bytes(),
                SandboxOptions {
                    name: format!("waiter-{}", execution.name()),
                    execution,
                    ..SandboxOptions::default()
                },
            )
            .unwrap();
        // A few turns: each call or resumption runs wasm, then waits.
        for _ in 0..3 {
            sandbox.sender().send(b"turn").unwrap();
            let got = sandbox
                .receiver()
                .recv_timeout(Some(Duration::from_millis(30)))
                .unwrap();
            assert!(got.is_none(), "{execution:?}: the waiter answers nothing");
        }
        sandboxes.push(sandbox);
    }
    let ticker = ticker_threads()
        .difference(&before)
        .next()
        .cloned()
        .expect("the runtime's ticker thread");
    // Let the last tick pass, then count what a quiet spell costs it.
    std::thread::sleep(Duration::from_millis(50));
    let at_rest = switches(&ticker);
    std::thread::sleep(Duration::from_millis(400));
    let woke = switches(&ticker) - at_rest;
    assert!(
        woke <= 2,
        "the ticker woke {woke} times in 400 ms while every guest waited in the host \
         (ticking would be ~40)"
    );
    drop(sandboxes);
}
