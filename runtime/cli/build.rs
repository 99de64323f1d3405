//! Builds the guest of `shmrt bench` (examples/bench-guest) for wasm32, so
//! that the binary carries it (`include_bytes!`) and `shmrt bench` needs
//! neither the source tree nor cargo at run time. As wasmtime's
//! test-programs do, the guest is built by a nested cargo, here with a
//! manifest and a target directory of its own under OUT_DIR: nothing is
//! written into the source tree (not even a Cargo.lock).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-unknown-unknown";
/// The flags every guest needs (as `shmrt build` sets them): without
/// atomics a guest polling its ring can hang forever.
const GUEST_RUSTFLAGS: &str = "-C target-feature=+atomics,+bulk-memory";
/// What cargo passes a build script that must not reach the nested build:
/// the outer build's flags, target and directories, and clippy's driver.
const OUTER_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    // The outer build holds its build directory's lock while this script
    // runs: a nested build sharing it would wait for it forever.
    "CARGO_BUILD_BUILD_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MANIFEST_PATH",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("runtime/cli/ lies in the workspace");
    let guest = root.join("examples/bench-guest");
    println!("cargo::rerun-if-changed=build.rs");
    for input in [
        "examples/bench-guest/Cargo.toml",
        "examples/bench-guest/src",
        "guest-sdk/Cargo.toml",
        "guest-sdk/build.rs",
        "guest-sdk/src",
        "primitives/Cargo.toml",
        "primitives/src",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(input).display());
    }

    check_target_installed();
    let out = PathBuf::from(env("OUT_DIR"));
    let crate_dir = out.join("bench-guest");
    std::fs::create_dir_all(&crate_dir).expect("creating a directory in OUT_DIR");
    let manifest = crate_dir.join("Cargo.toml");
    write_if_changed(&manifest, &relocated_manifest(&guest));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(crate_dir.join("target"))
        // Its own build directory too, whatever the user's configuration
        // says (see OUTER_ENV).
        .arg("--config")
        .arg(format!(
            "build.build-dir={:?}",
            crate_dir.join("target").display().to_string()
        ))
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                TARGET.to_uppercase().replace('-', "_")
            ),
            GUEST_RUSTFLAGS,
        )
        // A build script's stdout is read by cargo as instructions.
        .stdout(Stdio::from(std::io::stderr()));
    for var in OUTER_ENV {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the bench guest: {e}"));
    if !status.success() {
        panic!(
            "building the bench guest ({}) for {TARGET} failed ({status}); cargo's messages are above",
            guest.display()
        );
    }
    let wasm = crate_dir
        .join("target")
        .join(TARGET)
        .join("release/shmrt_bench_guest.wasm");
    std::fs::copy(&wasm, out.join("shmrt_bench_guest.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", wasm.display()));
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key} for build scripts"))
}

/// Fails the build, saying how to fix it, when the standard library for
/// the wasm target is missing (cargo's own error would be "can't find
/// crate for `core`", deep in the nested build's output).
fn check_target_installed() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        panic!("could not ask {} for its sysroot", rustc.display());
    };
    if !sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        panic!(
            "shmrt carries its bench guest built for {TARGET}, and that target is not installed \
             for this toolchain ({}): install it with `rustup target add {TARGET}`",
            sysroot.display()
        );
    }
}

/// The bench guest's manifest, made to build from another directory: its
/// library and its path dependencies point back into the source tree.
fn relocated_manifest(guest: &Path) -> String {
    let source = guest.join("Cargo.toml");
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    let mut manifest: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", source.display()));
    let lib = manifest
        .entry("lib")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .expect("[lib] is a table");
    lib.insert(
        "path".into(),
        guest.join("src/lib.rs").display().to_string().into(),
    );
    let deps = manifest
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut());
    for (_, dep) in deps.into_iter().flat_map(|d| d.iter_mut()) {
        if let Some(path) = dep.get_mut("path")
            && let Some(relative) = path.as_str()
        {
            *path = guest.join(relative).display().to_string().into();
        }
    }
    toml::to_string(&manifest).expect("a parsed manifest serializes")
}

/// Writes `text` unless the file holds it already (a new mtime would make
/// the nested cargo rebuild).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
