//! `shmrt build DIR` for plugins in C, C++ and Zig: the guest SDK's C ABI
//! (`guest-sdk/c`, a Rust static library) is built for wasm32 with the
//! flags every guest needs, then Zig compiles the plugin's sources and
//! links them with it (`python3 -m ziglang`, from `pip install ziglang`).
//!
//! A directory is such a plugin when it has a `shmrt.toml`, C or C++
//! sources, or a `main.zig`. `shmrt.toml` (all optional):
//!
//! ```toml
//! name = "my-plugin"       # the .wasm's name; default: the directory's
//! libc = "wasi"            # zig's wasi-libc (stdlib.h, string.h, ...);
//!                          # default "none": freestanding, smallest
//! sources = ["src/a.c"]    # default: every .c/.cc/.cpp, or main.zig
//! cflags = ["-DFAST=1"]    # more flags for the compiler
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::build::GUEST_RUSTFLAGS;

/// The flags of the SDK's static library: small (the scaffolded C plugin
/// stays under 64 KiB) and without unwinding (C can not catch it).
const SDK_PROFILE: [(&str, &str); 5] = [
    ("CARGO_PROFILE_RELEASE_PANIC", "abort"),
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z"),
    ("CARGO_PROFILE_RELEASE_LTO", "true"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
];

/// What Zig compiles for: wasm with atomics (refused by shmrt without).
const CPU: &str = "-mcpu=generic+atomics+bulk_memory";

/// The language of a plugin directory that is not a Rust crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    C,
    Cpp,
    Zig,
}

/// `shmrt.toml` of a C, C++ or Zig plugin.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: Option<String>,
    libc: Option<String>,
    sources: Option<Vec<PathBuf>>,
    #[serde(default)]
    cflags: Vec<String>,
}

/// Whether `dir` is a C, C++ or Zig plugin, and in which language.
pub fn detect(dir: &Path) -> anyhow::Result<Option<(Lang, Vec<PathBuf>)>> {
    let manifest = read_manifest(dir)?;
    let sources = match &manifest {
        Some(m) if m.sources.is_some() => m
            .sources
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|s| dir.join(s))
            .collect(),
        _ => find_sources(dir)?,
    };
    let lang = if sources.iter().any(|s| has_ext(s, &["zig"])) {
        Lang::Zig
    } else if sources.iter().any(|s| has_ext(s, &["cc", "cpp", "cxx"])) {
        Lang::Cpp
    } else if sources.iter().any(|s| has_ext(s, &["c"])) {
        Lang::C
    } else if manifest.is_some() {
        bail!(
            "{} has a shmrt.toml but no sources: add .c, .cc/.cpp or a main.zig, or list them \
             as `sources = [...]`",
            dir.display()
        );
    } else {
        return Ok(None);
    };
    Ok(Some((lang, sources)))
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

fn read_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join("shmrt.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    toml::from_str(&text)
        .map(Some)
        .with_context(|| format!("parsing {}", path.display()))
}

/// The C and C++ sources of `dir` and `dir/src`, or its `main.zig` (there
/// or in `src/`): the root of a Zig plugin.
fn find_sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    for zig in [dir.join("main.zig"), dir.join("src/main.zig")] {
        if zig.is_file() {
            return Ok(vec![zig]);
        }
    }
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("src")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("listing {}", d.display()))?
                .path();
            if path.is_file() && has_ext(&path, &["c", "cc", "cpp", "cxx"]) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Builds the plugin at `dir`; the path of its .wasm.
pub fn build(dir: &Path, lang: Lang, sources: &[PathBuf], sdk: &Path) -> anyhow::Result<PathBuf> {
    let manifest = read_manifest(dir)?.unwrap_or_default();
    let wasi = match manifest.libc.as_deref() {
        None | Some("none") => false,
        Some("wasi") => true,
        Some(other) => bail!(
            "{}: libc = \"{other}\": use \"none\" (freestanding, the default) or \"wasi\" \
             (zig's wasi-libc)",
            dir.join("shmrt.toml").display()
        ),
    };
    let name = match manifest.name {
        Some(n) => n,
        None => dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin")
            .to_string(),
    };
    let zig = zig()?;
    let lib = build_sdk_library(sdk, dir)?;
    let include = sdk.join("c/include");
    let out_dir = dir.join("target/shmrt");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    let mut cmd = zig.command();
    match lang {
        Lang::C | Lang::Cpp => {
            cmd.arg(if lang == Lang::C { "cc" } else { "c++" });
            if wasi {
                cmd.args(["-target", "wasm32-wasi", "-mexec-model=reactor"]);
            } else {
                cmd.args(["-target", "wasm32-freestanding", "-nostdlib"]);
            }
            cmd.args([CPU, "-Os"]).arg("-I").arg(&include);
            if lang == Lang::Cpp {
                cmd.args(["-fno-exceptions", "-fno-rtti"]);
            }
            cmd.args(&manifest.cflags).args(sources).arg(&lib).args([
                "-Wl,--no-entry",
                "-Wl,--import-symbols",
                "-Wl,--gc-sections",
                "-s",
                "-o",
            ]);
            cmd.arg(&wasm);
        }
        Lang::Zig => {
            let [root] = sources else {
                bail!(
                    "a Zig plugin has one root source (main.zig), not {}",
                    sources.len()
                );
            };
            let target = if wasi {
                "wasm32-wasi"
            } else {
                "wasm32-freestanding"
            };
            cmd.args(["build-exe", "-target", target])
                .arg(CPU)
                .args(["-O", "ReleaseSmall", "-fno-entry", "-fstrip"])
                .args(zig_exports(root)?)
                .args(&manifest.cflags)
                .args(["--dep", "shmrt"])
                .arg(format!("-Mroot={}", root.display()))
                .arg(format!("-Mshmrt={}", sdk.join("c/zig/shmrt.zig").display()))
                .arg(&lib)
                .arg("--name")
                .arg(&name)
                .arg(format!("-femit-bin={}", wasm.display()));
            // Zig keeps its cache next to the sources by default.
            cmd.arg("--cache-dir").arg(dir.join("target/zig-cache"));
        }
    }
    let status = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running zig for {}", dir.display()))?;
    if !status.success() {
        bail!(
            "zig could not build {} ({status}); its messages are above",
            dir.display()
        );
    }
    Ok(wasm)
}

/// The exports a Zig plugin defines: `shmrt_main`, and
/// `shmrt_on_messages` when it uses a handler (the linker refuses to
/// export what is not there).
fn zig_exports(root: &Path) -> anyhow::Result<Vec<&'static str>> {
    let text =
        std::fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?;
    let mut exports = vec!["--export=shmrt_main"];
    if text.contains("exportHandler") || text.contains("shmrt_on_messages") {
        exports.push("--export=shmrt_on_messages");
    }
    Ok(exports)
}

/// How Zig is run: `python3 -m ziglang` (pip's package) or `zig`.
#[derive(Debug)]
struct Zig {
    program: &'static str,
    prefix: &'static [&'static str],
}

impl Zig {
    fn command(&self) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.args(self.prefix);
        cmd
    }
}

fn zig() -> anyhow::Result<Zig> {
    let candidates = [
        Zig {
            program: "python3",
            prefix: &["-m", "ziglang"],
        },
        Zig {
            program: "zig",
            prefix: &[],
        },
    ];
    for zig in candidates {
        let works = zig
            .command()
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Ok(zig);
        }
    }
    bail!(
        "C, C++ and Zig plugins are built with Zig, which is not installed: install it with \
         `python3 -m pip install ziglang` (then `python3 -m ziglang version` works; it needs no \
         network afterwards), or put `zig` on PATH"
    )
}

/// Builds the SDK's C ABI (`SDK/c`) as a wasm32 static library; its path.
/// Its target directory is `$CARGO_TARGET_DIR` when set, else the
/// plugin's `target/`.
fn build_sdk_library(sdk: &Path, plugin: &Path) -> anyhow::Result<PathBuf> {
    let crate_dir = sdk.join("c");
    if !crate_dir.join("Cargo.toml").is_file() {
        bail!(
            "the guest SDK at {} has no c/ (the C ABI, crate shmrt-guest-c): use an SDK of this \
             shmrt (`--sdk` of `shmrt new`, or a checkout)",
            sdk.display()
        );
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => plugin.join("target"),
    };
    let target_dir = std::path::absolute(&target_dir)
        .with_context(|| format!("resolving {}", target_dir.display()))?;
    let target = "wasm32-unknown-unknown";
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--quiet", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
            GUEST_RUSTFLAGS,
        )
        .envs(SDK_PROFILE)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .with_context(|| format!("running cargo build in {}", crate_dir.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "cargo could not build the guest SDK's C library in {} ({}):\n{err}",
            crate_dir.display(),
            out.status
        );
    }
    Ok(target_dir.join(target).join("release/libshmrt_guest_c.a"))
}
