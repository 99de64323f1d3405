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
    /// The guest SDK the plugin depends on (by path): a `guest-sdk`
    /// directory with `primitives` next to it, or a directory that holds
    /// both (a checkout of shmrt, or an installed SDK). Default: the SDK
    /// installed next to this binary (PREFIX/share/shmrt/sdk for
    /// PREFIX/bin/shmrt), else the source tree this shmrt was built from.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
    /// A std plugin: built for wasm32-wasip1, with the standard library
    /// (String, Vec, HashMap, format!) and WASI (env, clocks, `--dir`
    /// files). Still a `cdylib` whose handler the SDK exports: no `main`.
    #[arg(long)]
    std: bool,
    /// The plugin's language: `rust` (a crate), `c` or `zig` (built with
    /// Zig against the SDK's C ABI, `pip install ziglang`).
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Lang {
    Rust,
    C,
    Zig,
}

/// The guest SDK `shmrt new` and `shmrt build` use: `sdk` when given,
/// else the one installed next to this binary, else the source tree.
pub(super) fn find_sdk(sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    match sdk {
        Some(path) => sdk_at(path).context("--sdk"),
        None => default_sdk(
            std::env::current_exe().ok().as_deref(),
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        ),
    }
}

/// Where an installed SDK lives, relative to the directory of the binary.
const SHIPPED_SDK: &str = "../share/shmrt/sdk";

impl NewCommand {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        let sdk = find_sdk(self.sdk.as_deref())?;
        if self.lang != Lang::Rust {
            if self.std {
                return Err(anyhow::anyhow!(
                    "--std is for Rust plugins; a C plugin gets a libc with `libc = \"wasi\"` in \
                     its shmrt.toml"
                )
                .into());
            }
            scaffold_native(&self.name, &sdk, self.lang)?;
            let dir = self.name.display();
            println!(
                "created {} plugin {dir}",
                if self.lang == Lang::C { "C" } else { "Zig" }
            );
            println!("next:");
            if self.lang == Lang::C {
                // After the `cd`, the plugin is `.`.
                println!("  cd {dir} && ./test.sh              # the handler's test, native");
                println!("  printf 'hello\\n' | shmrt run $(shmrt build .)");
            } else {
                println!("  printf 'hello\\n' | shmrt run $(shmrt build {dir})");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let kind = if self.std { Kind::Std } else { Kind::NoStd };
        scaffold(&self.name, &sdk, kind)?;
        let dir = self.name.display();
        println!("created plugin {dir} (guest SDK: {})", sdk.display());
        println!("next:");
        println!("  cd {dir} && cargo test            # the handler's test, on the host");
        println!("  printf 'hello\\n' | shmrt run $(shmrt build .)");
        Ok(ExitCode::SUCCESS)
    }
}

/// The guest SDK a new plugin gets when `--sdk` is not given: the one
/// installed next to the binary `exe`, else the one in `source_tree` (the
/// checkout this shmrt was built from) if it is still there.
fn default_sdk(exe: Option<&Path>, source_tree: &Path) -> anyhow::Result<PathBuf> {
    let shipped = exe.and_then(Path::parent).map(|bin| bin.join(SHIPPED_SDK));
    if let Some(shipped) = &shipped
        && shipped.is_dir()
    {
        return sdk_at(shipped).with_context(|| {
            format!(
                "the SDK installed next to this shmrt, {}; give another with `--sdk PATH`",
                shipped.display()
            )
        });
    }
    if source_tree.join("guest-sdk/Cargo.toml").is_file() {
        return sdk_at(source_tree);
    }
    let shipped = shipped.map_or_else(
        || format!("<this binary's directory>/{SHIPPED_SDK}"),
        |p| p.display().to_string(),
    );
    bail!(
        "no guest SDK found: none is installed next to this shmrt ({shipped}), and the source \
         tree it was built from ({}) is gone; give one with `--sdk PATH` (a shmrt checkout, or a \
         copy of its guest-sdk/ and primitives/ directories)",
        source_tree.display()
    )
}

/// The guest SDK crate at `path`: `path` itself when it is the
/// `shmrt-guest` crate, else its `guest-sdk` subdirectory. Checked to be
/// that crate with `primitives` next to it (its path dependency), and made
/// absolute, as the plugin's manifest names it.
fn sdk_at(path: &Path) -> anyhow::Result<PathBuf> {
    let crate_dir = if package_name(path).as_deref() == Some("shmrt-guest") {
        path.to_path_buf()
    } else {
        path.join("guest-sdk")
    };
    if package_name(&crate_dir).as_deref() != Some("shmrt-guest") {
        bail!(
            "{} is not the guest SDK: neither it nor its guest-sdk/ is the `shmrt-guest` crate",
            path.display()
        );
    }
    let primitives = crate_dir.join("../primitives/Cargo.toml");
    if !primitives.is_file() {
        bail!(
            "the guest SDK at {} has no primitives/ next to it (its path dependency \
             `shmrt-primitives`): copy both directories",
            crate_dir.display()
        );
    }
    crate_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", crate_dir.display()))
}

/// `package.name` of the crate in `dir`, if it has a readable manifest.
fn package_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let manifest: toml::Table = text.parse().ok()?;
    Some(manifest.get("package")?.get("name")?.as_str()?.to_string())
}

/// What a new plugin is built as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `no_std`, for wasm32-unknown-unknown: the smallest plugin.
    NoStd,
    /// With the standard library, for wasm32-wasip1.
    Std,
}

fn scaffold(dir: &Path, sdk: &Path, kind: Kind) -> anyhow::Result<()> {
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
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    // A TOML string, quoted and escaped.
    let sdk = toml::Value::from(
        sdk.to_str()
            .with_context(|| format!("the SDK's path {} is not UTF-8", sdk.display()))?,
    );
    let (sdk_features, metadata) = match kind {
        // A no_std plugin has no panic handler of its own.
        Kind::NoStd => (", features = [\"panic-handler\"]", ""),
        Kind::Std => (
            "",
            "\n# `shmrt build` builds for this target; `cargo test` stays on the host.\n\
             [package.metadata.shmrt]\ntarget = \"wasm32-wasip1\"\n",
        ),
    };
    write(
        &dir.join("Cargo.toml"),
        &format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false
{metadata}
[lib]
# cdylib: the plugin; rlib: so that `cargo test` can test the handler on the host.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The shmrt guest SDK, by path (`shmrt new --sdk PATH` chooses another).
shmrt-guest = {{ path = {sdk}{sdk_features} }}

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
    let source = match kind {
        Kind::NoStd => no_std_source(name),
        Kind::Std => std_source(name),
    };
    write(&dir.join("src/lib.rs"), &source)?;
    write(&dir.join(".gitignore"), "/target\nCargo.lock\n")?;
    Ok(())
}

/// The handler of a new no_std plugin: writes its reply in place.
fn no_std_source(name: &str) -> String {
    format!(
        r#"//! {name}: a shmrt plugin. Each message from the host is answered with
//! the same bytes reversed, written in place into the reply.
//!
//! Defined by its message handler, it runs in every execution mode of the
//! host (`shmrt run --exec thread|fiber|callback`; a callback by default).
//!
//! Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
//! Test:           cargo test
#![cfg_attr(target_family = "wasm", no_std)]

use shmrt_guest::{{Message, Outbox, SendError}};

/// The handler: fills `reply` (as long as `request`) from `request`.
pub fn handle(request: &[u8], reply: &mut [u8]) {{
    for (out, byte) in reply.iter_mut().zip(request.iter().rev()) {{
        *out = *byte;
    }}
}}

/// Answers each message from the host.
fn answer(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {{
    let request = msg.as_bytes();
    outbox.send_with(request.len(), |reply| handle(request, reply))
}}

shmrt_guest::handler!(answer);

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
    )
}

/// The handler of a new std plugin: the standard library is there, and
/// `shmrt_guest::handler!` exports the entry points (no `main`: a std
/// plugin is a `cdylib` too, a WASI reactor whose `_initialize` shmrt
/// runs first).
fn std_source(name: &str) -> String {
    format!(
        r#"//! {name}: a shmrt plugin with the standard library (wasm32-wasip1).
//! Each message from the host is answered with its text reversed
//! character by character, followed by a count of the messages so far.
//!
//! Defined by its message handler, it runs in every execution mode of the
//! host (`shmrt run --exec thread|fiber|callback`; a callback by default).
//! WASI is there: `std::env::var` reads `shmrt run --env K=V`, files under
//! `--dir` open with `std::fs`; `println!` lines go to shmrt's log on
//! stderr (stdout carries the messages).
//!
//! Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
//! Test:           cargo test

use std::sync::atomic::{{AtomicU64, Ordering}};

use shmrt_guest::{{Message, Outbox, SendError}};

/// Messages answered so far.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// The handler: the reply to `request`, the `n`th message.
pub fn handle(request: &[u8], n: u64) -> String {{
    let text = String::from_utf8_lossy(request);
    let reversed: String = text.chars().rev().collect();
    format!("{{reversed}} ({{n}})")
}}

/// Answers each message from the host.
fn answer(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {{
    let n = ANSWERED.fetch_add(1, Ordering::Relaxed) + 1;
    let reply = handle(msg.as_bytes(), n);
    outbox.send(reply.as_bytes())
}}

shmrt_guest::handler!(answer);

#[cfg(test)]
mod tests {{
    #[test]
    fn reverses_the_request_and_counts() {{
        assert_eq!(super::handle("héllo".as_bytes(), 1), "olléh (1)");
    }}
}}
"#
    )
}

/// A new C or Zig plugin: its handler answers each message with its bytes
/// reversed, in place; a C plugin gets a native test of the handler
/// against a mock of the three SDK functions it uses.
fn scaffold_native(dir: &Path, sdk: &Path, lang: Lang) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", dir.display()))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("`{name}` is not a valid plugin name: use letters, digits, `-` and `_`");
    }
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(
        &dir.join("shmrt.toml"),
        &format!(
            "# A shmrt plugin, built by `shmrt build .` with Zig against the guest SDK's C ABI.\n\
             name = \"{name}\"\n\
             # libc = \"wasi\"   # zig's wasi-libc, for code that needs stdlib.h and friends\n"
        ),
    )?;
    write(&dir.join(".gitignore"), "/target\n")?;
    match lang {
        Lang::C => {
            std::fs::create_dir_all(dir.join("src"))?;
            std::fs::create_dir_all(dir.join("test"))?;
            write(&dir.join("src/plugin.c"), &C_PLUGIN.replace("NAME", name))?;
            write(&dir.join("test/test_plugin.c"), C_TEST)?;
            let test = dir.join("test.sh");
            let include = sdk.join("c/include");
            let include = include
                .to_str()
                .with_context(|| format!("the SDK's path {} is not UTF-8", include.display()))?;
            let quoted = format!("'{}'", include.replace('\'', r"'\''"));
            write(&test, &C_TEST_SCRIPT.replace("INCLUDE", &quoted))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&test, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        Lang::Zig => write(&dir.join("main.zig"), &ZIG_PLUGIN.replace("NAME", name))?,
        Lang::Rust => unreachable!("Rust plugins are scaffolded by `scaffold`"),
    }
    Ok(())
}

const C_PLUGIN: &str = r#"/*
 * NAME: a shmrt plugin in C. Each message from the host is answered with
 * its bytes reversed, in place: a message in a slot goes back in that
 * slot, with no copy.
 *
 * SHMRT_HANDLER exports the handler for every execution mode of the host
 * (`shmrt run --exec thread|fiber|callback`).
 *
 * Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
 * Test:           ./test.sh
 */
#include "shmrt_guest.h"

/* Rewrites `len` bytes in place; the reply's length. */
size_t reverse(uint8_t *bytes, size_t len, void *ctx) {
    (void)ctx;
    for (size_t i = 0, j = len; i + 1 < j; i++, j--) {
        uint8_t t = bytes[i];
        bytes[i] = bytes[j - 1];
        bytes[j - 1] = t;
    }
    return len;
}

/* Answers one message: 0 goes on, anything else ends the plugin. */
int32_t handle(shmrt_msg msg) {
    return shmrt_reply_in_place(msg, reverse, 0);
}

SHMRT_HANDLER(handle)
"#;

const C_TEST: &str = r#"/*
 * The handler's test, built natively (./test.sh): the SDK functions the
 * handler calls are mocked here, so the handler runs as it would in the
 * sandbox, on a message of the test's.
 */
#include <stdio.h>
#include <string.h>

#include "shmrt_guest.h"

int32_t handle(shmrt_msg msg);

static uint8_t message[64];
static size_t message_len;
static int replies;

int32_t shmrt_reply_in_place(shmrt_msg msg, shmrt_transform_fn transform, void *ctx) {
    if (msg != 1 || transform == NULL) return SHMRT_E_HANDLE;
    message_len = transform(message, message_len, ctx);
    replies++;
    return SHMRT_OK;
}
int32_t shmrt_serve(shmrt_handler_fn handler) { (void)handler; return 0; }
int32_t shmrt_answer_queued(shmrt_handler_fn handler) { (void)handler; return 0; }

int main(void) {
    memcpy(message, "hello", 5);
    message_len = 5;
    if (handle(1) != 0 || replies != 1 || message_len != 5 || memcmp(message, "olleh", 5) != 0) {
        fprintf(stderr, "FAIL: the handler answered %.*s\n", (int)message_len, message);
        return 1;
    }
    printf("ok: the handler reverses the request in place\n");
    return 0;
}
"#;

const C_TEST_SCRIPT: &str = r#"#!/bin/sh
# Builds the handler with a mock of the SDK, natively, and runs its test.
set -eu
cd "$(dirname "$0")"
include=INCLUDE
mkdir -p target
python3 -m ziglang cc -I "$include" -o target/test_plugin test/test_plugin.c src/plugin.c
./target/test_plugin
"#;

const ZIG_PLUGIN: &str = r#"//! NAME: a shmrt plugin in Zig. Each message from the host is answered
//! with its bytes reversed, in place: a message in a slot goes back in
//! that slot, with no copy. `shmrt build` gives it the module `shmrt`
//! (the guest SDK's C ABI, wrapped with slices and error unions).
//!
//! Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
const std = @import("std");
const shmrt = @import("shmrt");

/// Rewrites `bytes` in place; the reply's length.
fn reverse(bytes: []u8) usize {
    std.mem.reverse(u8, bytes);
    return bytes.len;
}

fn handle(msg: shmrt.Message) shmrt.Error!void {
    try msg.replyInPlace(reverse);
}

comptime {
    shmrt.exportHandler(handle);
}
"#;

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shmrt-new-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A minimal SDK: guest-sdk/ (the `shmrt-guest` crate) and primitives/.
    fn fake_sdk(at: &Path) {
        for (dir, name) in [
            ("guest-sdk", "shmrt-guest"),
            ("primitives", "shmrt-primitives"),
        ] {
            std::fs::create_dir_all(at.join(dir)).unwrap();
            std::fs::write(
                at.join(dir).join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\n"),
            )
            .unwrap();
        }
    }

    #[test]
    fn the_sdk_next_to_the_binary_comes_before_the_source_tree() {
        let root = tempdir("shipped");
        let exe = root.join("prefix/bin/shmrt");
        std::fs::create_dir_all(root.join("prefix/bin")).unwrap();
        fake_sdk(&root.join("prefix/share/shmrt/sdk"));
        fake_sdk(&root.join("checkout"));
        let sdk = default_sdk(Some(&exe), &root.join("checkout")).unwrap();
        assert_eq!(
            sdk,
            root.join("prefix/share/shmrt/sdk/guest-sdk")
                .canonicalize()
                .unwrap()
        );
        let sdk = default_sdk(Some(&root.join("elsewhere/shmrt")), &root.join("checkout")).unwrap();
        assert_eq!(sdk, root.join("checkout/guest-sdk").canonicalize().unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_an_sdk_the_error_names_the_option() {
        let root = tempdir("none");
        let e = default_sdk(Some(&root.join("bin/shmrt")), &root.join("gone")).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("--sdk PATH") && e.contains("gone"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_sdk_is_the_guest_crate_or_a_directory_holding_it_with_primitives() {
        let root = tempdir("at");
        fake_sdk(&root);
        let want = root.join("guest-sdk").canonicalize().unwrap();
        assert_eq!(sdk_at(&root).unwrap(), want);
        assert_eq!(sdk_at(&root.join("guest-sdk")).unwrap(), want);
        let e = format!("{:#}", sdk_at(&root.join("primitives")).unwrap_err());
        assert!(e.contains("is not the guest SDK"), "{e}");
        std::fs::remove_dir_all(root.join("primitives")).unwrap();
        let e = format!("{:#}", sdk_at(&root).unwrap_err());
        assert!(e.contains("no primitives/"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_sdk_path_is_written_as_a_toml_string() {
        let root = tempdir("quote");
        let sdk = root.join("a \"quoted\" \\ dir");
        let plugin = root.join("plugin");
        scaffold(&plugin, &sdk, Kind::NoStd).unwrap();
        let manifest: toml::Table = std::fs::read_to_string(plugin.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            manifest["dependencies"]["shmrt-guest"]["path"].as_str(),
            sdk.to_str()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
