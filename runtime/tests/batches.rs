//! `HostSender::send_batch` and `HostReceiver::recv_batch` when things go
//! wrong part way: a batch's iterator or `each` that panics (the caller
//! catches it and goes on with the same sandbox), a payload too large in
//! the middle, a guest that has ended. What was sent stays sent and is
//! published, the caller learns how much went out, and later sends and
//! receives work as before. Every wait is bounded, so that a regression
//! fails instead of hanging.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use common::{guest, within};
use shmrt::{Execution, Runtime, SandboxError, SandboxOptions};

fn options(name: &str, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: name.to_owned(),
        execution,
        timeout: Some(Duration::from_secs(60)),
        ..SandboxOptions::default()
    }
}

/// What comes back from `rx` within 5 s each, up to `count` messages.
fn echoes(rx: &mut shmrt::HostReceiver, count: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < count {
        match rx.recv_timeout(Some(Duration::from_secs(5))) {
            Ok(Some(m)) => got.push(m.to_vec()),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// A batch whose iterator panics after three payloads: the three are
/// published (the guest answers them), and a send made after the caller
/// caught the panic reaches the guest (the sender is not left deferring
/// its commits forever).
#[test]
fn a_batch_whose_iterator_panics_publishes_what_it_sent_and_later_sends_arrive() {
    for execution in [Execution::Callback, Execution::Thread] {
        let echo = std::fs::read(guest("examples/echo")).unwrap();
        let got = within(Duration::from_secs(60), move || {
            let runtime = Runtime::new().unwrap();
            let sandbox = runtime
                .spawn(&echo, options("batch-panic", execution))
                .unwrap();
            let (mut tx, mut rx, handle) = sandbox.split();
            let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 16]).collect();
            let panicked = catch_unwind(AssertUnwindSafe(|| {
                tx.send_batch(payloads.iter().enumerate().map(|(i, p)| {
                    assert!(i < 3, "the batch's iterator panics");
                    p.as_slice()
                }))
            }));
            assert!(panicked.is_err(), "the iterator panicked");
            tx.send(b"after the panic").unwrap();
            let got = echoes(&mut rx, 4);
            tx.goodbye();
            drop(tx);
            let _ = echoes(&mut rx, usize::MAX);
            (got, handle.join().ok())
        });
        let (got, status) = got.unwrap_or_else(|| panic!("{execution:?}: hung"));
        let want: Vec<Vec<u8>> = vec![
            vec![b'a'; 16],
            vec![b'b'; 16],
            vec![b'c'; 16],
            b"after the panic".to_vec(),
        ];
        assert_eq!(got, want, "{execution:?}: the echoes");
        assert_eq!(status, Some(0), "{execution:?}: the guest ended well");
    }
}

/// A payload too large for any slot in the middle of a batch: the error
/// says how many went out before it (so that the caller can go on from
/// there), and those are published: the guest answers them.
#[test]
fn a_payload_too_large_mid_batch_says_how_many_went_out() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let got = within(Duration::from_secs(60), move || {
        let runtime = Runtime::new().unwrap();
        let sandbox = runtime
            .spawn(&echo, options("batch-too-large", Execution::Callback))
            .unwrap();
        let (mut tx, mut rx, _handle) = sandbox.split();
        let huge = vec![7u8; 256 << 20];
        let batch: [&[u8]; 4] = [b"one", b"two", &huge, b"four"];
        let sent = tx.send_batch(batch);
        (sent, echoes(&mut rx, 2))
    });
    let (sent, got) = got.expect("the batch and its echoes within 60 s");
    let err = sent.expect_err("the third payload is too large");
    assert_eq!(err.sent, 2, "two went out before it: {err}");
    assert!(
        matches!(err.error, SandboxError::TooLarge { .. }),
        "the error underneath: {:?}",
        err.error
    );
    assert!(err.to_string().contains("2 of"), "said: {err}");
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
}

/// A batch sent to a guest that has ended is refused as a single send is
/// (`Closed`), not written into a ring nobody reads and counted as sent.
#[test]
fn a_batch_to_an_ended_guest_is_closed() {
    let wat = r#"(module
  (memory (export "memory") 1)
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0)))
    (i32.const 7)))"#;
    let runtime = Runtime::new().unwrap();
    let sandbox = runtime
        .spawn(wat.as_bytes(), options("batch-closed", Execution::Callback))
        .unwrap();
    let (mut tx, _rx, handle) = sandbox.split();
    tx.send(b"go").unwrap();
    assert_eq!(handle.join().ok(), Some(7));
    let single = tx.send(b"one");
    assert!(
        matches!(single, Err(SandboxError::Closed { .. })),
        "send: {single:?}"
    );
    let batch: [&[u8]; 2] = [b"one", b"two"];
    match tx.send_batch(batch) {
        Err(e) => {
            assert_eq!(e.sent, 0, "{e}");
            assert!(
                matches!(e.error, SandboxError::Closed { .. }),
                "{:?}",
                e.error
            );
        }
        Ok(n) => panic!("a batch to an ended guest counted {n} as sent"),
    }
}

/// `each` panicking in the middle of a batch: the caller catches it and
/// goes on receiving with the same receiver; a thread guest sending far
/// more than its small ring holds is never left waiting for room the
/// host read but did not give back, and every message arrives once, in
/// order.
#[test]
fn a_batch_whose_each_panics_leaves_the_receiver_working() {
    const COUNT: u32 = 3000;
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let done = within(Duration::from_secs(90), move || {
        let runtime = Runtime::new().unwrap();
        let mut options = options("recv-batch-panic", Execution::Thread);
        options.segment.ring_capacity = 4096;
        let sandbox = runtime.spawn(&echo, options).unwrap();
        let (mut tx, mut rx, handle) = sandbox.split();
        let sender = std::thread::spawn(move || {
            for i in 0..COUNT {
                let mut m = vec![0u8; 200];
                m[..4].copy_from_slice(&i.to_le_bytes());
                tx.send(&m)?;
            }
            tx.goodbye();
            Ok::<_, SandboxError>(())
        });
        let mut seen = Vec::new();
        // Once the ring has filled, a batch holds many: the panic comes
        // after the first of them.
        std::thread::sleep(Duration::from_millis(300));
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            rx.recv_batch(|m| {
                seen.push(u32::from_le_bytes(m.to_vec()[..4].try_into().unwrap()));
                assert!(seen.len() < 2, "each panics on the second message");
            })
        }));
        assert!(panicked.is_err(), "each panicked");
        loop {
            match rx.recv_timeout(Some(Duration::from_secs(10))) {
                Ok(Some(m)) => seen.push(u32::from_le_bytes(m.to_vec()[..4].try_into().unwrap())),
                Ok(None) => break,
                Err(SandboxError::Closed { .. }) => break,
                Err(e) => panic!("receiving: {e}"),
            }
        }
        sender.join().unwrap().unwrap();
        (seen, handle.join().ok())
    });
    let (seen, status) = done.expect("the sandbox finished within 90 s");
    assert_eq!(seen.len(), COUNT as usize, "every message arrived");
    assert!(
        seen.iter().enumerate().all(|(i, &n)| n == i as u32),
        "in order, once each"
    );
    assert_eq!(status, Some(0));
}
