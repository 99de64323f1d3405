//! Guest code that runs before a sandbox has a handle, inside `spawn` on
//! the caller's thread (a module's start function), and WASI calls of a
//! fiber that mix descriptors and clocks: neither may panic the host from
//! inside a tokio runtime, and a start function may not hold `spawn`
//! forever (found by the review of the third hardening round).

use std::time::{Duration, Instant};

use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

const MODES: [Execution; 3] = [Execution::Thread, Execution::Fiber, Execution::Callback];

/// A plugin whose start function writes "hi\n" through WASI.
const START_CALLS_WASI: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\03\00\00\00")
  (data (i32.const 16) "hi\0a")
  (func $start (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (start $start)
  (func (export "shmrt_main") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#;

/// A plugin whose start function never returns.
const START_LOOPS: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func $start (loop $l (br $l)))
  (start $start)
  (func (export "shmrt_main") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 1)))"#;

/// One fd_write subscription on fd 1 and a 1 ms relative monotonic clock.
const POLL_FD_AND_CLOCK: &str = r#"(module
  (import "shmrt" "ring" (func))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1032) "\02")
  (data (i32.const 1040) "\01")
  (data (i32.const 1088) "\01")
  (data (i32.const 1096) "\40\42\0f\00\00\00\00\00")
  (func (export "_start")
    (drop (i32.atomic.load (i32.const 0)))
    (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 2) (i32.const 4000)))))"#;

fn options(name: &str, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: name.into(),
        execution,
        timeout: Some(Duration::from_secs(20)),
        ..SandboxOptions::default()
    }
}

/// Runs `f` on a thread of its own; `None` if it has not returned within
/// `limit` (a hang fails the test instead of holding CI).
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Before: "Cannot start a runtime from within a runtime" in thread and
/// callback mode (the start function's WASI call ran tokio's `block_on`
/// on a tokio thread).
#[test]
fn a_start_function_calling_wasi_is_spawned_inside_tokio() {
    for mode in MODES {
        let done = within(Duration::from_secs(60), move || {
            let runtime = Runtime::new().unwrap();
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            tokio.block_on(async {
                let sandbox = runtime
                    .spawn(START_CALLS_WASI.as_bytes(), options("start-wasi", mode))
                    .map_err(|e| e.to_string())?;
                let (mut tx, _rx, handle) = sandbox.split();
                tx.goodbye();
                handle.join().map_err(|e| e.to_string())
            })
        });
        assert_eq!(done, Some(Ok(0)), "{mode:?}");
    }
}

/// A start function holds `spawn`, before there is a handle to stop it
/// with: it is bounded by the callback slice in every mode (before: with
/// no timeout, `spawn` never returned).
#[test]
fn a_start_function_that_never_returns_is_ended_by_the_slice() {
    for mode in MODES {
        let done = within(Duration::from_secs(30), move || {
            let runtime = Runtime::new().unwrap();
            let options = SandboxOptions {
                timeout: None,
                callback_slice: Some(Duration::from_millis(300)),
                ..options("start-loops", mode)
            };
            let started = Instant::now();
            let spawned = runtime.spawn(START_LOOPS.as_bytes(), options);
            (spawned.err(), started.elapsed())
        });
        let (error, took) = done.unwrap_or_else(|| panic!("{mode:?}: spawn did not return"));
        assert!(
            matches!(&error, Some(SandboxError::Trap { message, .. }) if message.contains("more than 300ms")),
            "{mode:?}: {error:?}"
        );
        assert!(took < Duration::from_secs(10), "{mode:?}: {took:?}");
    }
}

/// A fiber's `poll_oneoff` with a descriptor and a clock that has not
/// passed goes to wasmtime-wasi, whose clocks are tokio timers: before, it
/// panicked the host ("there is no reactor running"), outside tokio and
/// inside it.
#[test]
fn a_poll_with_a_descriptor_and_a_clock_answers_in_every_mode() {
    for mode in MODES {
        let outside = within(Duration::from_secs(60), move || {
            let runtime = Runtime::new().unwrap();
            let sandbox = runtime
                .spawn(POLL_FD_AND_CLOCK.as_bytes(), options("poll", mode))
                .map_err(|e| e.to_string())?;
            sandbox.join().map_err(|e| e.to_string())
        });
        // A module with `_start` only is refused as a callback; it ran
        // and returned in the other modes.
        match mode {
            Execution::Callback => assert!(
                matches!(&outside, Some(Err(e)) if e.contains("shmrt_on_messages")),
                "{outside:?}"
            ),
            _ => assert_eq!(outside, Some(Ok(0)), "{mode:?}"),
        }
    }
    let inside = within(Duration::from_secs(60), || {
        let runtime = Runtime::new().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tokio.block_on(async {
            let sandbox = runtime
                .spawn(
                    POLL_FD_AND_CLOCK.as_bytes(),
                    options("poll", Execution::Fiber),
                )
                .map_err(|e| e.to_string())?;
            sandbox.join().map_err(|e| e.to_string())
        })
    });
    assert_eq!(inside, Some(Ok(0)), "fiber inside tokio");
}
