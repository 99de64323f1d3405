//! The C API from C: the example host (examples/c-host) and the C tests
//! (misuse.c, contract.c) compiled with `cc` against the static library
//! this package builds, and run against plugins built from source.

#[path = "../../../runtime/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library of this package, built for this test.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let deps = exe.parent().expect("target/<profile>/deps");
    [deps, deps.parent().expect("target/<profile>")]
        .iter()
        .map(|dir| dir.join("libshmrt_capi.a"))
        .find(|p| p.is_file())
        .expect("libshmrt_capi.a next to the test (cargo builds the staticlib with the tests)")
}

/// Compiles `source` into an executable with the header and the library.
fn compile(source: &Path, name: &str) -> PathBuf {
    let dir = common::workspace().join("target").join("tmp").join("capi");
    std::fs::create_dir_all(&dir).expect("create target/tmp/capi");
    let exe = dir.join(name);
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(&include)
        .arg(source)
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, plugin: &Path) -> String {
    let out = common::output_within(
        Command::new(exe).arg(plugin),
        std::time::Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{}",
        exe.display(),
        out.status,
        common::stderr(&out)
    );
    stdout
}

#[test]
fn example_host_answers_a_mebibyte_in_place() {
    let exe = compile(
        &common::workspace().join("examples/c-host/main.c"),
        "c-host",
    );
    let out = run(&exe, &common::guest("examples/upper"));
    assert!(out.contains("HELLO FROM C"), "{out}");
    assert!(
        out.contains("1 MiB reply: 1048576 bytes, 0 wrong, read in place: yes"),
        "{out}"
    );
    assert!(out.contains("exit status 0"), "{out}");
}

#[test]
fn misuse_gives_error_codes_never_a_crash() {
    let exe = compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/misuse.c"),
        "misuse",
    );
    let out = run(&exe, &common::guest("examples/upper"));
    assert!(out.contains("misuse: 0 failures"), "{out}");
}

#[test]
fn calls_config_and_c_host_functions_in_every_mode() {
    let exe = compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract.c"),
        "contract",
    );
    let out = run(&exe, &common::guest("examples/text-tools"));
    assert!(out.contains("contract: 0 failures"), "{out}");
}
