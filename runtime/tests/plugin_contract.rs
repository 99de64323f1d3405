//! The plugin contract, in every execution mode: calls by name with typed
//! input and output, a plugin's errors, configuration, host functions and
//! state kept across calls (examples/text-tools), and the hostile cases:
//! unknown names, lying pointers and lengths, panicking host functions,
//! a host function calling back into its own guest, calls after goodbye.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::guest;
use shmrt::{
    CallError, Caller, Execution, HostFnError, HostFunctions, Runtime, SandboxError,
    SandboxOptions, call_codes,
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

/// `kv_get` knows one key, fails on others, panics on `boom`.
fn kv() -> HostFunctions {
    let mut functions = HostFunctions::new();
    functions.define("kv_get", |key, out| match key.to_vec().as_slice() {
        b"user:42" => {
            out.write(b"Ada Lovelace");
            Ok(())
        }
        b"big" => {
            // Larger than the SDK's first buffer: goes through host-result.
            out.write(&vec![b'x'; 100_000]);
            Ok(())
        }
        b"boom" => panic!("the store is on fire"),
        other => Err(HostFnError::new(
            404,
            format!("no key {}", String::from_utf8_lossy(other)),
        )),
    });
    functions
}

fn text_tools() -> Vec<u8> {
    std::fs::read(guest("examples/text-tools")).unwrap()
}

#[test]
fn calls_by_name_carry_input_output_errors_config_and_state_in_every_mode() {
    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime
            .spawn(&wasm, options("text-tools", mode, kv()))
            .unwrap();
        assert_eq!(sandbox.execution(), mode);

        let first = sandbox.call("count_vowels", b"Hello, World").unwrap();
        assert_eq!(
            String::from_utf8(first).unwrap(),
            r#"{"vowels":3,"chars":12,"total_vowels":3}"#,
            "{mode:?}"
        );
        // State kept across calls.
        let second = sandbox.call("count_vowels", b"aeiou").unwrap();
        assert!(
            String::from_utf8(second)
                .unwrap()
                .ends_with(r#""total_vowels":8}"#),
            "{mode:?}"
        );
        // Configuration, read without WASI.
        assert_eq!(sandbox.call("greet", b"Grace").unwrap(), b"Salut, Grace!");
        // A host function, synchronous in every mode.
        assert_eq!(sandbox.call("lookup", b"user:42").unwrap(), b"Ada Lovelace");
        assert_eq!(sandbox.call("lookup", b"big").unwrap().len(), 100_000);
        // The host function's error reaches the plugin, whose error
        // reaches the host.
        match sandbox.call("lookup", b"user:7") {
            Err(CallError::Plugin { code, message, .. }) => {
                assert_eq!(code, 2, "{mode:?}");
                assert!(
                    message.contains("404") && message.contains("no key user:7"),
                    "{message}"
                );
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        // A panicking host function is an error for the guest, not a crash.
        match sandbox.call("lookup", b"boom") {
            Err(CallError::Plugin { message, .. }) => {
                assert!(message.contains("the store is on fire"), "{message}")
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        // A plugin error, typed JSON input.
        assert_eq!(
            sandbox
                .call("checked_div", br#"{"num":84,"den":2}"#)
                .unwrap(),
            b"42"
        );
        let err = sandbox
            .call("checked_div", br#"{"num":1,"den":0}"#)
            .unwrap_err();
        assert_eq!(err.plugin_code(), Some(22), "{err}");
        assert!(err.to_string().contains("division by zero"), "{err}");
        // Input the function's type refuses.
        let err = sandbox.call("checked_div", b"not json").unwrap_err();
        assert_eq!(err.plugin_code(), Some(call_codes::BAD_INPUT), "{err}");
        let err = sandbox.call("greet", &[0xff, 0xfe]).unwrap_err();
        assert_eq!(err.plugin_code(), Some(call_codes::BAD_INPUT), "{err}");
        // Names: unknown, empty, too long.
        let err = sandbox.call("no_such_thing", b"").unwrap_err();
        assert_eq!(err.plugin_code(), Some(call_codes::NO_SUCH_EXPORT));
        assert!(
            err.to_string()
                .contains("count_vowels, greet, lookup, checked_div"),
            "{err}"
        );
        assert!(matches!(
            sandbox.call("", b""),
            Err(CallError::BadName { .. })
        ));
        assert!(matches!(
            sandbox.call(&"f".repeat(256), b""),
            Err(CallError::BadName { .. })
        ));
        // The plugin still answers after all of that.
        assert_eq!(sandbox.call("greet", b"again").unwrap(), b"Salut, again!");
        assert_eq!(
            sandbox.close(Duration::from_secs(10)).unwrap(),
            0,
            "{mode:?}"
        );
    }
}

/// Several threads call one sandbox at once, several calls in flight
/// each: every reply reaches its own caller.
#[test]
fn calls_from_many_threads_are_matched_to_their_callers() {
    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let sandbox = runtime
            .spawn(&wasm, options("pipelined", mode, kv()))
            .unwrap();
        let (caller, handle) = sandbox.into_caller();
        std::thread::scope(|s| {
            for t in 0..4 {
                let caller = caller.clone();
                s.spawn(move || {
                    for round in 0..25 {
                        let names: Vec<String> =
                            (0..4).map(|i| format!("t{t}r{round}i{i}")).collect();
                        let pending: Vec<_> = names
                            .iter()
                            .map(|n| caller.start("greet", n.as_bytes()).unwrap())
                            .collect();
                        for (name, call) in names.iter().zip(pending).rev() {
                            let out = call.wait(Some(Duration::from_secs(30))).unwrap();
                            assert_eq!(out, format!("Salut, {name}!").into_bytes(), "{mode:?}");
                        }
                    }
                });
            }
        });
        // An abandoned call's reply does not reach the next caller.
        drop(caller.start("greet", b"dropped").unwrap());
        assert_eq!(caller.call("greet", b"kept").unwrap(), b"Salut, kept!");
        caller.goodbye();
        assert_eq!(handle.join().unwrap(), 0, "{mode:?}");
        // After the end, a call says why instead of waiting.
        assert!(matches!(
            caller.call("greet", b"late"),
            Err(CallError::Sandbox(_))
        ));
    }
}

/// A host function that calls into its own sandbox is refused (its guest
/// is waiting for that very function), in every mode, without a hang.
#[test]
fn a_host_function_cannot_call_its_own_guest() {
    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let own: Arc<OnceLock<Caller>> = Arc::new(OnceLock::new());
        let mut functions = HostFunctions::new();
        let inside = Arc::clone(&own);
        functions.define("kv_get", move |_, out| {
            let caller = inside.get().expect("set before the first call");
            match caller.call("greet", b"me") {
                Err(CallError::Reentrant { .. }) => {
                    out.write(b"refused");
                    Ok(())
                }
                other => Err(HostFnError::new(1, format!("{other:?}"))),
            }
        });
        let sandbox = runtime
            .spawn(&wasm, options("reentrant", mode, functions))
            .unwrap();
        let (caller, handle) = sandbox.into_caller();
        own.set(caller.clone()).unwrap();
        assert_eq!(caller.call("lookup", b"k").unwrap(), b"refused", "{mode:?}");
        caller.goodbye();
        assert_eq!(handle.join().unwrap(), 0);
    }
}

/// Lying pointers and lengths to the new imports are refused with a code,
/// never a host crash or an out-of-bounds access; an output too large for
/// the guest's buffer waits in `host-result`.
#[test]
fn hostile_arguments_to_the_contract_imports_are_refused() {
    let wat = r#"(module
      (import "shmrt" "host_call" (func $hc (param i32 i32 i32 i32 i32 i32) (result i64)))
      (import "shmrt" "config_get" (func $cg (param i32 i32 i32 i32) (result i64)))
      (import "shmrt" "host_result" (func $hr (param i32 i32) (result i64)))
      (memory (export "memory") 1)
      (data (i32.const 0) "echo")
      (data (i32.const 16) "boom")
      (data (i32.const 32) "greeting")
      (func $checks (result i32)
        (drop (i32.atomic.load (i32.const 0)))
        ;; the input runs past the end of memory (it grew for the segment)
        (if (i64.ne (call $hc (i32.const 0) (i32.const 4) (i32.const -200) (i32.const 100)
                              (i32.const 100) (i32.const 10)) (i64.const -4))
          (then (return (i32.const 1))))
        ;; the output's range wraps around the address space
        (if (i64.ne (call $hc (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0)
                              (i32.const -1) (i32.const 2)) (i64.const -4))
          (then (return (i32.const 2))))
        ;; a name of 4 GiB
        (if (i64.ne (call $hc (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0)
                              (i32.const 0) (i32.const 0)) (i64.const -4))
          (then (return (i32.const 3))))
        ;; no such function
        (if (i64.ne (call $hc (i32.const 1) (i32.const 3) (i32.const 0) (i32.const 0)
                              (i32.const 0) (i32.const 0)) (i64.const -1))
          (then (return (i32.const 4))))
        ;; input and output overlap, the output does not fit: kept
        (if (i64.ne (call $hc (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4)
                              (i32.const 2) (i32.const 2)) (i64.const 4))
          (then (return (i32.const 5))))
        (if (i64.ne (call $hr (i32.const 200) (i32.const 10)) (i64.const 4))
          (then (return (i32.const 6))))
        (if (i32.ne (i32.load (i32.const 200)) (i32.const 0x6f686365))
          (then (return (i32.const 7))))
        (if (i64.ne (call $hr (i32.const 200) (i32.const 10)) (i64.const -1))
          (then (return (i32.const 8))))
        ;; config: the output past the end; then a real read
        (if (i64.ne (call $cg (i32.const 32) (i32.const 8) (i32.const -2) (i32.const 2))
                    (i64.const -4))
          (then (return (i32.const 9))))
        (if (i64.ne (call $cg (i32.const 32) (i32.const 8) (i32.const 300) (i32.const 2))
                    (i64.const 5))
          (then (return (i32.const 10))))
        ;; a panicking host function
        (if (i64.ne (call $hc (i32.const 16) (i32.const 4) (i32.const 0) (i32.const 0)
                              (i32.const 0) (i32.const 0)) (i64.const -3))
          (then (return (i32.const 11))))
        (i32.const 0))
      (func (export "shmrt_main") (result i32) (call $checks))
      (func (export "shmrt_on_messages") (result i32) (call $checks)))"#;
    let mut functions = HostFunctions::new();
    functions.define("echo", |input, out| {
        out.write(&input.to_vec());
        Ok(())
    });
    functions.define("boom", |_, _| panic!("hostile test panic"));
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime
            .spawn(
                wat.as_bytes(),
                options("hostile-imports", mode, functions.clone()),
            )
            .unwrap();
        // A callback runs when there is a message. A thread guest runs its
        // checks at once and may have returned before this send.
        match sandbox.sender().send(b"go") {
            Ok(()) => {}
            Err(SandboxError::Closed { .. }) if mode == Execution::Thread => {}
            Err(e) => panic!("{mode:?}: sending: {e}"),
        }
        sandbox.sender().goodbye();
        match sandbox.join() {
            Ok(0) => {}
            // The callback reads no message: it ran its checks and left
            // "go" unread, which is all the host can say against it.
            Err(SandboxError::Unanswered { .. }) if mode == Execution::Callback => {}
            other => panic!("{mode:?}: the check that failed: {other:?}"),
        }
    }
}

/// A configuration over the limit is refused at spawn, naming the limit.
#[test]
fn oversized_configuration_is_refused_at_spawn() {
    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    let mut opts = options("big-config", Execution::Thread, HostFunctions::new());
    let mut config = BTreeMap::new();
    config.insert("blob".to_string(), "x".repeat(shmrt::MAX_CONFIG_BYTES + 1));
    opts.config = Arc::new(config);
    let err = runtime.spawn(&wasm, opts).unwrap_err();
    assert!(err.to_string().contains("config is"), "{err}");
    assert!(err.to_string().contains("big-config"), "{err}");
}

/// A call after goodbye gets the sandbox's end, not a hang.
#[test]
fn a_call_after_goodbye_reports_the_end() {
    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let mut sandbox = runtime
            .spawn(&wasm, options("after-goodbye", mode, kv()))
            .unwrap();
        sandbox.sender().goodbye();
        match sandbox.call_timeout("greet", b"x", Duration::from_secs(20)) {
            Err(CallError::Sandbox(SandboxError::Closed { .. })) => {}
            // A callback guest may still answer what reached its ring
            // before it saw the goodbye.
            Ok(out) => assert_eq!(out, b"Salut, x!"),
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}

/// A host function that waits on its own sandbox's channel is refused
/// (its guest is suspended in that host function: on the host's thread
/// the guest's driver is held by the very call that runs the host
/// function; on a thread of its own the guest could not free room),
/// without a hang, in every mode. The host function fills its guest's
/// inbox until a send would have to wait.
#[test]
fn a_host_function_cannot_wait_on_its_own_channel() {
    use std::sync::Mutex;

    use shmrt::HostSender;

    let wasm = text_tools();
    let runtime = Runtime::new().unwrap();
    for mode in MODES {
        let own: Arc<Mutex<Option<HostSender>>> = Arc::new(Mutex::new(None));
        let mut functions = HostFunctions::new();
        let inside = Arc::clone(&own);
        functions.define("kv_get", move |_, out| {
            let mut sender = inside.lock().unwrap();
            let sender = sender.as_mut().expect("set before the call");
            for _ in 0..100_000 {
                match sender.send(&[b'x'; 1000]) {
                    Ok(()) => {}
                    Err(SandboxError::Reentrant { .. }) => {
                        out.write(b"refused");
                        return Ok(());
                    }
                    Err(e) => return Err(HostFnError::new(1, e.to_string())),
                }
            }
            Err(HostFnError::new(1, "the inbox never filled"))
        });
        let sandbox = runtime
            .spawn(&wasm, options("own-channel", mode, functions))
            .unwrap();
        let (tx, mut rx, handle) = sandbox.split();
        let mut call = vec![0u8; shmrt::primitives::call_header::call_len(6, 1)];
        let at = shmrt::primitives::call_header::write_call(&mut call, 9, "lookup").unwrap();
        call[at] = b'k';
        // Handed over before the call can run (a thread guest takes it
        // at once): the host function waits for the lock until then.
        own.lock().unwrap().insert(tx).send(&call).unwrap();
        let reply = rx
            .recv_timeout(Some(Duration::from_secs(30)))
            .unwrap()
            .expect("a reply")
            .to_vec();
        assert!(
            reply.ends_with(b"refused"),
            "{mode:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        own.lock().unwrap().as_mut().unwrap().goodbye();
        while rx
            .recv_timeout(Some(Duration::from_secs(30)))
            .is_ok_and(|m| m.is_some())
        {}
        assert_eq!(handle.join().unwrap(), 0, "{mode:?}");
    }
}
