//! A native program that uses a plugin as an Extism user would: it calls
//! the plugin's exported functions by name (examples/text-tools), gives it
//! configuration, lends it a host function (a small key-value store), gets
//! a plugin error back as an error, and calls it from several threads at
//! once.
//!
//! Run:
//!
//! ```sh
//! cargo build --release --locked -p shmrt-cli -p shmrt --bin shmrt --examples
//! target/release/examples/calls-host $(target/release/shmrt build examples/text-tools)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmrt::{CallError, HostFnError, HostFunctions, Runtime, SandboxOptions};

fn main() -> anyhow::Result<()> {
    let plugin = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: calls-host PLUGIN.wasm (examples/text-tools)"))?;

    // A key-value store the plugin reads through the host function
    // `kv_get`: the key is read in place in the plugin's memory.
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    store
        .lock()
        .unwrap()
        .insert(b"user:42".to_vec(), b"Ada Lovelace".to_vec());
    let mut functions = HostFunctions::new();
    let kv = Arc::clone(&store);
    functions.define("kv_get", move |key, out| {
        let key = key.to_vec();
        match kv.lock().unwrap().get(&key) {
            Some(value) => {
                out.write(value);
                Ok(())
            }
            None => Err(HostFnError::new(
                404,
                format!("no key {}", String::from_utf8_lossy(&key)),
            )),
        }
    });

    let mut config = BTreeMap::new();
    config.insert("greeting".to_string(), "Bonjour".to_string());
    let options = SandboxOptions {
        name: "text-tools".into(),
        config: Arc::new(config),
        host_functions: Some(Arc::new(functions)),
        timeout: Some(Duration::from_secs(60)),
        ..SandboxOptions::default()
    };
    let runtime = Runtime::new()?;
    let mut sandbox = runtime.spawn_file(plugin.as_ref(), options)?;
    println!("execution mode: {}", sandbox.execution().name());

    let report = sandbox.call("count_vowels", b"Hello, World")?;
    println!("count_vowels -> {}", String::from_utf8_lossy(&report));
    let report = sandbox.call("count_vowels", b"state is kept across calls")?;
    println!("count_vowels -> {}", String::from_utf8_lossy(&report));
    let greeting = sandbox.call("greet", b"Grace")?;
    println!("greet (config) -> {}", String::from_utf8_lossy(&greeting));
    let user = sandbox.call("lookup", b"user:42")?;
    println!(
        "lookup (host function) -> {}",
        String::from_utf8_lossy(&user)
    );
    match sandbox.call("checked_div", br#"{"num": 1, "den": 0}"#) {
        Err(CallError::Plugin { code, message, .. }) => {
            println!("checked_div -> plugin error {code}: {message}")
        }
        other => anyhow::bail!("checked_div by zero should fail, got {other:?}"),
    }

    // Many threads, several calls in flight each, every reply matched to
    // its call.
    let (caller, handle) = sandbox.into_caller();
    let started = Instant::now();
    let calls_per_thread = 2_000;
    std::thread::scope(|s| {
        for t in 0..4 {
            let caller = caller.clone();
            s.spawn(move || {
                for i in 0..calls_per_thread / 4 {
                    let names: Vec<String> = (0..4).map(|k| format!("t{t}-{i}-{k}")).collect();
                    let pending: Vec<_> = names
                        .iter()
                        .map(|n| caller.start("greet", n.as_bytes()).expect("send"))
                        .collect();
                    for (name, call) in names.iter().zip(pending) {
                        let out = call.wait(None).expect("reply");
                        assert_eq!(out, format!("Bonjour, {name}!").into_bytes());
                    }
                }
            });
        }
    });
    let n = 4 * calls_per_thread;
    println!(
        "{n} calls from 4 threads, every reply matched: {:.2?} ({:.0} ns a call)",
        started.elapsed(),
        started.elapsed().as_nanos() as f64 / n as f64
    );
    caller.goodbye();
    println!("plugin exited with {}", handle.join()?);
    Ok(())
}
