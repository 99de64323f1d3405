//! Helpers for tests that drive the real `shmrt` binary (`CARGO_BIN_EXE_shmrt`
//! is set only for this package's tests), on top of the ones shared with the
//! library's tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

#[path = "../../../tests/common/mod.rs"]
mod shared;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub use shared::*;

pub fn shmrt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmrt"));
    EXEC.with(|mode| match mode.get() {
        Some(mode) => cmd.env("SHMRT_EXEC", mode),
        None => cmd.env_remove("SHMRT_EXEC"),
    });
    cmd
}

thread_local! {
    /// The `--exec` mode of the `shmrt` runs this test thread makes
    /// (through `SHMRT_EXEC`); `None`: the default.
    static EXEC: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every `shmrt` this thread starts in execution mode
/// `mode` (a whole test again, in another mode).
pub fn in_exec_mode(mode: &'static str, f: impl FnOnce()) {
    EXEC.with(|m| m.set(Some(mode)));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXEC.with(|m| m.set(None));
        }
    }
    let _reset = Reset;
    f();
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
