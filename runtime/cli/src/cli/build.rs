//! `shmrt build DIR`: builds a guest crate for wasm32 with the flags
//! shmrt guests need, and prints the path of the .wasm as the last line.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;

use super::{Failure, build_native};

/// The flags every guest needs: without atomics a guest polling its ring
/// can hang forever.
pub const GUEST_RUSTFLAGS: &str = "-C target-feature=+atomics,+bulk-memory";
const DEFAULT_TARGET: &str = "wasm32-unknown-unknown";
const TARGETS: [&str; 2] = ["wasm32-unknown-unknown", "wasm32-wasip1"];

#[derive(Args)]
pub struct BuildCommand {
    /// The guest crate's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Build with the dev profile instead of release.
    #[arg(long)]
    debug: bool,
    /// wasm32 target; default: `build.target` of DIR/.cargo/config.toml,
    /// else `package.metadata.shmrt.target` of DIR/Cargo.toml (what
    /// `shmrt new --std` writes: `cargo test` keeps the host's target),
    /// else wasm32-unknown-unknown.
    #[arg(long)]
    target: Option<String>,
    /// For C, C++ and Zig plugins: the guest SDK whose C ABI they link, as
    /// `shmrt new --sdk` takes it; default: the one `shmrt new` finds.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

impl BuildCommand {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        let wasm = if self.dir.join("Cargo.toml").is_file() {
            build(&self.dir, self.target.as_deref(), !self.debug)?
        } else if let Some((lang, sources)) = build_native::detect(&self.dir)? {
            let sdk = super::new::find_sdk(self.sdk.as_deref())?;
            build_native::build(&self.dir, lang, &sources, &sdk)?
        } else {
            build(&self.dir, self.target.as_deref(), !self.debug)?
        };
        println!("{}", wasm.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// Builds the guest crate at `dir`; returns the path of its .wasm.
pub fn build(dir: &Path, target: Option<&str>, release: bool) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml, C/C++ sources, main.zig or shmrt.toml: give the directory of a \
             plugin",
            dir.display()
        );
    }
    let target = match target {
        Some(t) => t.to_string(),
        None => match configured_target(dir)? {
            Some(t) => t,
            None => manifest_target(&manifest)?.unwrap_or_else(|| DEFAULT_TARGET.to_string()),
        },
    };
    if !TARGETS.contains(&target.as_str()) {
        bail!(
            "target {target} is not a wasm32 target shmrt runs; use one of {}",
            TARGETS.join(", ")
        );
    }
    ensure_target(&target)?;
    let env_key = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_uppercase().replace('-', "_")
    );
    // Diagnostics come as JSON so that the one warning every guest build
    // gives (below) can be left out; the others are printed as they come.
    let format = if std::io::stderr().is_terminal() {
        "--message-format=json-diagnostic-rendered-ansi"
    } else {
        "--message-format=json"
    };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .args(["build", "--target", &target, format])
        .env(env_key, GUEST_RUSTFLAGS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if release {
        cmd.arg("--release");
    }
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("resolving {}", manifest.display()))?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running cargo build in {}", dir.display()))?;
    let mut wasm = None;
    let stdout = child.stdout.take().context("cargo's standard output")?;
    // A line that is not JSON is skipped; a read error ends the loop and
    // closes the pipe: cargo's exit status decides.
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-message") => print_diagnostic(&msg["message"]),
            Some("compiler-artifact") => {
                if let Some(f) = wasm_of(&msg, &manifest) {
                    wasm = Some(f);
                }
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for cargo build in {}", dir.display()))?;
    if !status.success() {
        bail!(
            "cargo build failed in {} ({status}); its messages are above",
            dir.display()
        );
    }
    wasm.with_context(|| {
        format!(
            "cargo built {} but produced no .wasm: make the crate a `cdylib` (a plugin, no_std or std, as `shmrt new` writes) or a binary (a WASI command)",
            dir.display()
        )
    })
}

/// What stable rustc says of `-C target-feature=+atomics` in every crate
/// of a guest build; shmrt needs the feature (see `GUEST_RUSTFLAGS`), so
/// the warning says nothing the author can act on.
const ATOMICS_UNSTABLE_WARNING: &str =
    "unstable feature specified for `-Ctarget-feature`: `atomics`";

/// Prints a compiler diagnostic as rustc rendered it, unless it is the
/// atomics warning.
fn print_diagnostic(message: &serde_json::Value) {
    if message["level"] == "warning" && message["message"] == ATOMICS_UNSTABLE_WARNING {
        return;
    }
    if let Some(rendered) = message["rendered"].as_str() {
        eprint!("{rendered}");
    }
}

/// The .wasm of a `compiler-artifact` message of the crate at `manifest`.
fn wasm_of(msg: &serde_json::Value, manifest: &Path) -> Option<PathBuf> {
    let same = msg["manifest_path"]
        .as_str()
        .map(Path::new)
        .and_then(|p| p.canonicalize().ok());
    if same.as_deref() != Some(manifest) {
        return None;
    }
    msg["filenames"]
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .rfind(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

/// `build.target` from DIR/.cargo/config.toml, if set.
fn configured_target(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join(".cargo").join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let value: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(value
        .get("build")
        .and_then(|b| b.get("target"))
        .and_then(|t| t.as_str())
        .map(str::to_string))
}

/// `package.metadata.shmrt.target` from the crate's Cargo.toml, if set.
fn manifest_target(manifest: &Path) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let value: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let target = value
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("shmrt"))
        .and_then(|s| s.get("target"));
    match target {
        None => Ok(None),
        Some(toml::Value::String(t)) => Ok(Some(t.clone())),
        Some(other) => bail!(
            "{}: package.metadata.shmrt.target must be a string such as \"wasm32-wasip1\", not {other}",
            manifest.display()
        ),
    }
}

/// Installs `target` with rustup when it is missing.
fn ensure_target(target: &str) -> anyhow::Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = &listed
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("shmrt: installing the {target} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("could not run rustup to install {target}; install it with `rustup target add {target}`"))?;
    if !status.success() {
        bail!(
            "rustup could not install {target} ({status}); install it with `rustup target add {target}`"
        );
    }
    Ok(())
}
