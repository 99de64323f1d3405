//! `shmrt run` with `RUST_MIN_STACK=262144` (which sets the stack of every
//! thread spawned without a size): a guest that recurses without end
//! traps with its own error in every mode; the host does not abort. The
//! guest's thread and the stdin thread, which may run a callback guest,
//! have stacks of their own size.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::{shmrt, stderr};

#[test]
fn guest_recursion_traps_in_every_mode_with_small_default_stacks() {
    let guest = common::write_wat(
        "stack",
        "recursing.wat",
        r#"(module
          (import "shmrt" "ring" (func))
          (memory (export "memory") 1)
          (func $deep (param i64) (result i64)
            (i64.add (call $deep (i64.add (local.get 0) (i64.const 1))) (local.get 0)))
          (func $recurse (drop (call $deep (i64.const 0))))
          (func (export "shmrt_on_messages") (result i32) (call $recurse) (i32.const 0))
          (func (export "shmrt_main") (result i32)
            (drop (i32.atomic.load (i32.const 0)))
            (call $recurse)
            (i32.const 0)))"#,
    );
    for mode in ["thread", "fiber", "callback"] {
        let mut child = shmrt()
            .args(["run", "--exec", mode])
            .arg(&guest)
            .env("RUST_MIN_STACK", "262144")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Lines for the callback, from the stdin thread.
        let _ = child.stdin.take().unwrap().write_all(&b"go\n".repeat(1000));
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.signal(), None, "{mode}: {err}");
        assert!(!common::host_panicked(&err), "{mode}: {err}");
        assert!(err.contains("call stack exhausted"), "{mode}: {err}");
        assert_ne!(out.status.code(), Some(0), "{mode}: {err}");
    }
}
