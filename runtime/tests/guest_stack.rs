//! Guest recursion on a host thread: wasmtime's stack limit is measured
//! from where the host calls in, so a callback or a start function run on
//! a thread with a small stack overflowed the real stack, and the process
//! aborted. Now such a call is refused before any guest code runs, and on
//! a thread with room the recursion traps and ends its sandbox only.

use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

/// A guest that recurses without end in its callback, its entry point or
/// (with `start`) its start function.
fn recursing(start: bool) -> String {
    format!(
        r#"(module
          (import "shmrt" "ring" (func))
          (memory (export "memory") 1)
          (func $deep (param i64) (result i64)
            (i64.add (call $deep (i64.add (local.get 0) (i64.const 1))) (local.get 0)))
          (func $recurse (drop (call $deep (i64.const 0))))
          {}
          (func (export "shmrt_on_messages") (result i32) (call $recurse) (i32.const 0))
          (func (export "shmrt_main") (result i32)
            (drop (i32.atomic.load (i32.const 0)))
            (call $recurse)
            (i32.const 0)))"#,
        if start { "(start $recurse)" } else { "" }
    )
}

fn options(execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: "recursing".into(),
        execution,
        ..SandboxOptions::default()
    }
}

/// Runs `f` on a thread of `stack` bytes.
fn on_thread<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn assert_refused_for_stack(r: Result<i32, SandboxError>, what: &str) {
    match r {
        Err(SandboxError::Refused { reason, .. }) => {
            assert!(reason.contains("KiB of stack left"), "{what}: {reason}")
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn a_callback_driven_from_a_small_thread_is_refused_not_aborted() {
    let runtime = std::sync::Arc::new(Runtime::new().unwrap());
    let wasm = recursing(false);
    for stack in [256 << 10, 480 << 10] {
        let mut sandbox = runtime
            .spawn(wasm.as_bytes(), options(Execution::Callback))
            .unwrap();
        sandbox.sender().send(b"go").unwrap();
        let joined = on_thread(stack, move || sandbox.join());
        assert_refused_for_stack(joined, &format!("a {} KiB thread", stack >> 10));
    }
    // With room, the recursion traps and ends the sandbox.
    let mut sandbox = runtime
        .spawn(wasm.as_bytes(), options(Execution::Callback))
        .unwrap();
    sandbox.sender().send(b"go").unwrap();
    let joined = on_thread(4 << 20, move || sandbox.join());
    match joined {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("call stack exhausted"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_start_function_spawned_from_a_small_thread_is_refused_not_aborted() {
    let runtime = std::sync::Arc::new(Runtime::new().unwrap());
    for execution in [Execution::Thread, Execution::Callback] {
        let rt = runtime.clone();
        let spawned = on_thread(256 << 10, move || {
            rt.spawn(recursing(true).as_bytes(), options(execution))
                .map(|_| 0)
        });
        assert_refused_for_stack(spawned, execution.name());
    }
    // Without a start function no guest code runs at a thread guest's
    // spawn: a small thread may spawn it (and compile it).
    let rt = runtime.clone();
    let sandbox = on_thread(256 << 10, move || {
        rt.spawn(recursing(false).as_bytes(), options(Execution::Thread))
    })
    .unwrap();
    assert!(matches!(sandbox.join(), Err(SandboxError::Trap { .. })));
}

/// The threads shmrt spawns for guests have stacks of their own size,
/// whatever `RUST_MIN_STACK` says (run by the CLI's tests with it set);
/// here: a thread guest's recursion traps.
#[test]
fn a_thread_guest_recursion_traps() {
    let runtime = Runtime::new().unwrap();
    let sandbox = runtime
        .spawn(recursing(false).as_bytes(), options(Execution::Thread))
        .unwrap();
    match sandbox.join() {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("call stack exhausted"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
