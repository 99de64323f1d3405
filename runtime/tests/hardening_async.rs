//! Guests on the host's thread driven through the async API, and the
//! lifetimes around them: two tasks on one sandbox, the wake timer under
//! load, WASI inside a tokio task, a sandbox that outlives its runtime,
//! what ends a callback after the goodbye, and `_initialize`. Every wait
//! here is bounded, so that a regression fails instead of hanging.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{guest, within};
use shmrt::{Execution, GuestStdout, Runtime, SandboxError, SandboxOptions};

const MODES: [Execution; 3] = [Execution::Thread, Execution::Fiber, Execution::Callback];

fn options(name: &str, execution: Execution) -> SandboxOptions {
    SandboxOptions {
        name: format!("{name}-{}", execution.name()),
        execution,
        timeout: Some(Duration::from_secs(60)),
        ..SandboxOptions::default()
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// A callback that never reads its inbox.
const NEVER_READS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "shmrt_on_messages") (result i32)
    (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#;

/// A fiber guest that waits for the host forever.
const WAITS_FOREVER: &str = r#"(module
  (import "shmrt" "wait" (func $wait (param i64) (result i32)))
  (memory (export "memory") 1)
  (func (export "shmrt_main") (result i32)
    (drop (i32.atomic.load (i32.const 0)))
    (loop $l (drop (call $wait (i64.const -1))) (br $l)) (i32.const 0)))"#;

/// One task sends, another receives, on the two ends of one split
/// sandbox with small rings: every message comes back, in every mode, on
/// both kinds of tokio runtime.
#[test]
fn two_async_tasks_on_one_split_sandbox_both_finish() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    const COUNT: usize = 2000;
    for multi in [false, true] {
        for mode in MODES {
            let mut opts = options("split", mode);
            opts.segment.ring_capacity = 4096;
            let sandbox = runtime.spawn(&echo, opts).unwrap();
            let (mut tx, mut rx, handle) = sandbox.split();
            let rt = if multi {
                multi_thread()
            } else {
                current_thread()
            };
            let got = Arc::new(AtomicUsize::new(0));
            let counted = got.clone();
            let finished = rt.block_on(async move {
                let sender = tokio::spawn(async move {
                    for i in 0..COUNT {
                        tx.send_async(&[i as u8; 64]).await?;
                    }
                    tx.goodbye();
                    Ok::<_, SandboxError>(())
                });
                let receiver = tokio::spawn(async move {
                    loop {
                        match rx.recv_async().await {
                            Ok(m) => assert_eq!(m.len(), 64),
                            Err(SandboxError::Closed { .. }) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let (sender, receiver) = (&mut Some(sender), &mut Some(receiver));
                let both = async {
                    let sent = sender.as_mut().unwrap().await.unwrap();
                    (sent, receiver.as_mut().unwrap().await.unwrap())
                };
                let both = tokio::time::timeout(Duration::from_secs(30), both).await;
                let sender_done = sender.as_ref().unwrap().is_finished();
                (both, sender_done)
            });
            let n = got.load(Ordering::Relaxed);
            let (sent, received) = finished.0.unwrap_or_else(|_| {
                panic!(
                    "{mode:?} (multi {multi}): hung after {n} received (all sent: {})",
                    finished.1
                )
            });
            sent.unwrap();
            received.unwrap();
            assert_eq!(n, COUNT, "{mode:?} (multi {multi})");
            assert_eq!(handle.join().unwrap(), 0, "{mode:?} (multi {multi})");
            drop(rt);
        }
    }
}

/// A fiber guest that answers 70,000 requests, each followed by a wait
/// that ends 1 ms earlier than the last, leaves the wake timer working:
/// another fiber sandbox's 1 s timeout still ends its async receive.
#[test]
fn a_flood_of_timer_registrations_does_not_lose_a_deadline() {
    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    let runtime = Arc::new(Runtime::new().unwrap());
    let rt = current_thread();
    let started = rt.block_on(async {
        let mut opts = options("flood", Execution::Fiber);
        opts.timeout = None;
        let mut hostile = runtime.spawn(&probe, opts).unwrap();
        let hour: u64 = 3_600_000_000_000;
        hostile
            .sender()
            .send_async(b"wait 3600000000000")
            .await
            .unwrap();
        for i in 1..=70_000u64 {
            let next = format!("wait {}", hour - i * 1_000_000);
            hostile.sender().send_async(next.as_bytes()).await.unwrap();
            drop(hostile.receiver().recv_async().await.unwrap());
        }
        let mut opts = options("victim", Execution::Fiber);
        opts.timeout = Some(Duration::from_secs(1));
        let mut victim = runtime.spawn(WAITS_FOREVER.as_bytes(), opts).unwrap();
        let started = Instant::now();
        let task =
            tokio::spawn(async move { victim.receiver().recv_async().await.map(|m| m.len()) });
        let got = tokio::time::timeout(Duration::from_secs(15), task).await;
        let got = got.expect("the victim's deadline was lost").unwrap();
        assert!(matches!(got, Err(SandboxError::Closed { .. })), "{got:?}");
        drop(hostile);
        started
    });
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A task woken by the wake timer and polled inside `wake` (an inline
/// executor) may register with the timer again: the timer does not wake
/// while it holds its lock.
#[test]
fn a_task_polled_inside_its_wake_can_register_again() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Wake, Waker};

    type Job = Pin<Box<dyn Future<Output = ()> + Send>>;
    struct Inline {
        job: Mutex<Option<Job>>,
        again: std::sync::atomic::AtomicBool,
    }
    impl Inline {
        fn run(self: &Arc<Self>) {
            self.again.store(true, Ordering::SeqCst);
            while self.again.swap(false, Ordering::SeqCst) {
                let Ok(mut job) = self.job.try_lock() else {
                    return;
                };
                let waker = Waker::from(self.clone());
                if let Some(f) = job.as_mut()
                    && f.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
                {
                    *job = None;
                }
            }
        }
    }
    impl Wake for Inline {
        fn wake(self: Arc<Self>) {
            self.run();
        }
    }

    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    let runtime = Runtime::new().unwrap();
    let sandbox = runtime
        .spawn(&probe, options("inline", Execution::Fiber))
        .unwrap();
    let (mut tx, mut rx, _handle) = sandbox.split();
    // The first wait ends at once (the second message is queued), the
    // second after 20 ms (a timer), the third too, registered from
    // inside the timer's wake.
    tx.send(b"wait 20000000").unwrap();
    tx.send(b"wait 20000000").unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let job: Job = Box::pin(async move {
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(rx.recv_async().await.map(|m| m.to_vec()));
            if i == 1 {
                tx.send_async(b"wait 20000000").await.unwrap();
            }
        }
        let _ = done.send(answers);
    });
    let task = Arc::new(Inline {
        job: Mutex::new(Some(job)),
        again: Default::default(),
    });
    task.run();
    let answers = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the task was not woken again");
    let answers: Vec<Vec<u8>> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers, [b"0".to_vec(), b"1".to_vec(), b"1".to_vec()]);
}

/// A callback plugin that writes through WASI, driven by the async API
/// from inside a tokio task, on both kinds of tokio runtime: the write
/// works, and the host does not panic.
#[test]
fn a_callback_writes_through_wasi_inside_a_tokio_task() {
    // Writes "hi\n" to stdout, then ends with 7 + fd_write's errno.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 32) "hi\n")
      (func (export "shmrt_on_messages") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        (i32.store (i32.const 0) (i32.const 32))
        (i32.store (i32.const 4) (i32.const 3))
        (i32.add (i32.const 7)
          (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;
    let runtime = Runtime::new().unwrap();
    for multi in [false, true] {
        let mut opts = options("printer", Execution::Callback);
        opts.stdout = GuestStdout::Null;
        let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
        let rt = if multi {
            multi_thread()
        } else {
            current_thread()
        };
        let task = rt.spawn(async move {
            sandbox.sender().send_async(b"go").await.unwrap();
            let got = sandbox.receiver().recv_async().await.map(|m| m.len());
            (got.is_err(), sandbox.join())
        });
        let (closed, status) = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
            .expect("the task hung")
            .expect("the task panicked");
        assert!(closed, "multi {multi}");
        assert_eq!(status.unwrap(), 7, "multi {multi}: the write failed");
    }
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// A sandbox that outlives its `Runtime` keeps its timeout: a looping
/// guest on the host's thread is ended (the host's receive returns), and
/// a looping guest thread ends rather than keeping a core busy.
#[test]
fn a_sandbox_that_outlives_its_runtime_keeps_its_timeout() {
    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    for mode in [Execution::Fiber, Execution::Callback] {
        let runtime = Runtime::new().unwrap();
        let mut opts = options("orphan", mode);
        opts.timeout = Some(Duration::from_millis(500));
        opts.callback_slice = None;
        let mut sandbox = runtime.spawn(&probe, opts).unwrap();
        drop(runtime);
        sandbox.sender().send(b"spin").unwrap();
        let ended = within(Duration::from_secs(10), move || {
            let closed = matches!(
                sandbox.receiver().recv().map(|m| m.len()),
                Err(SandboxError::Closed { .. })
            );
            (closed, sandbox.join())
        });
        let (closed, status) = ended.unwrap_or_else(|| panic!("{mode:?}: recv never returned"));
        assert!(closed, "{mode:?}");
        assert!(
            matches!(status, Err(SandboxError::Timeout { .. })),
            "{mode:?}: {status:?}"
        );
    }
    // Thread mode: the thread's name is "shmrt-guest o4t-thread", of which
    // Linux keeps 15 bytes.
    let runtime = Runtime::new().unwrap();
    let mut opts = options("o4t", Execution::Thread);
    opts.timeout = Some(Duration::from_millis(500));
    let mut sandbox = runtime.spawn(&probe, opts).unwrap();
    drop(runtime);
    sandbox.sender().send(b"spin").unwrap();
    let status = within(Duration::from_secs(10), move || sandbox.join()).expect("join hung");
    assert!(
        matches!(status, Err(SandboxError::Timeout { .. })),
        "{status:?}"
    );
    let started = Instant::now();
    while thread_names().iter().any(|n| n == "shmrt-guest o4t") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the guest thread still runs after its timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After the host's goodbye, a callback that never reads its inbox is
/// ended by one rule, whichever host call runs it (a blocking receive,
/// an async one, or `join`), and the request it left is accounted for.
#[test]
fn a_callback_that_never_reads_is_ended_after_the_goodbye_by_every_host_call() {
    let runtime = Arc::new(Runtime::new().unwrap());
    for how in ["recv", "recv_async", "join"] {
        let mut opts = options(how, Execution::Callback);
        opts.timeout = None;
        let mut sandbox = runtime.spawn(NEVER_READS.as_bytes(), opts).unwrap();
        sandbox.sender().send(b"request").unwrap();
        sandbox.sender().goodbye();
        let how_ = how;
        let ended = within(Duration::from_secs(10), move || {
            let (_tx, mut rx, handle) = sandbox.split();
            let received = match how_ {
                "recv" => Some(rx.recv().map(|m| m.len())),
                "recv_async" => Some(
                    current_thread().block_on(async { rx.recv_async().await.map(|m| m.len()) }),
                ),
                _ => None,
            };
            (received, handle.join_counting_unread())
        });
        let (received, (status, unread)) =
            ended.unwrap_or_else(|| panic!("{how}: the callback was not ended"));
        if let Some(received) = received {
            assert!(
                matches!(received, Err(SandboxError::Closed { .. })),
                "{how}: {received:?}"
            );
        }
        match status {
            Err(SandboxError::Unanswered { unread: 1, .. }) => {}
            other => panic!("{how}: {other:?}"),
        }
        assert_eq!(unread, Some(1), "{how}");
    }
}

/// `join` of a callback sandbox whose answers nobody read accounts for
/// every request: the answers stay readable, and the requests the guest
/// could not take are counted in the error.
#[test]
fn join_accounts_for_every_request_of_a_callback() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut opts = options("unread", Execution::Callback);
    opts.segment.ring_capacity = 4096;
    let sandbox = runtime.spawn(&echo, opts).unwrap();
    let (mut tx, mut rx, handle) = sandbox.split();
    let mut sent = 0;
    // Sends until the ring stays full (the callback's answers fill its
    // own ring, which nobody reads).
    while tx
        .send_with_timeout(
            64,
            |mut b| b.copy_from(&[1; 64]),
            Some(Duration::from_millis(100)),
        )
        .is_ok()
    {
        sent += 1;
    }
    assert!(sent > 60, "{sent}");
    let status = within(Duration::from_secs(10), move || handle.join()).expect("join hung");
    let mut answers = 0;
    while rx.try_recv().unwrap().is_some() {
        answers += 1;
    }
    match status {
        Err(SandboxError::Unanswered { unread, .. }) => {
            assert!(unread > 0);
            assert_eq!(answers + unread, sent, "{answers} answers, {unread} unread");
        }
        other => panic!("{other:?} with {answers} of {sent} answered"),
    }
}

/// A callback guest's `_initialize` is bounded by the callback slice, as
/// every call of it is: `spawn` returns, with an error that says why.
#[test]
fn a_callback_initialize_that_never_returns_is_ended_by_its_slice() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "_initialize")
        (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)))
      (func (export "shmrt_on_messages") (result i32) (i32.const 0)))"#;
    let runtime = Arc::new(Runtime::new().unwrap());
    let mut opts = options("init", Execution::Callback);
    opts.timeout = None;
    opts.callback_slice = Some(Duration::from_millis(200));
    let spawned = within(Duration::from_secs(10), move || {
        runtime.spawn(wat.as_bytes(), opts).map(|_| ())
    })
    .expect("spawn never returned");
    match spawned {
        Err(SandboxError::Trap { message, .. }) => {
            assert!(message.contains("callback ran for more than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// One async poll runs at most one callback call that takes a while:
/// a callback that computes 150 ms a call (and moves its ring each time)
/// does not hold its executor's thread for four calls in a row.
#[test]
fn one_async_poll_runs_one_long_callback_call() {
    let layout = shmrt::primitives::SegmentLayout::compute(
        &shmrt::primitives::SegmentConfig::single_guest(),
    )
    .unwrap();
    let read_cursor = layout.h2g_ring_offset(0) + 64;
    let wat = format!(
        r#"(module
      (import "shmrt" "segment_base" (func $base (result i32)))
      (import "shmrt" "now_ns" (func $now (result i64)))
      (memory (export "memory") 1)
      (global $flip (mut i32) (i32.const 4))
      (func (export "shmrt_on_messages") (result i32)
        (local $until i64)
        (local.set $until (i64.add (call $now) (i64.const 150000000)))
        (loop $l (br_if $l (i64.lt_u (call $now) (local.get $until))))
        (global.set $flip (i32.xor (global.get $flip) (i32.const 12)))
        (i32.atomic.store (i32.add (call $base) (i32.const {read_cursor})) (global.get $flip))
        (i32.const 0)))"#
    );
    let runtime = Runtime::new().unwrap();
    let mut opts = options("busy", Execution::Callback);
    opts.timeout = None;
    let mut sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    sandbox.sender().send(b"go").unwrap();
    let mut longest = Duration::ZERO;
    let mut polls = 0;
    current_thread().block_on(async {
        let mut recv = std::pin::pin!(sandbox.receiver().recv_async());
        let timed = std::future::poll_fn(|cx| {
            let started = Instant::now();
            let polled = recv.as_mut().poll(cx).map(|m| m.map(|m| m.len()));
            longest = longest.max(started.elapsed());
            polls += 1;
            polled
        });
        let _ = tokio::time::timeout(Duration::from_millis(1500), timed).await;
    });
    assert!(
        longest < Duration::from_millis(400),
        "one poll ran for {longest:?} (a call takes 150 ms)"
    );
    assert!(polls >= 3, "{polls} polls");
}

/// A fiber suspended in a WASI call that does not return (opening a FIFO
/// nobody writes) is ended soon after a stop, not at its deadline.
#[test]
fn a_fiber_blocked_in_a_fifo_is_ended_by_a_stop() {
    let dir = common::TempDir::new("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Opens "fifo" in its first preopened directory (fd 3) and reads it.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_read"
        (func $read (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "fifo")
      (func (export "shmrt_main") (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        ;; rights: fd_read
        (drop (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 4)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 128)))
        (i32.store (i32.const 16) (i32.const 256))
        (i32.store (i32.const 20) (i32.const 16))
        (drop (call $read (i32.load (i32.const 128)) (i32.const 16) (i32.const 1) (i32.const 24)))
        (i32.const 0)))"#;
    let runtime = Runtime::new().unwrap();
    let mut opts = options("fifo", Execution::Fiber);
    opts.dirs = vec![(dir.to_path_buf(), "/d".into())];
    let sandbox = runtime.spawn(wat.as_bytes(), opts).unwrap();
    let (_tx, mut rx, handle) = sandbox.split();
    // Runs the guest into the blocking open.
    assert!(
        rx.recv_timeout(Some(Duration::from_millis(300)))
            .unwrap()
            .is_none()
    );
    handle.stop();
    let status = within(Duration::from_secs(10), move || handle.join());
    // Lets the blocked open (on a thread of wasmtime-wasi's) return.
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo);
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("join waited past the stop");
    assert!(
        matches!(status, Err(SandboxError::Stopped { .. })),
        "{status:?}"
    );
}
