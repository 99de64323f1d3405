//! Tells the crate whether wasm atomics are on. On stable Rust `atomics`
//! is an unstable target feature, so `cfg(target_feature = "atomics")` is
//! never set even when the flag is given and the instructions are emitted;
//! the flag itself is the only reliable witness.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shmrt_guest_atomics)");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let mut atomics = false;
    let mut parts = flags.split('\x1f').peekable();
    while let Some(part) = parts.next() {
        let features = if part == "-C" {
            parts.next().and_then(|p| p.strip_prefix("target-feature="))
        } else {
            part.strip_prefix("-Ctarget-feature=")
        };
        for f in features.into_iter().flat_map(|f| f.split(',')) {
            match f.trim() {
                "+atomics" => atomics = true,
                "-atomics" => atomics = false,
                _ => {}
            }
        }
    }
    if atomics {
        println!("cargo::rustc-cfg=shmrt_guest_atomics");
    }
}
