//! Review (issue 23 fixes): a hostile module whose *start function* calls
//! a WASI import, spawned from inside a tokio runtime (what examples/many
//! does). The start function runs during `spawn`, on the caller's thread,
//! through the synchronous WASI linker, which is not wrapped in
//! `off_async_runtime` (only callback calls and `_initialize` are).

use std::time::Duration;

use shmrt::{Execution, Runtime, SandboxOptions};

/// A plugin (imports `shmrt`, has an atomic) whose start function calls
/// `wasi_snapshot_preview1.fd_write` ("hi\\n" to stdout).
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
    (drop (i32.atomic.load (i32.const 0))) (i32.const 1)))"#;

fn spawn_in_tokio(mode: Execution) -> Result<String, String> {
    let runtime = Runtime::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let opts = SandboxOptions {
                name: format!("start-{}", mode.name()),
                execution: mode,
                timeout: Some(Duration::from_secs(10)),
                ..SandboxOptions::default()
            };
            match runtime.spawn(START_CALLS_WASI.as_bytes(), opts) {
                Ok(h) => format!("spawned; join = {:?}", h.join()),
                Err(e) => format!("spawn error: {e}"),
            }
        })
    }));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn start_function_wasi_call_inside_tokio() {
    let mut panics = Vec::new();
    for mode in [Execution::Thread, Execution::Callback, Execution::Fiber] {
        let r = spawn_in_tokio(mode);
        eprintln!("{mode:?}: {r:?}");
        if let Err(p) = r {
            panics.push(format!("{mode:?}: host panicked: {p}"));
        }
    }
    assert!(panics.is_empty(), "{panics:#?}");
}

/// The same start function, spawned outside any runtime: fine (control).
#[test]
fn start_function_wasi_call_outside_tokio() {
    let runtime = Runtime::new().unwrap();
    for mode in [Execution::Thread, Execution::Callback, Execution::Fiber] {
        let opts = SandboxOptions {
            execution: mode,
            timeout: Some(Duration::from_secs(10)),
            ..SandboxOptions::default()
        };
        let h = runtime.spawn(START_CALLS_WASI.as_bytes(), opts).unwrap();
        eprintln!("{mode:?}: join = {:?}", h.join());
    }
}

/// A callback plugin whose start function loops forever: `_initialize`
/// is now bounded by the callback slice (issue 23, item 7), a start
/// function is not. With no timeout, `spawn` never returns and nobody has
/// a handle to stop it.
const START_LOOPS: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func $start (loop $l (br $l)))
  (start $start)
  (func (export "shmrt_main") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 1)))"#;

/// Same, with the loop in `_initialize` (the fixed case, as a control).
const INIT_LOOPS: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func (export "_initialize") (loop $l (br $l)))
  (func (export "shmrt_main") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 1)))"#;

fn spawn_within(wat: &'static str, mode: Execution, limit: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = Runtime::new().unwrap();
        let opts = SandboxOptions {
            execution: mode,
            timeout: None,
            ..SandboxOptions::default()
        };
        let started = std::time::Instant::now();
        let r = match runtime.spawn(wat.as_bytes(), opts) {
            Ok(_) => "spawned".to_string(),
            Err(e) => format!("spawn error: {e}"),
        };
        let _ = tx.send(format!("{r} after {:?}", started.elapsed()));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn callback_initialize_loop_is_bounded_by_the_slice() {
    let r = spawn_within(INIT_LOOPS, Execution::Callback, Duration::from_secs(10));
    eprintln!("_initialize loop, callback: {r:?}");
    assert!(
        r.is_some(),
        "_initialize loop: spawn did not return in 10 s"
    );
}

#[test]
fn callback_start_function_loop_is_not_bounded_by_the_slice() {
    let r = spawn_within(START_LOOPS, Execution::Callback, Duration::from_secs(10));
    eprintln!("start loop, callback: {r:?}");
    assert!(
        r.is_some(),
        "start-function loop: spawn (callback, 1 s slice, no timeout) did not return in 10 s"
    );
}

/// The start-function loop in the other modes (no slice there; no handle
/// to stop it either, since `spawn` has not returned).
#[test]
fn start_function_loop_thread_and_fiber() {
    for mode in [Execution::Thread, Execution::Fiber] {
        let r = spawn_within(START_LOOPS, mode, Duration::from_secs(5));
        eprintln!("start loop, {mode:?}: {r:?}");
    }
}
