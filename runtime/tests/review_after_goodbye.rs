//! Review (issue 23, item 6 and the after-goodbye rule): a callback that
//! never reads its inbox but moves a cursor of its own ring at every call
//! (its g2h watermark, toggled) counts as "moved" for the one rule, so
//! after the goodbye it is called again and again, up to
//! MAX_CALLS_AFTER_GOODBYE (100,000) calls, each up to its slice (1 s):
//! a `join` with no timeout runs for up to ~28 hours, and the requests are
//! never answered.

use std::time::{Duration, Instant};

use shmrt::primitives::SegmentLayout;
use shmrt::{Execution, Runtime, SandboxOptions};

fn wat(watermark_at: u64, spin: u32) -> String {
    format!(
        r#"(module
  (import "shmrt" "ring" (func))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "shmrt_on_messages") (result i32) (local $i i32)
    (drop (i32.atomic.load (i32.const 0)))
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    ;; toggle the g2h watermark between 0 and 8: "moved"
    (i32.atomic.store (i32.const {watermark_at})
      (i32.xor (i32.atomic.load (i32.const {watermark_at})) (i32.const 8)))
    ;; burn some of the slice
    (local.set $i (i32.const {spin}))
    (loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $i) (i32.const 0))))
    (i32.const 0)))"#
    )
}

#[test]
fn a_callback_faking_progress_after_goodbye_keeps_join_running() {
    let options = SandboxOptions {
        execution: Execution::Callback,
        timeout: None,
        ..SandboxOptions::default()
    };
    let layout = SegmentLayout::compute(&options.segment).unwrap();
    // The window is placed after the module's one page.
    let watermark_at = 65536 + layout.g2h_ring_offset(0) + 4;
    eprintln!("g2h watermark at linear address {watermark_at}");
    let text = wat(watermark_at, 30_000_000);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = Runtime::new().unwrap();
        let mut sandbox = runtime.spawn(text.as_bytes(), options).unwrap();
        sandbox.sender().send(b"request never read").unwrap();
        sandbox.sender().goodbye();
        let started = Instant::now();
        let status = sandbox.join();
        let _ = tx.send((status, started.elapsed()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok((status, took)) => eprintln!("join returned {status:?} after {took:?}"),
        Err(_) => panic!(
            "join (callback, goodbye given, one request never read) has not returned after 30 s"
        ),
    }
}

/// The bound that does exist: with calls that return at once, `join`
/// ends after 100,000 calls; and one call of the spinning guest above
/// takes this long (so the 30 s above is ~1/N of what join takes).
#[test]
fn how_long_the_bound_is() {
    let options = SandboxOptions {
        execution: Execution::Callback,
        timeout: None,
        ..SandboxOptions::default()
    };
    let layout = SegmentLayout::compute(&options.segment).unwrap();
    let watermark_at = 65536 + layout.g2h_ring_offset(0) + 4;
    let runtime = Runtime::new().unwrap();
    // One call of the 30M-iteration guest.
    let text = wat(watermark_at, 30_000_000);
    let mut sandbox = runtime.spawn(text.as_bytes(), options.clone()).unwrap();
    sandbox.sender().send(b"request never read").unwrap();
    let t = Instant::now();
    let r = sandbox.receiver().recv_timeout(Some(Duration::from_millis(1))).map(|m| m.is_some());
    eprintln!("one call of the spinning guest: {:?} ({r:?})", t.elapsed());
    drop(sandbox);
    // Calls that return at once.
    let text = wat(watermark_at, 1);
    let mut sandbox = runtime.spawn(text.as_bytes(), options).unwrap();
    sandbox.sender().send(b"request never read").unwrap();
    sandbox.sender().goodbye();
    let t = Instant::now();
    let status = sandbox.join();
    eprintln!("fast calls: join = {status:?} after {:?}", t.elapsed());
}
