//! `shmrt new NAME` gives a plugin that builds, runs and tests as it is,
//! from any directory.

mod common;

use std::process::Command;

#[test]
fn a_new_plugin_builds_runs_and_passes_its_test() {
    let dir = std::env::temp_dir().join(format!("shmrt-new-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = common::shmrt()
        .current_dir(&dir)
        .args(["new", "hello-plugin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shmrt build hello-plugin"));
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

    let wasm = common::guest(crate_dir.to_str().unwrap());
    let out = common::run(&[], &wasm, b"hello\nshmrt\n");
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "olleh\ntrmhs\n");
}
