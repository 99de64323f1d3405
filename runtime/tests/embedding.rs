//! The library API: a native host spawning sandboxes and talking to them.

mod common;

use std::time::{Duration, Instant};

use common::guest;
use shmrt::{Execution, ReadSend, Runtime, SandboxError, SandboxOptions, SendReadError};

/// A guest on a thread of its own: these tests hold that mode's behaviour
/// (a guest that runs while the host does something else);
/// execution_modes.rs runs plugins through every mode.
fn options(name: &str) -> SandboxOptions {
    SandboxOptions {
        name: name.into(),
        execution: Execution::Thread,
        ..SandboxOptions::default()
    }
}

/// By default (`Execution::Auto`) a plugin that exports a callback runs as
/// one (no hand-off between cores), and one with only a blocking loop on a
/// thread of its own.
#[test]
fn the_default_mode_is_a_callback_for_a_plugin_that_has_one() {
    let runtime = Runtime::new().unwrap();
    let sandbox = runtime
        .spawn_file(&guest("examples/upper"), SandboxOptions::default())
        .unwrap();
    assert_eq!(sandbox.execution(), Execution::Callback);
    let (mut tx, mut rx, handle) = sandbox.split();
    assert_eq!(handle.execution(), Execution::Callback);
    tx.send(b"auto").unwrap();
    assert_eq!(rx.recv().unwrap().to_vec(), b"AUTO");
    tx.goodbye();
    assert_eq!(handle.join().unwrap(), 0);

    let sandbox = runtime
        .spawn_file(
            &guest("runtime/tests/guests/std-echo"),
            SandboxOptions::default(),
        )
        .unwrap();
    let (mut tx, mut rx, handle) = sandbox.split();
    assert_eq!(handle.execution(), Execution::Thread);
    tx.send(b"loop").unwrap();
    assert_eq!(rx.recv().unwrap().to_vec(), b"std:loop");
    tx.goodbye();
    assert_eq!(handle.join().unwrap(), 1, "std-echo exits with its count");
}

/// The window is the segment: a word the guest stores through its linear
/// memory shows in the host's mapping, and a word the host stores shows to
/// the guest, which returns it as its exit status.
#[test]
fn bytes_written_on_either_side_are_seen_by_the_other() {
    let wat = r#"(module
      (import "shmrt" "segment_base" (func $base (result i32)))
      (import "shmrt" "segment_size" (func $size (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (local $p i32)
        (local.set $p (i32.sub (i32.add (call $base) (call $size)) (i32.const 8)))
        (i32.atomic.store (local.get $p) (i32.const 0x5eed))
        (block $done (loop $spin
          (br_if $done (i32.atomic.load (i32.add (local.get $p) (i32.const 4))))
          (br $spin)))
        (i32.atomic.load (i32.add (local.get $p) (i32.const 4)))))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("window");
    opts.timeout = Some(Duration::from_secs(20));
    let sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    assert_eq!(
        sandbox.window_base(),
        65536,
        "the window starts right after the module's one page"
    );
    let seg = sandbox.segment();
    // SAFETY: the last 8 bytes of the mapping are inside it.
    let word = |off: usize| unsafe {
        &*(seg.base().add(seg.len() - 8 + off) as *const std::sync::atomic::AtomicU32)
    };
    let start = Instant::now();
    while word(0).load(std::sync::atomic::Ordering::Acquire) != 0x5eed {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the guest's store never showed"
        );
        std::thread::yield_now();
    }
    word(4).store(42, std::sync::atomic::Ordering::Release);
    assert_eq!(
        sandbox.join().unwrap(),
        42,
        "the guest saw the host's store"
    );
}

#[test]
fn send_and_receive_inline_slot_and_in_place() {
    let runtime = Runtime::new().unwrap();
    let mut sb = runtime
        .spawn_file(&guest("examples/echo"), options("echo"))
        .unwrap();
    sb.sender().send(b"short").unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // Written in place into slot memory.
    sb.sender()
        .send_with(big.len(), |mut buf| buf.copy_from(&big))
        .unwrap();
    {
        let m = sb.receiver().recv().unwrap();
        assert_eq!(m.to_vec(), b"short");
        assert!(!m.is_slot());
    }
    {
        let m = sb
            .receiver()
            .recv_timeout(Some(Duration::from_secs(10)))
            .unwrap()
            .expect("the echo");
        assert!(m.is_slot());
        assert!(m.to_vec() == big);
    }
    let t = Instant::now();
    assert!(
        sb.receiver()
            .recv_timeout(Some(Duration::from_millis(50)))
            .unwrap()
            .is_none()
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    sb.sender().goodbye();
    assert!(matches!(
        sb.receiver().recv(),
        Err(SandboxError::Closed { .. })
    ));
    assert_eq!(sb.join().unwrap(), 0);
}

#[test]
fn send_read_reads_into_the_segment_and_sends_what_was_read() {
    let runtime = Runtime::new().unwrap();
    let mut sb = runtime
        .spawn_file(&guest("examples/echo"), options("echo-read"))
        .unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut input = &data[..];
    // A reader that comes up short: 100 000 of 150 000 reserved bytes.
    let r = sb.sender().send_from_reader(150_000, |mut buf| {
        let n = input.len().min(buf.len());
        buf.write_at(0, &input[..n]);
        input = &input[n..];
        Ok(n)
    });
    assert_eq!(r.unwrap(), ReadSend::Sent(100_000));
    // A reader with nothing left sends nothing; a failing one neither.
    assert_eq!(
        sb.sender().send_from_reader(10, |_| Ok(0)).unwrap(),
        ReadSend::Eof
    );
    let failed = sb
        .sender()
        .send_from_reader(10, |_| Err(std::io::Error::other("disk on fire")));
    assert!(matches!(failed, Err(SendReadError::Read(e)) if e.to_string() == "disk on fire"));
    {
        let m = sb.receiver().recv().unwrap();
        assert!(m.is_slot());
        assert!(m.to_vec() == data);
    }
    sb.sender().send(b"after").unwrap();
    assert_eq!(sb.receiver().recv().unwrap().to_vec(), b"after");
    sb.sender().goodbye();
    assert!(matches!(
        sb.receiver().recv(),
        Err(SandboxError::Closed { .. })
    ));
    assert_eq!(sb.join().unwrap(), 0);
}

#[test]
fn wait_honours_its_timeout_a_ring_and_goodbye() {
    let runtime = Runtime::new().unwrap();
    let mut sb = runtime
        .spawn_file(&guest("runtime/tests/guests/probe"), options("probe"))
        .unwrap();
    let reply = |sb: &mut shmrt::Sandbox| sb.receiver().recv().unwrap().to_vec();

    let t = Instant::now();
    sb.sender().send(b"wait 30000000").unwrap();
    assert_eq!(reply(&mut sb), b"1", "timeout");
    assert!(t.elapsed() >= Duration::from_millis(30));

    sb.sender().send(b"wait -1").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sb.sender().send(b"x").unwrap();
    assert_eq!(reply(&mut sb), b"0", "rang");
    assert_eq!(reply(&mut sb), b"x");

    sb.sender().send(b"wait -1").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sb.sender().goodbye();
    assert_eq!(reply(&mut sb), b"2", "goodbye");
    assert_eq!(sb.join().unwrap(), 0);
}

#[test]
fn a_deadline_ends_a_guest_parked_in_wait() {
    let runtime = Runtime::new().unwrap();
    let mut opts = options("parked");
    opts.timeout = Some(Duration::from_millis(200));
    let mut sb = runtime
        .spawn_file(&guest("runtime/tests/guests/probe"), opts)
        .unwrap();
    sb.sender().send(b"wait -1").unwrap();
    let t = Instant::now();
    match sb.join() {
        Err(SandboxError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn sandboxes_are_independent() {
    let runtime = Runtime::new().unwrap();
    let mut a = runtime
        .spawn_file(&guest("examples/upper"), options("a"))
        .unwrap();
    let mut b = runtime
        .spawn_file(&guest("runtime/tests/guests/probe"), options("b"))
        .unwrap();
    b.sender().send(b"panic b falls over").unwrap();
    assert!(
        matches!(b.join(), Err(SandboxError::Trap { message, .. }) if message.contains("b falls over"))
    );
    for i in 0..1000 {
        let msg = format!("message {i}");
        a.sender().send(msg.as_bytes()).unwrap();
        assert_eq!(
            a.receiver().recv().unwrap().to_vec(),
            msg.to_uppercase().as_bytes()
        );
    }
    a.sender().goodbye();
    assert_eq!(a.join().unwrap(), 0);
}

#[test]
fn refusals_name_the_sandbox_and_the_fix() {
    let runtime = Runtime::new().unwrap();
    let wat = r#"(module (memory (import "env" "memory") 1) (func (export "shmrt_main") (result i32) i32.const 0))"#;
    let err = runtime
        .spawn(wat.as_bytes(), options("imports-memory"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("sandbox imports-memory: module imports its linear memory"),
        "{err}"
    );
    let wat = r#"(module (memory (export "memory") 1) (func (export "main")))"#;
    let err = runtime
        .spawn(wat.as_bytes(), options("no-entry"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("neither `shmrt_main"), "{err}");
    let wat = r#"(module (memory (export "memory") i64 1) (func (export "shmrt_main") (result i32) i32.const 0))"#;
    let err = runtime
        .spawn(wat.as_bytes(), options("memory64"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("64-bit memory"), "{err}");
}
