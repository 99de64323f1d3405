//! Helpers for tests that drive the real `shmrt` binary: guests are built
//! from source with `shmrt build` (no committed .wasm), once per test run.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

pub fn shmrt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmrt"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the guest crate at `dir` (relative to the workspace) with
/// `shmrt build`, once per process; returns the .wasm path.
pub fn guest(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(dir) {
        return p.clone();
    }
    let out = shmrt()
        .arg("build")
        .arg(workspace().join(dir))
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("guests"),
        )
        .stderr(Stdio::inherit())
        .output()
        .expect("run shmrt build");
    assert!(out.status.success(), "shmrt build {dir} failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(stdout.lines().last().expect("a path on the last line"));
    assert!(
        path.is_file(),
        "shmrt build printed {path:?}, which is not a file"
    );
    built.insert(dir.to_string(), path.clone());
    path
}

/// Runs `shmrt run ARGS` with `input` on stdin.
pub fn run(args: &[&str], plugin: &Path, input: &[u8]) -> Output {
    let mut child = shmrt()
        .arg("run")
        .args(args)
        .arg(plugin)
        .env("RUST_LOG", "warn,shmrt::guest=info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmrt run");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The guest may end before reading everything: a broken pipe is fine.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for shmrt run");
    feeder.join().unwrap();
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// u32-LE length-prefixed records.
pub fn len32(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

pub fn parse_len32(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(bytes[4..4 + n].to_vec());
        bytes = &bytes[4 + n..];
    }
    out
}

/// Runs `cmd` to completion with its output captured; kills it and panics
/// if it takes longer than `within`, so that a hang fails the test.
pub fn output_within(cmd: &mut Command, within: std::time::Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let start = std::time::Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if start.elapsed() > within {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{cmd:?} did not exit within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    waiter.join().unwrap()
}

/// Waits for `child` at most `limit`; kills it and fails the test if it is
/// still running (the bugs these tests guard against are runs that never
/// end).
pub fn wait_at_most(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes a hand-made module (WAT) into a directory of this test process
/// (`tag` tells the test files apart).
pub fn write_wat(tag: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shmrt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether stderr shows a panic of shmrt itself (a Rust thread's panic
/// message); a guest's own panic, logged as `plugin panicked: ...`, is the
/// guest's business.
pub fn host_panicked(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.starts_with("thread '") && l.contains("panicked"))
}
