//! A native program that embeds the shmrt runtime: it spawns a plugin in a
//! sandbox, sends it a short message (inline in the ring) and a large one
//! (written in place into a slot), reads the replies in place, says
//! goodbye and reports the plugin's exit status.
//!
//! Run:
//!
//! ```sh
//! cargo build --release --locked -p shmrt-cli -p shmrt --bin shmrt --examples
//! target/release/examples/embed $(target/release/shmrt build examples/upper)
//! ```

use std::time::Instant;

use shmrt::{Runtime, SandboxOptions};

fn main() -> anyhow::Result<()> {
    let plugin = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: embed PLUGIN.wasm"))?;
    let runtime = Runtime::new()?;
    let mut sandbox = runtime.spawn_file(plugin.as_ref(), SandboxOptions::default())?;

    sandbox.sender().send(b"hello from the host")?;
    let reply = sandbox.receiver().recv()?;
    println!(
        "short reply ({}): {}",
        if reply.is_slot() { "slot" } else { "inline" },
        // Copied out before decoding: the guest may rewrite its bytes.
        String::from_utf8_lossy(&reply.to_vec())
    );
    drop(reply);

    // 512 KiB written straight into slot memory inside the guest's window.
    let len = 512 * 1024;
    let start = Instant::now();
    sandbox.sender().send_with(len, |mut buf| {
        // Written through the view, a 26-byte pattern at a time: the
        // bytes are in the guest's window, never a plain `&mut [u8]`.
        let alphabet: Vec<u8> = (b'a'..=b'z').collect();
        for at in (0..len).step_by(26) {
            let n = (len - at).min(26);
            buf.write_at(at, &alphabet[..n]);
        }
    })?;
    let reply = sandbox.receiver().recv()?;
    let elapsed = start.elapsed();
    let upper = reply
        .bytes()
        .iter()
        .filter(|b| b.is_ascii_uppercase())
        .count();
    println!(
        "large reply ({}): {} bytes, {upper} upper-case, round trip {elapsed:?}",
        if reply.is_slot() { "slot" } else { "inline" },
        reply.len()
    );
    drop(reply);

    sandbox.sender().goodbye();
    let status = sandbox.join()?;
    println!("plugin exited with status {status}");
    Ok(())
}
