//! Helpers shared by the tests of the library (`runtime/tests`) and of the
//! binary (`runtime/cli/tests`, whose `common` adds the ones that run
//! `shmrt`): guests are built from source (no committed .wasm), once per
//! test process.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// The workspace root: the nearest directory above this package that holds
/// the workspace's Cargo.lock.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the package lies in the workspace")
        .to_path_buf()
}

/// Builds the guest crate at `dir` (relative to the workspace) for
/// wasm32, once per process; returns the .wasm path. Every guest crate
/// names its target and the atomics flags in its .cargo/config.toml (as
/// `shmrt build` would set them), so plain `cargo build` is enough and
/// the library's tests need no binary; `shmrt build` itself is tested by
/// the binary's tests.
pub fn guest(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(dir) {
        return p.clone();
    }
    let crate_dir = workspace().join(dir);
    let manifest = crate_dir.join("Cargo.toml").canonicalize().unwrap();
    // Diagnostics stay in the JSON: the one every guest build gives (rustc
    // calls the atomics target feature unstable) is noise; a failure shows
    // them all.
    let out = Command::new(env!("CARGO"))
        .current_dir(&crate_dir)
        .args(["build", "--release", "--message-format=json"])
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("guests"),
        )
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    let messages: Vec<serde_json::Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    if !out.status.success() {
        let rendered: String = messages
            .iter()
            .filter_map(|msg| msg["message"]["rendered"].as_str())
            .collect();
        panic!("cargo build of the guest {dir} failed:\n{rendered}");
    }
    // The last artifact of the crate itself that is a .wasm.
    let path = messages
        .iter()
        .filter(|msg| {
            msg["reason"] == "compiler-artifact"
                && msg["manifest_path"]
                    .as_str()
                    .and_then(|p| Path::new(p).canonicalize().ok())
                    .is_some_and(|p| p == manifest)
        })
        .flat_map(|msg| {
            msg["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .unwrap_or_else(|| panic!("cargo build of {dir} produced no .wasm"));
    built.insert(dir.to_string(), path.clone());
    path
}

/// Runs `f` on a thread of its own; `None` if it has not returned within
/// `limit` (the thread is left behind: the test fails anyway), so that a
/// hang fails a test instead of holding the run.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
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

/// A directory of this test process's own under the system's temporary
/// directory (`shmrt-TAG-PID-N`), removed with all it holds when dropped,
/// so that test runs leave nothing behind.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "shmrt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
