//! Slots the host reserves and owns across calls (`HostSender::reserve_slot`,
//! `send_reserved`, `ReservedSlot`): the guest receives them as ordinary
//! slot messages; abandoned ones come back; a guest that holds every slot
//! ends the wait with the slot-stall error, not a hang; a guest that ends,
//! or a sandbox joined, with a reservation outstanding leaks nothing and
//! crashes nothing.

mod common;

use std::time::{Duration, Instant};

use common::guest;
use shmrt::primitives::{SizeClass, SizeClasses};
use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

const MODES: [Execution; 3] = [Execution::Thread, Execution::Fiber, Execution::Callback];

/// One class of 8 slots of 4092-byte payloads: the host may hold 4.
fn options(name: &str, execution: Execution) -> SandboxOptions {
    let mut opts = SandboxOptions {
        name: format!("{name}-{}", execution.name()),
        execution,
        timeout: Some(Duration::from_secs(30)),
        slot_wait: Some(Duration::from_millis(300)),
        ..SandboxOptions::default()
    };
    opts.segment.size_classes =
        SizeClasses::new(&[SizeClass::for_payload(4092, 8).unwrap()]).expect("one class");
    opts
}

/// Slots of the class for `len` bytes the host holds now.
fn held_by_host(sandbox: &shmrt::Sandbox, len: u32) -> u32 {
    sandbox.segment().pool().holders(len).unwrap().by_host
}

#[test]
fn a_reserved_slot_reaches_the_guest_as_a_slot_message_in_every_mode() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime.spawn(&echo, options("echo", mode)).unwrap();
        // 10 bytes would go inline; reserved, it is a slot all the same.
        for (len, keep) in [(10, 10), (4092, 4092), (4000, 123)] {
            let payload = common::bytes(len as u64, len);
            let mut r = sandbox.sender().reserve_slot(len, None).unwrap();
            assert_eq!(r.len(), len);
            assert_eq!(r.sandbox(), sandbox.name());
            r.bytes_mut().copy_from(&payload);
            r.truncate(keep);
            assert_eq!(held_by_host(&sandbox, len as u32), 1, "{mode:?}");
            sandbox.sender().send_reserved(r).unwrap();
            let reply = sandbox.receiver().recv().unwrap();
            assert_eq!(reply.to_vec(), &payload[..keep], "{mode:?}: {len}");
            drop(reply);
            // The guest freed the slot it received, as any slot message.
            assert_eq!(held_by_host(&sandbox, len as u32), 0, "{mode:?}");
        }
        sandbox.sender().goodbye();
        assert_eq!(sandbox.join().unwrap(), 0);
    }
}

#[test]
fn abandoned_slots_come_back_and_too_large_names_the_sizes() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut sandbox = runtime
        .spawn(&echo, options("abandon", Execution::Thread))
        .unwrap();
    // Many more reservations than there are slots, each given back.
    for i in 0..40 {
        let mut r = sandbox.sender().reserve_slot(4000, None).unwrap();
        r.bytes_mut().copy_from(&[i as u8; 4000]);
        if i % 2 == 0 {
            r.abandon();
        } else {
            drop(r);
        }
    }
    assert_eq!(held_by_host(&sandbox, 4000), 0);
    // The host's share, all at once: four of the eight.
    let held: Vec<_> = (0..4)
        .map(|_| {
            sandbox
                .sender()
                .reserve_slot(100, Some(Duration::ZERO))
                .unwrap()
        })
        .collect();
    let fifth = sandbox
        .sender()
        .reserve_slot(100, Some(Duration::from_millis(50)));
    assert!(
        matches!(fifth, Err(SandboxError::WouldBlock { .. })),
        "{fifth:?}"
    );
    drop(held);
    assert_eq!(held_by_host(&sandbox, 100), 0);
    let big = sandbox.sender().reserve_slot(4093, None);
    match big {
        Err(
            e @ SandboxError::TooLarge {
                len: 4093,
                max: 4092,
                ..
            },
        ) => {
            let text = e.to_string();
            assert!(text.contains("4093") && text.contains("4092"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    sandbox.sender().goodbye();
    assert_eq!(sandbox.join().unwrap(), 0);
}

/// A guest that takes every message it is sent and never frees one holds
/// the host's whole share: a reservation ends at the slot wait with the
/// error naming the class and its holders, not a hang, and without
/// spinning; with a shorter timeout it is a timeout.
#[test]
fn a_guest_holding_every_slot_ends_the_reservation_at_the_slot_wait() {
    let wat = r#"(module
      (import "shmrt" "wait" (func $wait (param i64) (result i32)))
      (memory (export "memory") 1)
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (loop $l (drop (call $wait (i64.const -1))) (br $l)) (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    for mode in [Execution::Thread, Execution::Fiber] {
        let mut sandbox = runtime
            .spawn(wat.as_bytes(), options("hoarder", mode))
            .unwrap();
        // Slot messages until the host's share is in the guest's hands.
        let mut sent = 0;
        while sandbox.sender().try_send(&[7u8; 2000]).unwrap() {
            sent += 1;
        }
        assert_eq!(sent, 4, "{mode:?}");
        let started = Instant::now();
        let short = sandbox
            .sender()
            .reserve_slot(2000, Some(Duration::from_millis(100)));
        assert!(
            matches!(short, Err(SandboxError::WouldBlock { .. })),
            "{mode:?}: {short:?}"
        );
        let long = sandbox.sender().reserve_slot(2000, None);
        match long {
            Err(SandboxError::SlotsExhausted {
                slot_count: 8,
                by_host: 4,
                ..
            }) => {}
            other => panic!("{mode:?}: {other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{mode:?}: {waited:?}"
        );
        sandbox.stop_handle().stop();
        let _ = sandbox.join();
    }
}

/// The guest ends while the host holds a reservation: sending it is
/// `Closed` and frees the slot. A reservation outstanding when the
/// sandbox is joined stays writable (its segment stays mapped until it
/// goes) and is dropped without harm.
#[test]
fn a_guest_that_ends_with_a_reservation_outstanding() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime.spawn(&echo, options("ends", mode)).unwrap();
        let mut r = sandbox.sender().reserve_slot(3000, None).unwrap();
        r.bytes_mut().copy_from(&[1u8; 3000]);
        sandbox.sender().goodbye();
        // Everything read: the guest has ended.
        match sandbox.receiver().recv() {
            Err(SandboxError::Closed { .. }) => {}
            Ok(m) => panic!("{mode:?}: unexpected {} bytes", m.len()),
            Err(e) => panic!("{mode:?}: {e}"),
        }
        assert_eq!(held_by_host(&sandbox, 3000), 1);
        let sent = sandbox.sender().send_reserved(r);
        assert!(
            matches!(sent, Err(SandboxError::Closed { .. })),
            "{mode:?}: {sent:?}"
        );
        assert_eq!(held_by_host(&sandbox, 3000), 0, "{mode:?}");
        let late = sandbox.sender().reserve_slot(10, None);
        assert!(matches!(late, Err(SandboxError::Closed { .. })), "{late:?}");

        // Joined with one outstanding.
        let mut sandbox = runtime.spawn(&echo, options("joined", mode)).unwrap();
        let mut r = sandbox.sender().reserve_slot(3000, None).unwrap();
        let pool = sandbox.segment().pool();
        sandbox.sender().goodbye();
        assert_eq!(sandbox.join().unwrap(), 0);
        // The segment is mapped while `r` lives (`pool` reads it): its
        // bytes still take writes, and dropping it frees the slot.
        r.bytes_mut().copy_from(&[2u8; 3000]);
        assert_eq!(pool.holders(3000).unwrap().by_host, 1);
        r.truncate(0);
        assert!(r.is_empty());
        drop(r);
    }
}

#[test]
fn a_slot_of_another_sandbox_is_refused_and_given_back() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut a = runtime
        .spawn(&echo, options("a", Execution::Thread))
        .unwrap();
    let mut b = runtime
        .spawn(&echo, options("b", Execution::Thread))
        .unwrap();
    let r = a.sender().reserve_slot(100, None).unwrap();
    match b.sender().send_reserved(r) {
        Err(e @ SandboxError::ForeignSlot { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("a-thread") && text.contains("b-thread"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(held_by_host(&a, 100), 0);
    assert!(b.receiver().try_recv().unwrap().is_none());
    for s in [a, b] {
        let mut s = s;
        s.sender().goodbye();
        assert_eq!(s.join().unwrap(), 0);
    }
}
