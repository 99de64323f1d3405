//! `shmrt new NAME`: scaffolds a plugin crate that builds with
//! `shmrt build` and runs with `shmrt run` as it is, and whose handler has
//! a test that `cargo test` runs on the host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use super::Failure;

#[derive(Args)]
pub struct NewCommand {
    /// The plugin's name: a new directory of that name is created.
    name: PathBuf,
}

/// Where this shmrt's guest SDK lives (the checkout it was built from).
fn sdk_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    p.canonicalize().unwrap_or(p)
}

impl NewCommand {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        scaffold(&self.name)?;
        let dir = self.name.display();
        println!("created plugin {dir}");
        println!("next:");
        println!("  cd {dir} && cargo test            # the handler's test, on the host");
        println!("  printf 'hello\\n' | shmrt run $(shmrt build .)");
        Ok(ExitCode::SUCCESS)
    }
}

fn scaffold(dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name for a crate", dir.display()))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "`{name}` is not a valid crate name: use letters, digits, `-` and `_`, not starting with a digit"
        );
    }
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let sdk = sdk_path();
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "the guest SDK is not at {} (this shmrt was built elsewhere); point the new crate's \
             `shmrt-guest` dependency at your checkout's guest-sdk/",
            sdk.display()
        );
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    write(
        &dir.join("Cargo.toml"),
        &format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the plugin; rlib: so that `cargo test` can test the handler on the host.
crate-type = ["cdylib", "rlib"]

[dependencies]
shmrt-guest = {{ path = "{sdk}", features = ["panic-handler"] }}

[profile.dev]
panic = "abort"

[profile.release]
panic = "abort"

[workspace]
"#
        ),
    )?;
    write(
        &dir.join(".cargo/config.toml"),
        r#"# shmrt plugins need wasm atomics, or a plugin polling its ring can hang
# forever. `shmrt build` sets these flags too; `cargo test` runs on the host.
[target.wasm32-unknown-unknown]
rustflags = ["-C", "target-feature=+atomics,+bulk-memory"]

[target.wasm32-wasip1]
rustflags = ["-C", "target-feature=+atomics,+bulk-memory"]
"#,
    )?;
    write(
        &dir.join("src/lib.rs"),
        &format!(
            r#"//! {name}: a shmrt plugin. Each message from the host is answered with
//! the same bytes reversed, written in place into the reply.
//!
//! Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
//! Test:           cargo test
#![cfg_attr(target_family = "wasm", no_std)]

use shmrt_guest::Channel;

/// The handler: fills `reply` (as long as `request`) from `request`.
pub fn handle(request: &[u8], reply: &mut [u8]) {{
    for (out, byte) in reply.iter_mut().zip(request.iter().rev()) {{
        *out = *byte;
    }}
}}

fn run(channel: Channel) -> i32 {{
    channel.serve(|request, outbox| outbox.send_with(request.len(), |reply| handle(request, reply)))
}}

shmrt_guest::entry!(run);

#[cfg(test)]
mod tests {{
    #[test]
    fn reverses_the_request() {{
        let mut reply = [0u8; 5];
        super::handle(b"hello", &mut reply);
        assert_eq!(&reply, b"olleh");
    }}
}}
"#
        ),
    )?;
    write(&dir.join(".gitignore"), "/target\nCargo.lock\n")?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
