//! The segment templates in-process sandboxes map copy-on-write: one
//! sandbox's writes reach neither another sandbox nor the template; a
//! start function can not place the window itself; a configuration too
//! large is refused before anything is laid out; templates no sandbox
//! uses are let go (a few recent ones kept).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use shmrt::primitives::{SegmentConfig, SegmentLayout, SizeClass, SizeClasses};
use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

const MODES: [Execution; 3] = [Execution::Callback, Execution::Fiber, Execution::Thread];

/// Everything here counts descriptors or mappings of the process.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's template memfds: (fd number, allocated bytes, flags).
fn template_fds() -> Vec<(u32, u64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if !target.to_string_lossy().contains("shmrt-segment-template") {
            continue;
        }
        let fd: u32 = e.file_name().to_string_lossy().parse().unwrap();
        let blocks = std::fs::metadata(e.path())
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("flags:"))
            .unwrap_or("")
            .to_string();
        out.push((fd, blocks, flags));
    }
    out
}

fn options(name: &str, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: format!("{name}-{}", execution.name()),
        execution,
        timeout: Some(Duration::from_secs(3)),
        ..SandboxOptions::default()
    }
}

fn layout() -> SegmentLayout {
    SegmentLayout::compute(&SegmentConfig::single_guest()).unwrap()
}

fn window_pages() -> u64 {
    layout().window_size() / 65536
}

/// A WAT guest for every mode whose `_initialize` runs `init` (WAT
/// instructions; `$base` gives the window's offset) and whose callback and
/// entry answer nothing (the entry waits for the goodbye).
fn wat_guest(init: &str, start: &str) -> String {
    format!(
        r#"(module
      (import "shmrt" "segment_base" (func $base (result i32)))
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (global $x (mut i64) (i64.const 0))
      (func $rnd (result i64)
        (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 13))))
        (global.set $x (i64.xor (global.get $x) (i64.shr_u (global.get $x) (i64.const 7))))
        (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 17))))
        (global.get $x))
      ;; COUNT words in [base + lo, base + lo + span): small cursors, states
      ;; and raw words mixed.
      (func $scribble (param $seed i64) (param $lo i32) (param $span i32) (param $count i32)
        (local $i i32) (local $r i64) (local $v i32) (local $k i32)
        (global.set $x (i64.or (local.get $seed) (i64.const 1)))
        (block $done (loop $l
          (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
          (local.set $r (call $rnd))
          (local.set $v (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32))))
          (local.set $k (i32.and (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 29))) (i32.const 3)))
          (if (i32.eq (local.get $k) (i32.const 0)) (then (local.set $v (i32.and (local.get $v) (i32.const 0xfffc)))))
          (if (i32.eq (local.get $k) (i32.const 1)) (then (local.set $v (i32.and (local.get $v) (i32.const 3)))))
          (if (i32.eq (local.get $k) (i32.const 2)) (then (local.set $v (i32.and (local.get $v) (i32.const 0x1fffc)))))
          (i32.store
            (i32.add (call $base)
              (i32.add (local.get $lo)
                (i32.and (i32.wrap_i64 (i64.rem_u (local.get $r) (i64.extend_i32_u (local.get $span))))
                         (i32.const -4))))
            (local.get $v))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $l)))
      )
      (func $start {start})
      (start $start)
      (func (export "_initialize") {init})
      (func (export "shmrt_on_messages") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0))
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (block $out (loop $l
          ;; 1 = goodbye (anything not 0 ends it)
          (br_if $out (i32.ne (call $wait (i64.const 100000000)) (i32.const 0)))
          (br $l)))
        (i32.const 0)))"#
    )
}

fn template_bytes() -> Vec<Vec<u8>> {
    template_fds()
        .iter()
        .map(|(fd, _, _)| std::fs::read(format!("/proc/self/fd/{fd}")).unwrap())
        .collect()
}

#[test]
fn writes_of_one_sandbox_reach_neither_another_nor_the_template() {
    let _a = alone();
    let runtime = Runtime::new().unwrap();
    let size = layout().window_size() as i64;
    // Fills its whole window with 0xA5 at `_initialize`.
    let dirty = wat_guest(
        &format!("(memory.fill (call $base) (i32.const 0xa5) (i32.const {size}))"),
        "",
    );
    let clean = wat_guest("", "");
    for mode in MODES {
        // The template of this mode exists before anyone writes.
        let first = runtime
            .spawn(clean.as_bytes(), options("first", mode))
            .unwrap();
        let before = template_bytes();
        assert!(!before.is_empty(), "a template memfd exists");
        let mut a = runtime
            .spawn(dirty.as_bytes(), options("dirty", mode))
            .unwrap();
        // The host writes too (a stray host write through its view).
        // SAFETY: the placed window, ours to scribble in this test.
        unsafe { std::ptr::write_bytes(a.segment().base().add(4096), 0x5a, 4096) };
        // Let the dirty guest run (thread mode: _initialize runs on its
        // thread) and be sure it did.
        let _ = a.receiver().recv_timeout(Some(Duration::from_millis(200)));
        let mut b = runtime
            .spawn(clean.as_bytes(), options("clean", mode))
            .unwrap();
        let seg = b.segment();
        // SAFETY: the window is placed and `len` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(seg.base(), seg.len()) };
        assert_eq!(
            &bytes[..8],
            &shmrt::primitives::segment_header::MAGIC[..],
            "{mode:?}"
        );
        assert!(
            !bytes
                .windows(64)
                .any(|w| w.iter().all(|&x| x == 0xa5 || x == 0x5a)),
            "{mode:?}: another sandbox's writes show in a fresh one"
        );
        assert_eq!(template_bytes(), before, "{mode:?}: the template changed");
        b.sender().goodbye();
        let _ = b.join();
        drop(a);
        drop(first);
    }
}

/// A start function that grows its memory by exactly the window's pages
/// is refused the growth (-1): only the runtime's own growth places the
/// window, after the start function, at the end of the initial pages, with
/// the laid-out segment there.
#[test]
fn a_start_function_can_not_place_the_window() {
    let _a = alone();
    let runtime = Runtime::new().unwrap();
    let pages = window_pages();
    let size = layout().window_size();
    // Grows by the window, then (if that worked) fills it with 0xff; the
    // grow's result is kept at address 0.
    let wat = wat_guest(
        "",
        &format!(
            "(i32.store (i32.const 0) (memory.grow (i32.const {pages})))
             (if (i32.ne (i32.load (i32.const 0)) (i32.const -1))
               (then (memory.fill (i32.const 65536) (i32.const 0xff) (i32.const {size}))))"
        ),
    );
    for mode in MODES {
        let mut sb = runtime
            .spawn(wat.as_bytes(), options("selfplace", mode))
            .unwrap();
        assert_eq!(
            sb.window_base(),
            65536,
            "{mode:?}: the window follows the initial page"
        );
        let seg = sb.segment();
        // SAFETY: the window is placed and at least 8 bytes long.
        let magic = unsafe { std::slice::from_raw_parts(seg.base(), 8) };
        assert_eq!(
            magic,
            &shmrt::primitives::segment_header::MAGIC[..],
            "{mode:?}"
        );
        sb.sender().goodbye();
        assert_eq!(sb.join().unwrap(), 0, "{mode:?}");
    }
}

/// A configuration whose window is larger than 4 GiB is refused from its
/// layout: no template is laid out for it, no descriptor is left.
#[test]
fn a_window_too_large_is_refused_before_anything_is_laid_out() {
    let _a = alone();
    let runtime = Runtime::new().unwrap();
    drop(
        runtime
            .spawn(
                wat_guest("", "").as_bytes(),
                options("warm", Execution::Callback),
            )
            .unwrap(),
    );
    let mut cfg = SegmentConfig::single_guest();
    // 1.1 M slots of 4 KiB: a 4.4 GiB window.
    cfg.size_classes = SizeClasses::new(&[SizeClass {
        slot_size: 4096,
        slot_count: 1_100_000,
    }])
    .unwrap();
    cfg.max_payload_size = 4092;
    let before = template_fds();
    let err = runtime
        .spawn(
            wat_guest("", "").as_bytes(),
            SandboxOptions {
                segment: cfg,
                ..options("huge", Execution::Callback)
            },
        )
        .unwrap_err();
    assert!(matches!(err, SandboxError::WindowTooLarge { .. }), "{err}");
    assert_eq!(
        template_fds().len(),
        before.len(),
        "a refused spawn laid a template out"
    );
}

/// A runtime spawning sandboxes of ever new configurations, each ended
/// before the next, holds at most the two templates it used last.
#[test]
fn templates_no_sandbox_uses_are_let_go() {
    let _a = alone();
    let runtime = Runtime::new().unwrap();
    let wat = wat_guest("", "");
    let before = template_fds().len();
    for i in 0..50u32 {
        let mut cfg = SegmentConfig::single_guest();
        cfg.ring_capacity = 64 * 1024 + 64 * (i + 1);
        for mode in [Execution::Callback, Execution::Thread] {
            let sb = runtime
                .spawn(
                    wat.as_bytes(),
                    SandboxOptions {
                        segment: cfg,
                        ..options("cfg", mode)
                    },
                )
                .unwrap();
            drop(sb);
        }
    }
    let held = template_fds().len() - before;
    assert!(
        held <= 2,
        "{held} templates held for configurations no sandbox uses"
    );
    // While sandboxes live, their templates stay (and are shared).
    let live: Vec<_> = (0..4)
        .map(|_| {
            runtime
                .spawn(wat.as_bytes(), options("live", Execution::Callback))
                .unwrap()
        })
        .collect();
    assert!(template_fds().len() - before <= 3);
    drop(live);
}

/// A module whose declared maximum leaves room for exactly the window, and
/// whose start function (with a file-backed window, where a start function
/// may grow) takes some of that room: refused with a message that names
/// the pages, the maximum and what to do.
#[test]
fn a_start_function_taking_the_windows_room_is_refused_clearly() {
    let runtime = Runtime::new().unwrap();
    let max = 1 + window_pages();
    let wat = format!(
        r#"(module
          (memory (export "memory") 1 {max})
          (func $grow (drop (memory.grow (i32.const 2))))
          (start $grow)
          (func (export "shmrt_on_messages") (result i32) (i32.const 0)))"#
    );
    for mode in [Execution::Callback, Execution::Thread] {
        let err = runtime
            .spawn(
                wat.as_bytes(),
                SandboxOptions {
                    segment_source: shmrt::SegmentSource::Memfd,
                    ..options("roomless", mode)
                },
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, SandboxError::Refused { .. }),
            "{mode:?}: {text}"
        );
        assert!(
            text.contains(&format!("declared maximum of {max} pages"))
                && text.contains("3 pages after instantiation"),
            "{mode:?}: {text}"
        );
    }
}
