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
//! optimize = "speed"       # the SDK's library at opt-level 3, C at -O2,
//!                          # Zig ReleaseFast; default "size": opt-level
//!                          # "z", -Os, ReleaseSmall (the smallest module)
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

/// The profile of `optimize = "speed"`, added to the copy of the
/// library's manifest: release at opt-level 3, as the Rust bench guest is
/// built. A profile of its own, so that its library sits beside the small
/// one in the same target directory, not over it.
const SPEED_PROFILE: &str = "shmrt-speed";

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
    optimize: Option<String>,
}

/// What a plugin is optimized for (`optimize` of `shmrt.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Optimize {
    /// The smallest module (the default).
    Size,
    /// The fastest: the SDK's library as the Rust bench guest is built
    /// (opt-level 3), for a plugin whose time goes into the protocol.
    Speed,
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

/// Where a build writes: nothing goes into the guest SDK, which may be
/// an installed, read-only copy.
#[derive(Clone, Debug)]
pub struct Places {
    /// The .wasm's directory.
    pub out: PathBuf,
    /// Cargo's target directory for the SDK's C library (which also holds
    /// the copy of its manifest that cargo builds, and its Cargo.lock).
    pub cargo_target: PathBuf,
    /// Zig's cache (by default Zig keeps it next to the sources).
    pub zig_cache: PathBuf,
}

impl Places {
    /// `shmrt build DIR`: the .wasm in `DIR/target/shmrt`, the SDK's
    /// library in `$CARGO_TARGET_DIR` when set, else in `DIR/target`.
    pub fn of_plugin(dir: &Path) -> anyhow::Result<Self> {
        let cargo_target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => PathBuf::from(d),
            None => dir.join("target"),
        };
        Ok(Places {
            out: dir.join("target/shmrt"),
            cargo_target: std::path::absolute(&cargo_target)
                .with_context(|| format!("resolving {}", cargo_target.display()))?,
            zig_cache: dir.join("target/zig-cache"),
        })
    }

    /// Everything under `dir` (`shmrt bench` builds its C guest so).
    pub fn under(dir: &Path) -> Self {
        Places {
            out: dir.join("shmrt"),
            cargo_target: dir.to_path_buf(),
            zig_cache: dir.join("zig-cache"),
        }
    }
}

/// Builds the plugin at `dir`; the path of its .wasm.
pub fn build(dir: &Path, lang: Lang, sources: &[PathBuf], sdk: &Path) -> anyhow::Result<PathBuf> {
    build_in(dir, lang, sources, sdk, &Places::of_plugin(dir)?)
}

/// Builds the plugin at `dir`, writing only to `places`; the path of its
/// .wasm.
pub fn build_in(
    dir: &Path,
    lang: Lang,
    sources: &[PathBuf],
    sdk: &Path,
    places: &Places,
) -> anyhow::Result<PathBuf> {
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
    let optimize = match manifest.optimize.as_deref() {
        None | Some("size") => Optimize::Size,
        Some("speed") => Optimize::Speed,
        Some(other) => bail!(
            "{}: optimize = \"{other}\": use \"size\" (the smallest module, the default) or \
             \"speed\"",
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
    let lib = build_sdk_library(sdk, &places.cargo_target, optimize)?;
    let include = sdk.join("c/include");
    let out_dir = &places.out;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
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
            let level = match optimize {
                Optimize::Size => "-Os",
                Optimize::Speed => "-O2",
            };
            cmd.args([CPU, level]).arg("-I").arg(&include);
            if lang == Lang::Cpp {
                cmd.args(["-fno-exceptions", "-fno-rtti"]);
            }
            if c_callback_export(sources)? {
                // The SDK's callback cursor record, which the callback
                // entry links in (the host then publishes its cursors).
                cmd.arg("-Wl,--export=SHMRT_CALLBACK_CURSORS");
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
                .arg("-O")
                .arg(match optimize {
                    Optimize::Size => "ReleaseSmall",
                    Optimize::Speed => "ReleaseFast",
                })
                .args(["-fno-entry", "-fstrip"])
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
            cmd.arg("--cache-dir").arg(&places.zig_cache);
        }
    }
    // Zig's messages go to stderr: stdout is the .wasm's path (`$(shmrt
    // build .)`), or `shmrt bench --json`'s document.
    let status = cmd
        .stdout(std::io::stderr())
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

/// Whether a C or C++ plugin defines the callback entry (with the
/// header's `SHMRT_HANDLER` or `SHMRT_EXPORTS`, or by hand), which links
/// in the SDK's callback cursor record: exported then (the linker refuses
/// to export what is not there).
fn c_callback_export(sources: &[PathBuf]) -> anyhow::Result<bool> {
    for source in sources {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("reading {}", source.display()))?;
        if ["SHMRT_HANDLER", "SHMRT_EXPORTS", "shmrt_on_messages"]
            .iter()
            .any(|m| text.contains(m))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The exports a Zig plugin defines: `shmrt_main`, and
/// `shmrt_on_messages` and the SDK's `SHMRT_CALLBACK_CURSORS` when it uses
/// a handler (the linker refuses to export what is not there).
fn zig_exports(root: &Path) -> anyhow::Result<Vec<&'static str>> {
    let text =
        std::fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?;
    let mut exports = vec!["--export=shmrt_main"];
    if text.contains("exportHandler") || text.contains("shmrt_on_messages") {
        exports.push("--export=shmrt_on_messages");
        // The SDK's callback cursor record, which the handler links in.
        exports.push("--export=SHMRT_CALLBACK_CURSORS");
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

/// Whether Zig is there to build C, C++ and Zig plugins.
pub fn zig_available() -> bool {
    zig().is_ok()
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

/// Builds the SDK's C ABI (`SDK/c`) as a wasm32 static library under
/// cargo's `target_dir`; its path.
///
/// Cargo builds a copy of the library's manifest, written under
/// `target_dir` with its paths pointing back into the SDK: cargo writes a
/// Cargo.lock next to the manifest it builds, and the SDK may be an
/// installed, read-only copy (nothing is written into it). Each SDK gets
/// a directory of its own there (named by a hash of its path), with its
/// own target directory: two SDKs built into one `target_dir` at once
/// (tests, a checkout and an installed copy) do not overwrite each
/// other's library.
fn build_sdk_library(sdk: &Path, target_dir: &Path, optimize: Optimize) -> anyhow::Result<PathBuf> {
    let crate_dir = sdk.join("c");
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "the guest SDK at {} has no c/ (the C ABI, crate shmrt-guest-c): use an SDK of this \
             shmrt (`--sdk` of `shmrt new`, or a checkout)",
            sdk.display()
        );
    }
    let crate_dir = std::path::absolute(&crate_dir)
        .with_context(|| format!("resolving {}", crate_dir.display()))?;
    let copy_dir = target_dir
        .join("shmrt-guest-c")
        .join(format!("{:016x}", path_hash(&crate_dir)));
    std::fs::create_dir_all(&copy_dir)
        .with_context(|| format!("creating {}", copy_dir.display()))?;
    let copy = copy_dir.join("Cargo.toml");
    write_if_changed(&copy, &relocated_manifest(&crate_dir)?)?;
    let target_dir = copy_dir.join("target");
    let target = "wasm32-unknown-unknown";
    let profile = match optimize {
        Optimize::Size => "release",
        Optimize::Speed => SPEED_PROFILE,
    };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&copy_dir)
        .args(["build", "--profile", profile, "--quiet", "--target", target])
        .arg("--manifest-path")
        .arg(&copy)
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
        .with_context(|| format!("running cargo build for {}", crate_dir.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "cargo could not build the guest SDK's C library in {} ({}):\n{err}",
            crate_dir.display(),
            out.status
        );
    }
    Ok(target_dir
        .join(target)
        .join(profile)
        .join("libshmrt_guest_c.a"))
}

/// The manifest of the SDK's C library at `crate_dir`, made to build from
/// another directory: its library and its path dependencies point back
/// into the SDK, by absolute paths; with the profile of `optimize =
/// "speed"`.
fn relocated_manifest(crate_dir: &Path) -> anyhow::Result<String> {
    let source = crate_dir.join("Cargo.toml");
    let crate_dir = std::path::absolute(crate_dir)
        .with_context(|| format!("resolving {}", crate_dir.display()))?;
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let mut manifest: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", source.display()))?;
    let utf8 = |p: PathBuf| -> anyhow::Result<toml::Value> {
        p.to_str()
            .map(toml::Value::from)
            .with_context(|| format!("the SDK's path {} is not UTF-8", p.display()))
    };
    let lib = manifest
        .entry("lib")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .with_context(|| format!("{}: [lib] is not a table", source.display()))?;
    let lib_path = lib
        .get("path")
        .and_then(|p| p.as_str())
        .unwrap_or("src/lib.rs")
        .to_string();
    lib.insert("path".into(), utf8(crate_dir.join(lib_path))?);
    let deps = manifest
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut());
    for (_, dep) in deps.into_iter().flat_map(|d| d.iter_mut()) {
        if let Some(path) = dep.get_mut("path")
            && let Some(relative) = path.as_str()
        {
            *path = utf8(crate_dir.join(relative))?;
        }
    }
    let mut speed = toml::Table::new();
    speed.insert("inherits".into(), "release".into());
    speed.insert("opt-level".into(), 3.into());
    manifest
        .entry("profile")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .with_context(|| format!("{}: [profile] is not a table", source.display()))?
        .insert(SPEED_PROFILE.into(), speed.into());
    Ok(toml::to_string(&manifest).expect("a parsed manifest serializes"))
}

/// A hash of `path` that names its directory (the same in every run of
/// this binary).
fn path_hash(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// Writes `text` unless the file holds it already (a new mtime would make
/// cargo look again); by a rename, so that a build running beside this
/// one never reads half a file.
fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
