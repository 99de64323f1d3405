//! The `shmrt` binary away from the checkout it was built in: copied to
//! PREFIX/bin with the SDK in PREFIX/share/shmrt/sdk, `shmrt new` uses that
//! SDK and the new plugin builds, tests and runs offline with an empty
//! cargo home; `shmrt bench` runs with no cargo at all.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tempdir(what: &str) -> common::TempDir {
    common::TempDir::new(&format!("portable-{what}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == "Cargo.lock" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The test binary's `shmrt`, installed as PREFIX/bin/shmrt.
fn install(prefix: &Path) -> PathBuf {
    let bin = prefix.join("bin/shmrt");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_shmrt"), &bin).unwrap();
    // Until the copy's descriptor is closed in every child another test
    // thread forked meanwhile (before its exec), running it fails with
    // ETXTBSY: wait for that to pass.
    for _ in 0..100 {
        match Command::new(&bin).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => break,
        }
    }
    bin
}

/// A command that knows nothing of this test's cargo: no CARGO_* variables
/// from the outer build, no network, an empty cargo home.
fn isolated(program: &Path, cwd: &Path, cargo_home: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env("CARGO_HOME", cargo_home)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TARGET_DIR", cwd.join("target"));
    cmd
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    out
}

#[test]
fn a_plugin_from_an_installed_shmrt_builds_tests_and_runs_offline() {
    let root = tempdir("new");
    let prefix = root.join("prefix");
    let shmrt = install(&prefix);
    let sdk = prefix.join("share/shmrt/sdk");
    for dir in ["guest-sdk", "primitives"] {
        copy_dir(&common::workspace().join(dir), &sdk.join(dir));
    }
    let home = root.join("empty-cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();

    ok(
        isolated(&shmrt, &work, &home)
            .args(["new", "hello"])
            .output()
            .unwrap(),
        "shmrt new",
    );
    let plugin = work.join("hello");
    let manifest: toml::Table = std::fs::read_to_string(plugin.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        manifest["dependencies"]["shmrt-guest"]["path"].as_str(),
        sdk.join("guest-sdk").canonicalize().unwrap().to_str(),
        "the SDK next to the binary, not the checkout"
    );

    // Nothing to fetch: no loom (nor anything else) in the lock file.
    let cargo = Path::new(env!("CARGO"));
    ok(
        isolated(cargo, &plugin, &home)
            .args(["generate-lockfile", "--offline"])
            .output()
            .unwrap(),
        "cargo generate-lockfile --offline",
    );
    let lock = std::fs::read_to_string(plugin.join("Cargo.lock")).unwrap();
    assert!(!lock.contains("loom"), "{lock}");
    assert!(!lock.contains("registry+"), "{lock}");
    let tree = ok(
        isolated(cargo, &plugin, &home)
            .args(["tree", "--offline", "--target", "all", "-e", "all"])
            .output()
            .unwrap(),
        "cargo tree",
    );
    assert!(!String::from_utf8_lossy(&tree.stdout).contains("loom"));
    ok(
        isolated(cargo, &plugin, &home)
            .args(["test", "--offline"])
            .output()
            .unwrap(),
        "cargo test --offline in the new plugin",
    );

    // Built by the installed shmrt (cargo as an installed toolchain
    // finds it), offline, and run.
    let built = ok(
        isolated(&shmrt, &plugin, &home)
            .env("CARGO", cargo)
            .args(["build", "."])
            .output()
            .unwrap(),
        "shmrt build .",
    );
    let wasm = String::from_utf8(built.stdout).unwrap();
    let wasm = PathBuf::from(wasm.lines().last().unwrap());
    let out = common::run(&[], &wasm, b"hello\n");
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(out.stdout, b"olleh\n");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn new_names_the_option_when_the_sdk_is_not_there() {
    let root = tempdir("nosdk");
    let out = common::shmrt()
        .current_dir(&root)
        .args(["new", "hello", "--sdk"])
        .arg(root.join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("--sdk") && err.contains("nowhere") && err.contains("is not the guest SDK"),
        "{err}"
    );
    assert!(!root.join("hello").exists());

    // A checkout, or its guest-sdk/ itself, will do.
    for (name, sdk) in [
        ("a", common::workspace()),
        ("b", common::workspace().join("guest-sdk")),
    ] {
        ok(
            common::shmrt()
                .current_dir(&root)
                .args(["new", name, "--sdk"])
                .arg(&sdk)
                .output()
                .unwrap(),
            "shmrt new --sdk",
        );
        let text = std::fs::read_to_string(root.join(name).join("Cargo.toml")).unwrap();
        let want = common::workspace()
            .join("guest-sdk")
            .canonicalize()
            .unwrap();
        assert!(text.contains(want.to_str().unwrap()), "{text}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// The bench guest is inside the binary: no cargo, no rustup, no source
/// tree needed (PATH holds neither here).
#[test]
fn bench_runs_from_an_installed_binary_without_cargo() {
    let root = tempdir("bench");
    let shmrt = install(&root.join("prefix"));
    let home = root.join("empty-cargo-home");
    let out = ok(
        isolated(&shmrt, &root, &home)
            .env("PATH", "/nonexistent")
            .args(["bench", "--quick", "--json"])
            .stderr(Stdio::piped())
            .output()
            .unwrap(),
        "shmrt bench --quick --json",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["workloads"].as_object().is_some_and(|w| !w.is_empty())
            || v["workloads"].as_array().is_some_and(|w| !w.is_empty()),
        "{v:#}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
