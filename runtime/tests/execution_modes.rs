//! The three execution modes behave alike: the same plugin answers the
//! same messages (inline and in slots, both ways), ends with the same
//! status, and is held to the same limits, on its own thread, as a fiber
//! or as a callback on the host's thread.

mod common;

use std::time::{Duration, Instant};

use common::{guest, write_wat};
use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

const MODES: [Execution; 3] = [Execution::Thread, Execution::Fiber, Execution::Callback];

fn options(name: &str, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: format!("{name}-{}", execution.name()),
        execution,
        timeout: Some(Duration::from_secs(30)),
        ..SandboxOptions::default()
    }
}

/// Every size from empty to the largest slot comes back unchanged, one at
/// a time and in batches that fill the ring, in every mode.
#[test]
fn echo_answers_every_size_in_every_mode() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime.spawn(&echo, options("echo", mode)).unwrap();
        let max = sandbox.sender().max_payload() as usize;
        let sizes = [0, 1, 7, 64, 100, 1000, 4096, 65536, max];
        for (i, &len) in sizes.iter().enumerate() {
            let payload = common::bytes(i as u64, len);
            sandbox.sender().send(&payload).unwrap();
            let reply = sandbox.receiver().recv().unwrap();
            assert_eq!(reply.to_vec(), payload, "{mode:?}: {len} bytes");
        }
        // A batch: many sends before the first receive (the ring fills,
        // so the sender itself must run a guest on its thread).
        let batch: Vec<Vec<u8>> = (0..2000)
            .map(|i| common::bytes(i, i as usize % 300))
            .collect();
        let (mut tx, mut rx, handle) = sandbox.split();
        let feeder = std::thread::spawn(move || {
            for m in &batch {
                tx.send(m).unwrap();
            }
            tx.goodbye();
            batch
        });
        let mut got = Vec::new();
        loop {
            match rx.recv() {
                Ok(m) => got.push(m.to_vec()),
                Err(SandboxError::Closed { .. }) => break,
                Err(e) => panic!("{mode:?}: {e}"),
            }
        }
        let batch = feeder.join().unwrap();
        assert_eq!(handle.join().unwrap(), 0, "{mode:?}");
        assert_eq!(got.len(), batch.len(), "{mode:?}");
        assert!(got == batch, "{mode:?}: the batch came back changed");
    }
}

/// A plugin with only a blocking loop is refused as a callback, with a
/// message that says what to do; in the two other modes it runs.
#[test]
fn a_blocking_loop_is_refused_as_a_callback() {
    let wat = r#"(module
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (drop (call $wait (i64.const -1)))
        (i32.const 7)))"#;
    let runtime = Runtime::new().unwrap();
    let err = runtime
        .spawn(wat.as_bytes(), options("loop", Execution::Callback))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, SandboxError::Refused { .. }) && text.contains("shmrt_on_messages"),
        "{text}"
    );
    assert!(text.contains("fiber"), "{text}");
    for mode in [Execution::Thread, Execution::Fiber] {
        let mut sandbox = runtime
            .spawn(wat.as_bytes(), options("loop", mode))
            .unwrap();
        sandbox.sender().goodbye();
        assert_eq!(sandbox.join().unwrap(), 7, "{mode:?}");
    }
}

/// A guest that loops forever is ended by its timeout in every mode, and
/// the host's call returns with the timeout.
#[test]
fn a_looping_guest_times_out_in_every_mode() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func $spin (loop $l (br $l)))
      (func (export "shmrt_main") (result i32) (call $spin) (i32.const 0))
      (func (export "shmrt_on_messages") (result i32) (call $spin) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut opts = options("spin", mode);
        opts.timeout = Some(Duration::from_millis(300));
        let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
        let started = Instant::now();
        // The send lands in the ring; the receive runs the guest (fiber,
        // callback) or waits for it (thread).
        sandbox.sender().send(b"go").unwrap();
        let err = sandbox.receiver().recv().unwrap_err();
        assert!(
            matches!(err, SandboxError::Closed { .. }),
            "{mode:?}: {err}"
        );
        assert!(
            matches!(sandbox.join(), Err(SandboxError::Timeout { .. })),
            "{mode:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}");
    }
}

/// Two fiber guests on one thread: one computes forever, the other still
/// answers (epoch yields), and the looping one is stopped alone.
#[test]
fn a_looping_fiber_does_not_starve_another_on_the_same_thread() {
    let spin = write_wat(
        "modes",
        "spin.wat",
        r#"(module
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)) (i32.const 0)))"#,
    );
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut looping = runtime
        .spawn(
            &std::fs::read(spin).unwrap(),
            SandboxOptions {
                timeout: None,
                ..options("spin", Execution::Fiber)
            },
        )
        .unwrap();
    let mut answering = runtime
        .spawn(&echo, options("echo", Execution::Fiber))
        .unwrap();
    // Give the looping guest a turn: it yields back at the next tick.
    let started = Instant::now();
    assert!(
        looping
            .receiver()
            .recv_timeout(Some(Duration::from_millis(50)))
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    answering.sender().send(b"still here").unwrap();
    assert_eq!(answering.receiver().recv().unwrap().to_vec(), b"still here");
    let (_, _, handle) = looping.split();
    handle.stop();
    assert!(matches!(handle.join(), Err(SandboxError::Stopped { .. })));
    answering.sender().goodbye();
    assert_eq!(answering.join().unwrap(), 0);
}

/// A fiber guest that sleeps (WASI) does not hold the host's thread: a
/// receive with a timeout returns on time, and a stop ends the sleeper.
#[test]
fn a_sleeping_fiber_guest_does_not_block_the_host() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        ;; one relative clock subscription of 60 s at 0, events at 64
        (i64.store (i32.const 24) (i64.const 60000000000))
        (i32.store (i32.const 16) (i32.const 1))
        (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("sleep", Execution::Fiber);
    opts.timeout = None;
    let sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    let (_tx, mut rx, handle) = sandbox.split();
    let started = Instant::now();
    assert!(
        rx.recv_timeout(Some(Duration::from_millis(200)))
            .unwrap()
            .is_none()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    handle.stop();
    assert!(matches!(handle.join(), Err(SandboxError::Stopped { .. })));
}

/// The async API on one tokio thread: sandboxes of every mode, each
/// driven by a task of its own, all answering, while a fiber guest that
/// computes forever shares the thread (it yields at every epoch tick).
#[test]
fn one_tokio_thread_serves_many_sandboxes_through_the_async_api() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = std::sync::Arc::new(Runtime::new().unwrap());
    let spin = r#"(module
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)) (i32.const 0)))"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let answered = local.block_on(&rt, async {
        let mut looping = runtime
            .spawn(
                spin.as_bytes(),
                SandboxOptions {
                    timeout: None,
                    ..options("spin", Execution::Fiber)
                },
            )
            .unwrap();
        // The looping guest gets the thread whenever its task is polled.
        let spinner = tokio::task::spawn_local(async move {
            let got = looping.receiver().recv_async().await.map(|m| m.len());
            (looping, got.is_err())
        });
        let mut tasks = Vec::new();
        for i in 0..60usize {
            let mode = MODES[i % 3];
            let mut sandbox = runtime.spawn(&echo, options("echo", mode)).unwrap();
            tasks.push(tokio::spawn(async move {
                for round in 0..50u64 {
                    let msg = common::bytes(round + i as u64, (round as usize * 37) % 3000);
                    sandbox.sender().send_async(&msg).await.unwrap();
                    let reply = sandbox.receiver().recv_async().await.unwrap();
                    assert_eq!(reply.to_vec(), msg, "{mode:?}");
                }
                sandbox.sender().goodbye();
                let (_tx, mut rx, handle) = sandbox.split();
                assert!(matches!(
                    rx.recv_async().await,
                    Err(SandboxError::Closed { .. })
                ));
                handle.join().unwrap()
            }));
        }
        let mut answered = 0;
        for t in tasks {
            assert_eq!(t.await.unwrap(), 0);
            answered += 1;
        }
        spinner.abort();
        answered
    });
    assert_eq!(answered, 60);
}

/// A callback that never returns holds the host's thread: with no
/// timeout, its slice still ends it, with an error that says why.
#[test]
fn a_callback_that_never_returns_is_ended_by_its_slice() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "shmrt_on_messages") (result i32)
        (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("hog", Execution::Callback);
    opts.timeout = None;
    opts.callback_slice = Some(Duration::from_millis(200));
    let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    sandbox.sender().send(b"go").unwrap();
    let started = Instant::now();
    assert!(matches!(
        sandbox.receiver().recv(),
        Err(SandboxError::Closed { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    match sandbox.join() {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("callback ran for more than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A callback that sleeps (a WASI clock poll) is held to its slice too:
/// the host's receive returns in about the slice, not the sleep.
#[test]
fn a_sleeping_callback_is_ended_by_its_slice() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_on_messages") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        ;; one relative clock subscription of 60 s at 0, events at 64
        (i64.store (i32.const 24) (i64.const 60000000000))
        (i32.store (i32.const 16) (i32.const 1))
        (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
        (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("sleeper", Execution::Callback);
    opts.timeout = None;
    opts.callback_slice = Some(Duration::from_millis(200));
    let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    sandbox.sender().send(b"go").unwrap();
    let started = Instant::now();
    let got = sandbox
        .receiver()
        .recv_timeout(Some(Duration::from_millis(100)))
        .map(|m| m.map(|m| m.len()));
    assert!(started.elapsed() < Duration::from_secs(3), "{got:?}");
    match sandbox.join() {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("callback ran for more than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A start function can not read the segment window before it is placed:
/// past the module's memory is out of bounds, as in any module.
#[test]
fn a_start_function_can_not_reach_the_window_before_it_is_placed() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func $peek (drop (i32.load (i32.const 65536))))
      (start $peek)
      (func (export "shmrt_main") (result i32) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let err = runtime
            .spawn(wat.as_bytes(), options("peek", mode))
            .unwrap_err();
        assert!(err.to_string().contains("out of bounds"), "{mode:?}: {err}");
    }
}

/// CPU time this thread has used, in clock ticks (utime + stime).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Many async round trips with fiber guests that have a deadline leave no
/// pile of timers behind: an idle async receive afterwards costs no CPU.
#[test]
fn an_idle_async_receive_stays_idle_after_many_round_trips() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut busy = runtime
            .spawn(&echo, options("busy", Execution::Fiber))
            .unwrap();
        let mut idle = runtime
            .spawn(&echo, options("idle", Execution::Fiber))
            .unwrap();
        for i in 0..70_000u32 {
            busy.sender().send_async(&i.to_le_bytes()).await.unwrap();
            drop(busy.receiver().recv_async().await.unwrap());
        }
        let cpu = thread_cpu_ticks();
        let waited =
            tokio::time::timeout(Duration::from_secs(1), idle.receiver().recv_async()).await;
        assert!(waited.is_err(), "nothing was sent");
        let used = thread_cpu_ticks() - cpu;
        // Clock ticks are 10 ms: a spinning wait would use about 100.
        assert!(used <= 20, "{used} ticks of CPU in a 1 s idle wait");
    });
}

/// A callback that keeps its inbox looking full after the host's goodbye
/// (it moves its own read cursor and answers nothing) is not called
/// forever: join ends it, with an error that says what it did.
#[test]
fn a_callback_that_never_empties_its_inbox_after_the_goodbye_is_ended() {
    let layout = shmrt::primitives::SegmentLayout::compute(
        &shmrt::primitives::SegmentConfig::single_guest(),
    )
    .unwrap();
    let read_cursor = layout.h2g_ring_offset(0) + 64;
    let wat = format!(
        r#"(module
      (import "shmrt" "segment_base" (func $base (result i32)))
      (memory (export "memory") 1)
      (global $flip (mut i32) (i32.const 4))
      (func (export "shmrt_on_messages") (result i32)
        (global.set $flip (i32.xor (global.get $flip) (i32.const 12)))
        (i32.atomic.store (i32.add (call $base) (i32.const {read_cursor})) (global.get $flip))
        (i32.const 0)))"#
    );
    let runtime = Runtime::new().unwrap();
    let mut opts = options("toggler", Execution::Callback);
    opts.timeout = None;
    let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    sandbox.sender().send(b"go").unwrap();
    sandbox.sender().goodbye();
    let started = Instant::now();
    let status = sandbox.join();
    assert!(started.elapsed() < Duration::from_secs(20));
    match status {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("after the host's goodbye"), "{message}")
        }
        // Or the host caught the scribbled cursor first.
        Err(SandboxError::Protocol { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A task whose async receive was cancelled leaves no registration that
/// keeps the next task from being woken at the guest's deadline.
#[test]
fn a_cancelled_async_receive_does_not_take_the_next_ones_wake_up() {
    let wat = r#"(module
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (loop $l (drop (call $wait (i64.const -1))) (br $l)) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("waiter", Execution::Fiber);
    opts.timeout = Some(Duration::from_secs(1));
    let sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    let (_tx, mut rx, _handle) = sandbox.split();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let got = local.block_on(&rt, async move {
        // Registers the deadline with this task's waker, then is dropped.
        let cancelled = {
            let first = tokio::time::timeout(Duration::from_millis(100), rx.recv_async()).await;
            first.is_err()
        };
        assert!(cancelled);
        tokio::task::spawn_local(async move { rx.recv_async().await.map(|m| m.len()) })
            .await
            .unwrap()
    });
    assert!(matches!(got, Err(SandboxError::Closed { .. })), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// An async send that finds no slot ends at the slot wait, as the
/// blocking one does, without spinning meanwhile.
#[test]
fn an_async_send_ends_at_the_slot_wait() {
    let wat = r#"(module
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (loop $l (drop (call $wait (i64.const -1))) (br $l)) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    for mode in [Execution::Fiber, Execution::Thread] {
        let mut opts = options("hoarder", mode);
        opts.slot_wait = Some(Duration::from_millis(300));
        let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = Instant::now();
        let cpu = thread_cpu_ticks();
        let result = rt.block_on(async {
            let big = vec![1u8; 70_000];
            loop {
                if let Err(e) = sandbox.sender().send_async(&big).await {
                    return e;
                }
            }
        });
        assert!(
            matches!(result, SandboxError::SlotsExhausted { .. }),
            "{mode:?}: {result}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{mode:?}");
        let used = thread_cpu_ticks() - cpu;
        assert!(
            used <= 20,
            "{mode:?}: {used} ticks of CPU waiting for a slot"
        );
    }
}
