//! The plugin contract against guests that lie and hosts that use it in
//! ways its first tests did not: replies to calls never made, a flood of
//! messages while a call waits with a timeout, a host function re-entering
//! its own guest through another sandbox, many calls pipelined from one
//! thread, a `Caller` after the guest trapped, `PendingCall`s dropped.
//! Each of these must end (no hang) with an answer that is true.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::guest;
use shmrt::primitives::call_header::{CallHeader, CallKind};
use shmrt::{
    CallError, Caller, Execution, HostFnError, HostFunctions, Runtime, SandboxError, SandboxOptions,
};

const MODES: [Execution; 3] = [Execution::Thread, Execution::Fiber, Execution::Callback];

fn options(name: &str, execution: Execution, functions: HostFunctions) -> SandboxOptions {
    let mut config = BTreeMap::new();
    config.insert("greeting".to_string(), "Salut".to_string());
    SandboxOptions {
        name: format!("{name}-{}", execution.name()),
        execution,
        timeout: Some(Duration::from_secs(60)),
        config: Arc::new(config),
        host_functions: Some(Arc::new(functions)),
        ..SandboxOptions::default()
    }
}

/// Runs `f` on a thread of its own and fails if it has not returned
/// within `limit` (a hang becomes a failure, not a stuck test run).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (a hang)"),
    }
}

/// A reply to call `id` saying `output`.
fn forged_reply(id: u64, output: &[u8]) -> Vec<u8> {
    let mut bytes = CallHeader {
        kind: CallKind::Reply,
        call_id: id,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(output);
    bytes
}

/// A guest that sends messages without pause (here, replies to calls
/// never made) keeps the host's receiver busy: a call with a timeout
/// still ends at its timeout, with `Sandbox::call_timeout` and with a
/// `Caller`'s `PendingCall::wait`.
#[test]
fn a_message_flood_does_not_outlast_a_calls_timeout() {
    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    let runtime = Runtime::new().unwrap();
    for caller in [false, true] {
        // Its own deadline ends the flood: a call that waits until then
        // gets the sandbox's end instead of its timeout.
        let mut opts = options("flood", Execution::Thread, HostFunctions::new());
        opts.timeout = Some(Duration::from_secs(5));
        let mut sandbox = runtime.spawn(&probe, opts).unwrap();
        // `lograce 0 0 N` sends N one-byte messages as fast as it can.
        sandbox.sender().send(b"lograce 0 0 1000000000").unwrap();
        let started = Instant::now();
        let result = if caller {
            let (caller, handle) = sandbox.into_caller();
            let out = within(Duration::from_secs(30), "Caller under a flood", move || {
                caller
                    .start("f", b"")
                    .unwrap()
                    .wait(Some(Duration::from_millis(300)))
            });
            let _ = handle.join();
            out
        } else {
            within(
                Duration::from_secs(30),
                "call_timeout under a flood",
                move || {
                    let out = sandbox.call_timeout("f", b"", Duration::from_millis(300));
                    let _ = sandbox.join();
                    out
                },
            )
        };
        let waited = started.elapsed();
        assert!(
            matches!(result, Err(CallError::Timeout { .. })),
            "caller {caller}: {result:?}"
        );
        assert!(
            waited < Duration::from_secs(15),
            "caller {caller}: {waited:?}"
        );
    }
}

/// Replies to calls the host never made are dropped: a reply sent ahead
/// for the id the next call will get is not taken for that call's reply,
/// and such replies are not kept (a guest could send any number).
#[test]
fn replies_to_calls_never_made_are_dropped() {
    let echo = std::fs::read(guest("examples/echo")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime
            .spawn(&echo, options("forged", mode, HostFunctions::new()))
            .unwrap();
        // The echo guest sends these back as if they were its replies (the
        // calls themselves come back as calls, which are not replies): for
        // ids 2 to 17, while the first call (id 1) waits.
        for id in 1..=16 {
            sandbox
                .sender()
                .send(&forged_reply(id + 1, b"forged"))
                .unwrap();
        }
        let (caller, handle) = sandbox.into_caller();
        let first = caller.start("f", b"").unwrap();
        let first_id = first.id();
        let r = first.wait(Some(Duration::from_millis(500)));
        assert!(
            matches!(r, Err(CallError::Timeout { .. })),
            "{mode:?}, call {first_id}: {r:?}"
        );
        let second = caller.start("f", b"").unwrap();
        let r = second.wait(Some(Duration::from_millis(500)));
        assert!(
            matches!(r, Err(CallError::Timeout { .. })),
            "{mode:?}: a reply sent before its call was believed: {r:?}"
        );
        caller.goodbye();
        let _ = within(Duration::from_secs(30), "join", move || handle.join());
    }
}

/// A host function of sandbox A calls sandbox B, whose host function
/// calls A back: A's guest is suspended in its host function, so that
/// call could never be answered. It is refused (`Reentrant`), as a direct
/// call into A is, when B runs on the same thread (callback, fiber).
#[test]
fn a_host_function_cannot_reenter_its_guest_through_another_sandbox() {
    let wasm = std::fs::read(guest("examples/text-tools")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode_a in MODES {
        let a_slot: Arc<OnceLock<Caller>> = Arc::new(OnceLock::new());
        let b_slot: Arc<OnceLock<Caller>> = Arc::new(OnceLock::new());
        // B's kv_get calls A's greet.
        let mut b_functions = HostFunctions::new();
        let a_in_b = Arc::clone(&a_slot);
        b_functions.define("kv_get", move |_, out| {
            let a = a_in_b.get().expect("set before the first call");
            let r = a
                .start("greet", b"me")
                .and_then(|p| p.wait(Some(Duration::from_secs(3))));
            match r {
                Err(CallError::Reentrant { .. }) => {
                    out.write(b"refused");
                    Ok(())
                }
                other => Err(HostFnError::new(1, format!("{other:?}"))),
            }
        });
        // A's kv_get calls B's lookup, which is B's kv_get.
        let mut a_functions = HostFunctions::new();
        let b_in_a = Arc::clone(&b_slot);
        a_functions.define("kv_get", move |_, out| {
            let b = b_in_a.get().expect("set before the first call");
            match b.call("lookup", b"k") {
                Ok(v) => {
                    out.write(&v);
                    Ok(())
                }
                Err(e) => Err(HostFnError::new(1, e.to_string())),
            }
        });
        let a = runtime
            .spawn(&wasm, options("reenter-a", mode_a, a_functions))
            .unwrap();
        let b = runtime
            .spawn(
                &wasm,
                options("reenter-b", Execution::Callback, b_functions),
            )
            .unwrap();
        let (a, a_handle) = a.into_caller();
        let (b, b_handle) = b.into_caller();
        a_slot.set(a.clone()).unwrap();
        b_slot.set(b.clone()).unwrap();
        let a2 = a.clone();
        let r = within(Duration::from_secs(60), "A -> B -> A", move || {
            a2.start("lookup", b"k")
                .unwrap()
                .wait(Some(Duration::from_secs(30)))
        });
        assert_eq!(
            r.as_deref().map_err(|e| e.to_string()),
            Ok(&b"refused"[..]),
            "A in {mode_a:?}"
        );
        a.goodbye();
        b.goodbye();
        assert_eq!(a_handle.join().unwrap(), 0, "{mode_a:?}");
        assert_eq!(b_handle.join().unwrap(), 0, "{mode_a:?}");
    }
}

/// One thread starts many calls before it waits for any (more than the
/// rings hold): the calls still complete, in every mode.
#[test]
fn many_calls_pipelined_from_one_thread_complete() {
    let wasm = std::fs::read(guest("examples/text-tools")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let sandbox = runtime
            .spawn(&wasm, options("pipeline", mode, HostFunctions::new()))
            .unwrap();
        let (caller, handle) = sandbox.into_caller();
        let n = 20_000;
        let c = caller.clone();
        let ok = within(Duration::from_secs(120), "pipelined calls", move || {
            let name = "x".repeat(200);
            let pending: Result<Vec<_>, _> = (0..n)
                .map(|i| c.start("greet", name.as_bytes()).map_err(|e| (i, e)))
                .collect();
            let pending: Vec<_> = match pending {
                Ok(p) => p,
                Err((i, e)) => return Err(format!("start {i}: {e:?}")),
            };
            Ok(pending
                .into_iter()
                .map(|p| p.wait(Some(Duration::from_secs(60))))
                .filter(Result::is_ok)
                .count())
        });
        let ok = match ok {
            Ok(ok) => ok,
            Err(e) => panic!("{mode:?}: {e}; the guest: {:?}", handle.join()),
        };
        assert_eq!(ok, n, "{mode:?}");
        caller.goodbye();
        assert_eq!(handle.join().unwrap(), 0, "{mode:?}");
    }
}

/// After the guest trapped, calls from several threads end with the
/// sandbox's error, never a hang; `PendingCall`s dropped in every state
/// leave the `Caller` usable.
#[test]
fn a_caller_after_a_trap_and_dropped_pending_calls_end() {
    let wasm = std::fs::read(guest("examples/text-tools")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let sandbox = runtime
            .spawn(&wasm, options("dropped", mode, HostFunctions::new()))
            .unwrap();
        let (caller, handle) = sandbox.into_caller();
        // Dropped before anyone read its reply.
        drop(caller.start("greet", b"a").unwrap());
        // Dropped after its reply was read for another call.
        let early = caller.start("greet", b"b").unwrap();
        assert_eq!(caller.call("greet", b"c").unwrap(), b"Salut, c!");
        drop(early);
        assert_eq!(caller.call("greet", b"d").unwrap(), b"Salut, d!");
        // Stopped while calls are in flight on several threads.
        let stop = handle.stop_handle();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = caller.clone();
                std::thread::spawn(move || {
                    // Calls until the stop ends them (the watchdog below
                    // fails the test if it never does).
                    while c.call("greet", b"e").is_ok() {}
                    // Once ended, every call says so.
                    c.call("greet", b"f")
                })
            })
            .collect();
        stop.stop();
        let results = within(Duration::from_secs(60), "calls after stop", move || {
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        });
        for r in results {
            assert!(matches!(r, Err(CallError::Sandbox(_))), "{mode:?}: {r:?}");
        }
        assert!(
            matches!(handle.join(), Err(SandboxError::Stopped { .. })),
            "{mode:?}"
        );
    }
}

/// A guest that stops reading its inbox: calls with a timeout keep ending
/// at their timeout once its ring is full (the send waits no longer than
/// the call may), instead of waiting for room until the sandbox's end.
#[test]
fn call_timeout_holds_when_the_guest_stops_reading() {
    let probe = std::fs::read(guest("runtime/tests/guests/probe")).unwrap();
    let runtime = Runtime::new().unwrap();
    let mut opts = options("deaf", Execution::Thread, HostFunctions::new());
    opts.timeout = Some(Duration::from_secs(20));
    let mut sandbox = runtime.spawn(&probe, opts).unwrap();
    sandbox.sender().send(b"spin").unwrap();
    let input = vec![b'x'; 1000];
    let outcomes = within(
        Duration::from_secs(60),
        "calls to a deaf guest",
        move || {
            let mut outcomes = Vec::new();
            // Far more than its ring holds.
            for _ in 0..300 {
                let started = Instant::now();
                let r = sandbox.call_timeout("f", &input, Duration::from_millis(10));
                outcomes.push((started.elapsed(), r.map_err(|e| e.to_string())));
            }
            outcomes
        },
    );
    for (i, (took, r)) in outcomes.iter().enumerate() {
        assert!(
            r.as_ref().is_err_and(|e| e.contains("no reply")),
            "call {i}: {r:?}"
        );
        assert!(*took < Duration::from_secs(2), "call {i} took {took:?}");
    }
}

/// A host function that blocks past the sandbox's deadline: native code
/// can not be interrupted, but once it returns the guest ends with its
/// timeout (it runs no further), in every mode, and `close` returns.
#[test]
fn a_blocking_host_function_delays_but_does_not_defeat_the_deadline() {
    let wasm = std::fs::read(guest("examples/text-tools")).unwrap();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut functions = HostFunctions::new();
        functions.define("kv_get", |_, out| {
            std::thread::sleep(Duration::from_millis(1500));
            out.write(b"late");
            Ok(())
        });
        let mut opts = options("blocking", mode, functions);
        opts.timeout = Some(Duration::from_millis(300));
        let mut sandbox = runtime.spawn(&wasm, opts).unwrap();
        let (r, closed, took) = within(Duration::from_secs(30), "blocked host fn", move || {
            let started = Instant::now();
            let r = sandbox.call("lookup", b"k");
            let closed = sandbox.close(Duration::from_millis(100));
            (r, closed, started.elapsed())
        });
        // The call sees the end (`Closed` on a thread of its own, the
        // timeout itself on the host's thread); `close` says why.
        assert!(matches!(r, Err(CallError::Sandbox(_))), "{mode:?}: {r:?}");
        assert!(
            matches!(closed, Err(SandboxError::Timeout { .. })),
            "{mode:?}: {closed:?}"
        );
        assert!(took < Duration::from_secs(10), "{mode:?}: {took:?}");
    }
}
