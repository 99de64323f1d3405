//! A callback guest's cursor record (`shmrt_primitives::callback_cursors`):
//! the SDK's plugins export it and the host publishes the cursors each
//! call leaves there; a split sandbox's sender and receiver on other
//! threads see every message, in order, while callbacks run; a record a
//! guest lies about (out of bounds, misaligned, garbage cursors) is never
//! acknowledged, or ends in a protocol error, never a host panic or hang.
//! Every wait is bounded, so that a regression fails instead of hanging.

mod common;

use std::time::Duration;

use common::{guest, within};
use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};
use shmrt_primitives::callback_cursors::CallbackCursors;

fn callback(name: &str) -> SandboxOptions {
    SandboxOptions {
        name: name.to_owned(),
        execution: Execution::Callback,
        timeout: Some(Duration::from_secs(60)),
        ..SandboxOptions::default()
    }
}

/// The message numbered `i`: its number, then bytes derived from it, of a
/// length that varies from 8 bytes to a slot's worth.
fn message(i: u32) -> Vec<u8> {
    let len = match i % 7 {
        0 => 8,
        1 => 64,
        2 => 200,
        3 => 9000,
        _ => 8 + (i as usize * 37) % 900,
    };
    let mut m: Vec<u8> = (0..len).map(|k| (i as usize * 31 + k) as u8).collect();
    m[..4].copy_from_slice(&i.to_le_bytes());
    m
}

/// The SDK's plugins export the record, so a callback guest built with it
/// leaves its cursors to the host (were the export gone, every test of
/// this file would still pass, with the guest publishing for itself).
#[test]
fn sdk_plugins_export_the_cursor_record() {
    let wasm = std::fs::read(guest("examples/echo")).unwrap();
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, &wasm).unwrap();
    let export = module
        .exports()
        .find(|e| e.name() == CallbackCursors::EXPORT)
        .map(|e| matches!(e.ty(), wasmtime::ExternType::Global(_)));
    assert_eq!(
        export,
        Some(true),
        "the echo plugin exports the record as a global"
    );
}

/// A split callback sandbox with a small ring: the sender on one thread
/// (single sends and batches, inline and slot-sized messages), the
/// receiver on another, each driving the guest when it must, so that
/// callbacks run on both threads while the other one sends or reads.
/// Every message comes back once, in order, with its bytes.
#[test]
fn senders_and_receivers_on_other_threads_see_every_message_while_callbacks_run() {
    const COUNT: u32 = 20_000;
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let done = within(Duration::from_secs(120), move || {
        let runtime = Runtime::new().unwrap();
        let mut options = callback("cursors-split");
        options.segment.ring_capacity = 4096;
        let sandbox = runtime.spawn(&echo, options).unwrap();
        let (mut tx, mut rx, handle) = sandbox.split();
        let sender = std::thread::spawn(move || {
            let mut i = 0;
            while i < COUNT {
                if i % 3 == 0 {
                    let batch: Vec<Vec<u8>> = (i..(i + 16).min(COUNT)).map(message).collect();
                    i += tx.send_batch(batch.iter().map(Vec::as_slice))? as u32;
                } else {
                    tx.send(&message(i))?;
                    i += 1;
                }
            }
            tx.goodbye();
            Ok::<_, SandboxError>(())
        });
        let mut next = 0u32;
        let mut wrong = None;
        loop {
            let got = rx.recv_batch(|m| {
                let want = message(next);
                if wrong.is_none() && m.to_vec() != want {
                    wrong = Some(next);
                }
                next += 1;
            });
            match got {
                Ok(_) => {}
                Err(SandboxError::Closed { .. }) => break,
                Err(e) => panic!("receiving: {e}"),
            }
        }
        sender.join().unwrap().unwrap();
        assert_eq!(wrong, None, "message {wrong:?} came back changed");
        assert_eq!(next, COUNT, "every message came back");
        assert_eq!(handle.join().unwrap(), 0);
    });
    assert!(
        done.is_some(),
        "the split sandbox did not finish within 120 s"
    );
}

/// A callback guest that exports `address` as its record's and looks for
/// the host's ack at `read_at`: it returns 7 (and ends) when it finds it
/// there, 9 when not.
fn guest_reading_its_ack(address: i64, read_at: i64) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global (export "{export}") i32 (i32.const {address}))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0)))
    (if (result i32) (i32.eq (i32.load (i32.const {read_at})) (i32.const {ack}))
      (then (i32.const 7)) (else (i32.const 9)))))"#,
        export = CallbackCursors::EXPORT,
        ack = CallbackCursors::ACK as i32,
    )
}

/// The ack is written into a record that lies inside memory, 4-aligned,
/// and nowhere else: one out of bounds or misaligned is left alone (the
/// guest then publishes its cursors itself).
#[test]
fn only_a_record_inside_memory_and_aligned_is_acknowledged() {
    let runtime = Runtime::new().unwrap();
    for (address, read_at, want) in [
        (1024, 1024, 7),
        (1025, 1024, 9),
        (65530, 1024, 9),
        (65520, 65520, 7),
    ] {
        let wat = guest_reading_its_ack(address, read_at);
        let mut sandbox = runtime
            .spawn(wat.as_bytes(), callback("ack"))
            .unwrap_or_else(|e| panic!("record at {address}: {e}"));
        sandbox.sender().send(b"go").unwrap();
        let status = sandbox.join();
        assert_eq!(status.ok(), Some(want), "record at {address}");
    }
}

/// A guest that leaves garbage in its record (a read cursor past its
/// ring, a write cursor that is not a frame's end) gets the stop of a
/// protocol violation, reported, not a panic or a hang of the host.
#[test]
fn garbage_cursors_in_the_record_are_a_protocol_error() {
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global (export "{export}") i32 (i32.const 2048))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0)))
    (i32.store (i32.const 2052) (i32.const -256))
    (i32.store (i32.const 2056) (i32.const 7))
    (i32.store (i32.const 2060) (i32.const 3))
    (i32.const 0)))"#,
        export = CallbackCursors::EXPORT,
    );
    let outcome = within(Duration::from_secs(30), move || {
        let runtime = Runtime::new().unwrap();
        let mut sandbox = runtime.spawn(wat.as_bytes(), callback("garbage")).unwrap();
        sandbox.sender().send(b"go").unwrap();
        let received = sandbox
            .receiver()
            .recv_timeout(Some(Duration::from_secs(5)))
            .map(|m| m.map(|m| m.len()));
        let sent = sandbox.sender().send(b"again");
        (received, sent)
    });
    let (received, sent) = outcome.expect("the host answered within 30 s");
    assert!(
        matches!(received, Err(SandboxError::Protocol { .. })),
        "recv: {received:?}"
    );
    assert!(
        matches!(
            sent,
            Err(SandboxError::Protocol { .. } | SandboxError::Closed { .. })
        ),
        "send: {sent:?}"
    );
}

/// A guest that leaves garbage in its record and then traps: the host
/// publishes what a trapped call left (the answers of the messages before
/// the failing one), checked as always: the sandbox ends with its trap or
/// the protocol violation the receiver found, the receiver and the sender
/// with errors, in time, and no host panic.
#[test]
fn garbage_cursors_left_by_a_call_that_traps_end_in_errors() {
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global (export "{export}") i32 (i32.const 2048))
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0)))
    (i32.store (i32.const 2052) (i32.const -256))
    (i32.store (i32.const 2056) (i32.const 7))
    (i32.store (i32.const 2060) (i32.const 3))
    unreachable))"#,
        export = CallbackCursors::EXPORT,
    );
    let outcome = within(Duration::from_secs(30), move || {
        let runtime = Runtime::new().unwrap();
        let sandbox = runtime
            .spawn(wat.as_bytes(), callback("garbage-trap"))
            .unwrap();
        let (mut tx, mut rx, handle) = sandbox.split();
        tx.send(b"go").unwrap();
        let received = rx
            .recv_timeout(Some(Duration::from_secs(5)))
            .map(|m| m.map(|m| m.len()));
        let sent = tx.send(b"again");
        (received, sent, handle.join())
    });
    let (received, sent, joined) = outcome.expect("the host answered within 30 s");
    assert!(received.is_err(), "recv: {received:?}");
    assert!(sent.is_err(), "send: {sent:?}");
    assert!(
        matches!(
            joined,
            Err(SandboxError::Trap { .. } | SandboxError::Protocol { .. })
        ),
        "join: {joined:?}"
    );
}

/// `Sandbox::ends` hands out both ends at once, so they can run on two
/// scoped threads at once: the receiver's thread parks while it drives a
/// guest on the host's thread with nothing queued, and each send on the
/// other thread must wake it (a wake-up lost costs a nap of 50 ms a
/// message in callback mode, 100 s here: any shortcut of the host's
/// wakes for ends used on one thread must leave these alone).
#[test]
fn ends_borrowed_together_wake_each_other_across_scoped_threads() {
    const ROUND_TRIPS: u32 = 2_000;
    for execution in [Execution::Callback, Execution::Fiber] {
        let echo = std::fs::read(guest("examples/echo")).unwrap();
        let done = within(Duration::from_secs(60), move || {
            let runtime = Runtime::new().unwrap();
            let mut options = callback("ends-together");
            options.execution = execution;
            let mut sandbox = runtime.spawn(&echo, options).unwrap();
            let (tx, rx) = sandbox.ends();
            let (replied, reply) = std::sync::mpsc::channel::<Vec<u8>>();
            std::thread::scope(|s| {
                s.spawn(move || {
                    for _ in 0..ROUND_TRIPS {
                        let m = rx.recv().expect("a reply");
                        replied.send(m.to_vec()).unwrap();
                    }
                });
                // Every request is sent even after a wrong answer, so
                // that the receiving thread ends and the failure is named.
                let mut wrong = None;
                for i in 0..ROUND_TRIPS {
                    let m = message(i);
                    tx.send(&m).unwrap();
                    if reply.recv().unwrap() != m {
                        wrong.get_or_insert(i);
                    }
                }
                assert_eq!(wrong, None, "the first round trip answered wrongly");
            });
            sandbox.sender().goodbye();
            sandbox.join()
        });
        assert_eq!(
            done.map(|r| r.map_err(|e| e.to_string())),
            Some(Ok(0)),
            "{execution:?}: {ROUND_TRIPS} round trips on two threads"
        );
    }
}

/// Ends swapped between two sandboxes (`std::mem::swap` on their
/// `sender()`s) leave each sandbox with an end on each of two threads,
/// though neither was split: thread X holds sandbox `a` (the receiver of
/// guest A, the sender to guest B), thread Y sandbox `b`. Each message
/// goes X -> B -> Y -> A -> X, so each thread parks while it drives its
/// guest and must be woken by the other's send. An end used away from its
/// sandbox marks the two ends apart (a wake-up lost would cost a nap of
/// 50 ms a message, 100 s here).
#[test]
fn ends_swapped_between_sandboxes_wake_each_other_across_threads() {
    const ROUND_TRIPS: u32 = 1_000;
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let done = within(Duration::from_secs(60), move || {
        let runtime = Runtime::new().unwrap();
        let mut a = runtime.spawn(&echo, callback("swapped-a")).unwrap();
        let mut b = runtime.spawn(&echo, callback("swapped-b")).unwrap();
        std::mem::swap(a.sender(), b.sender());
        let y = std::thread::spawn(move || -> Result<Sandbox, String> {
            for i in 0..ROUND_TRIPS {
                // From guest B, passed on to guest A.
                let m = b.receiver().recv().map_err(|e| e.to_string())?.to_vec();
                if m != message(i) {
                    return Err(format!("message {i} from B is wrong"));
                }
                b.sender().send(&m).map_err(|e| e.to_string())?;
            }
            Ok(b)
        });
        for i in 0..ROUND_TRIPS {
            // To guest B; back from guest A.
            a.sender().send(&message(i)).map_err(|e| e.to_string())?;
            let m = a.receiver().recv().map_err(|e| e.to_string())?.to_vec();
            if m != message(i) {
                return Err(format!("message {i} from A is wrong"));
            }
        }
        let mut b = y.join().map_err(|_| "thread Y panicked".to_string())??;
        a.sender().goodbye();
        b.sender().goodbye();
        Ok((
            a.join().map_err(|e| e.to_string())?,
            b.join().map_err(|e| e.to_string())?,
        ))
    });
    assert_eq!(
        done,
        Some(Ok((0, 0))),
        "{ROUND_TRIPS} messages around two sandboxes with swapped senders"
    );
}
