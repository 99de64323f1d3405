//! Load: 64 sandboxes streaming at once for a bounded time, every message
//! sequence-checked (nothing lost, duplicated or reordered), and the
//! process's memory flat once every sandbox is running.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmrt::{Runtime, SandboxOptions};

const SANDBOXES: usize = 64;
const RUN_FOR: Duration = Duration::from_secs(8);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn sixty_four_sandboxes_stream_at_once_with_every_message_checked() {
    let runtime = Arc::new(Runtime::new().unwrap());
    let wasm = std::fs::read(common::guest("examples/echo")).unwrap();
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut hosts = Vec::new();
    for i in 0..SANDBOXES {
        let mut options = SandboxOptions {
            name: format!("soak-{i}"),
            ..SandboxOptions::default()
        };
        options.segment.ring_capacity = 16 * 1024;
        options.timeout = Some(RUN_FOR * 6);
        let sandbox = runtime.spawn(&wasm, options).unwrap();
        let total = total.clone();
        hosts.push(std::thread::spawn(move || {
            let (mut tx, mut rx, handle) = sandbox.split();
            let (mut next_send, mut next_recv) = (0u64, 0u64);
            while start.elapsed() < RUN_FOR {
                // Keep up to 32 messages in flight; every 50th is large
                // enough to go in a slot.
                while next_send < next_recv + 32 {
                    let len = if next_send % 50 == 0 { 5000 } else { 8 };
                    let mut msg = vec![0u8; len];
                    msg[..8].copy_from_slice(&next_send.to_le_bytes());
                    tx.send(&msg).unwrap();
                    next_send += 1;
                }
                let m = rx.recv().unwrap();
                let seq = m.bytes().u64_le(0).unwrap();
                assert_eq!(
                    seq, next_recv,
                    "sandbox {i}: message {seq} arrived when {next_recv} was due"
                );
                assert_eq!(m.len(), if seq % 50 == 0 { 5000 } else { 8 });
                next_recv += 1;
            }
            tx.goodbye();
            while next_recv < next_send {
                let m = rx.recv().unwrap();
                assert_eq!(m.bytes().u64_le(0).unwrap(), next_recv);
                next_recv += 1;
            }
            assert_eq!(handle.join().unwrap(), 0, "sandbox {i}");
            total.fetch_add(next_recv, Ordering::Relaxed);
        }));
    }
    // Every sandbox is running: memory must not grow from here on.
    std::thread::sleep(Duration::from_secs(2));
    let settled = rss_kib();
    std::thread::sleep(
        RUN_FOR
            .saturating_sub(start.elapsed())
            .saturating_sub(Duration::from_millis(500)),
    );
    let late = rss_kib();
    for h in hosts {
        h.join().unwrap();
    }
    let messages = total.load(Ordering::Relaxed);
    eprintln!(
        "soak: {SANDBOXES} sandboxes, {messages} messages echoed and checked, RSS {settled} KiB -> {late} KiB"
    );
    assert!(
        messages > SANDBOXES as u64 * 100,
        "every sandbox made progress: {messages}"
    );
    assert!(
        late <= settled + 16 * 1024,
        "memory grew from {settled} KiB to {late} KiB while streaming"
    );
}
