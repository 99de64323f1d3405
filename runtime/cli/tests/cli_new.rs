//! `shmrt new NAME` gives a plugin that builds, runs and tests as it is,
//! from any directory.

mod common;

use std::process::Command;

#[test]
fn a_new_plugin_builds_runs_and_passes_its_test() {
    let dir = common::TempDir::new("new");
    std::fs::create_dir_all(&dir).unwrap();
    let out = common::shmrt()
        .current_dir(&dir)
        .args(["new", "hello-plugin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    // The hint works as typed: `cd` first, then build `.` there.
    let hint = String::from_utf8_lossy(&out.stdout);
    assert!(
        hint.contains("cd hello-plugin && cargo test") && hint.contains("$(shmrt build .)"),
        "{hint}"
    );
    let crate_dir = dir.join("hello-plugin");

    let out = common::shmrt()
        .current_dir(&dir)
        .args(["new", "hello-plugin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("already exists"),
        "{}",
        common::stderr(&out)
    );

    let test = Command::new(env!("CARGO"))
        .arg("test")
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "cargo test in the new plugin: {}",
        String::from_utf8_lossy(&test.stderr)
    );

    // Built by `shmrt build` itself, its messages kept: the rustc warning
    // about the atomics target feature (in every crate) is left out, the
    // author's own warnings are not.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    // Builds the plugin with `extra` appended to its source.
    let build_with = |extra: &str| {
        std::fs::write(&lib, format!("{source}\n{extra}\n")).unwrap();
        let build = common::shmrt()
            .arg("build")
            .arg(&crate_dir)
            .output()
            .unwrap();
        let messages = common::stderr(&build);
        (build, messages)
    };
    let (build, messages) = build_with("fn unused_helper() {}");
    assert!(build.status.success(), "{messages}");
    assert!(!messages.contains("unstable feature"), "{messages}");
    assert!(
        messages.contains("function `unused_helper` is never used"),
        "{messages}"
    );
    let wasm = std::path::PathBuf::from(String::from_utf8(build.stdout).unwrap().trim_end());
    let out = common::run(&[], &wasm, b"hello\nshmrt\n");
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "olleh\ntrmhs\n");

    // A compile error is shown as rustc rendered it, and the build fails.
    let (build, messages) = build_with("fn broken() -> u32 { \"text\" }");
    assert!(!build.status.success());
    assert!(
        messages.contains("error[E0308]: mismatched types"),
        "{messages}"
    );
    assert!(messages.contains("cargo build failed in"), "{messages}");
    assert!(
        build.stdout.is_empty(),
        "no path printed for a failed build"
    );
}

/// `shmrt new --std` gives a std plugin (wasm32-wasip1, a `cdylib` with
/// `handler!`: no `main` to guess) that tests on the host, builds with
/// `shmrt build` and answers in every execution mode; out of fuel in its
/// WASI `_initialize` it ends with 71, as anywhere else.
#[test]
fn a_new_std_plugin_builds_runs_in_every_mode_and_passes_its_test() {
    let dir = common::TempDir::new("new-std");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = common::shmrt()
        .current_dir(&dir)
        .args(["new", "--std", "hello-std"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let crate_dir = dir.join("hello-std");

    let test = Command::new(env!("CARGO"))
        .arg("test")
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "cargo test in the new std plugin: {}",
        String::from_utf8_lossy(&test.stderr)
    );

    let build = common::shmrt()
        .arg("build")
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", common::stderr(&build));
    let wasm = std::path::PathBuf::from(String::from_utf8(build.stdout).unwrap().trim_end());
    assert!(
        wasm.to_string_lossy().contains("wasm32-wasip1"),
        "built for WASI: {}",
        wasm.display()
    );
    for mode in ["callback", "thread", "fiber"] {
        let out = common::run(&["--exec", mode], &wasm, "héllo\nshmrt\n".as_bytes());
        assert!(out.status.success(), "{mode}: {}", common::stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "olléh (1)\ntrmhs (2)\n",
            "{mode}"
        );
    }
    let out = common::run(&["--fuel", "10000"], &wasm, b"hello\n");
    assert_eq!(out.status.code(), Some(71), "{}", common::stderr(&out));

    // A panic of the std plugin is the reason its run failed, in shmrt's
    // own last line (before: "wasm `unreachable` instruction executed"
    // alone; the panic was only in the guest's stderr lines).
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        source.replace(
            "    let reply = handle(msg.as_bytes(), n);",
            "    if msg.as_bytes() == b\"boom\" {\n        panic!(\"boom requested\");\n    }\n    let reply = handle(msg.as_bytes(), n);",
        ),
    )
    .unwrap();
    let build = common::shmrt()
        .arg("build")
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", common::stderr(&build));
    let wasm = std::path::PathBuf::from(String::from_utf8(build.stdout).unwrap().trim_end());
    for mode in ["callback", "thread", "fiber"] {
        let out = common::run(&["-q", "--exec", mode], &wasm, b"boom\n");
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(70), "{mode}: {err}");
        let last = err
            .lines()
            .rfind(|l| l.starts_with("shmrt: "))
            .unwrap_or_default();
        assert!(
            last.contains("panicked at src/lib.rs") && last.contains("boom requested"),
            "{mode}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
