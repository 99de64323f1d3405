//! Hostile segment files: truncated while shmrt maps and reads them, not
//! regular files at all, temporary names taken in advance. shmrt must
//! answer each with an error and an exit status, never hang or die by a
//! signal.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{output_within, shmrt};
use shmrt::HostSegment;
use shmrt::primitives::SegmentConfig;
use shmrt::primitives::layout::{SizeClass, SizeClasses};

fn tempdir() -> common::TempDir {
    common::TempDir::new("hostile-files")
}

/// A small segment file laid out for `max_guests` guests, kept on disk.
fn segment_file(dir: &Path, name: &str, max_guests: u32) -> PathBuf {
    let mut config = SegmentConfig::single_guest();
    config.max_guests = max_guests;
    config.ring_capacity = 4096;
    config.size_classes = SizeClasses::new(&[SizeClass {
        slot_size: 68,
        slot_count: 1024,
    }])
    .unwrap();
    let path = dir.join(name);
    drop(HostSegment::create(&path, &config, true).unwrap());
    path
}

/// Until dropped, a thread truncates the file at `path` (to nothing, or to
/// its first page) and writes its content back, over and over, so that
/// whoever maps it sees its pages vanish at any moment.
struct Flapper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Flapper {
    fn start(path: &Path) -> Self {
        let content = std::fs::read(path).unwrap();
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !s.load(Ordering::Relaxed) {
                file.set_len(if rounds.is_multiple_of(2) { 0 } else { 4096 })
                    .unwrap();
                file.write_all_at(&content, 0).unwrap();
                rounds += 1;
            }
            rounds
        });
        Flapper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let rounds = t.join().unwrap();
            assert!(rounds > 0, "the file was never truncated");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `run --attach` on a file that another thread keeps truncating and
/// restoring: whichever moment the pages vanish (before, during or after
/// header validation), shmrt ends with an error status, never by SIGBUS.
/// The segment has one guest and we ask for peer 9, so a run that gets
/// past validation stops right there, before compiling the plugin.
#[test]
fn attach_survives_a_file_truncated_while_it_is_validated() {
    let dir = tempdir();
    let path = segment_file(&dir, "flapping.seg", 1);
    let plugin = dir.join("plugin.wasm");
    std::fs::write(&plugin, b"\0asm never compiled").unwrap();
    let flapper = Flapper::start(&path);
    let start = Instant::now();
    let mut attempts = 0;
    while attempts < 200 && start.elapsed() < Duration::from_secs(12) {
        let out = output_within(
            shmrt()
                .args(["run", "--attach"])
                .arg(&path)
                .args(["--peer", "9"])
                .arg(&plugin),
            Duration::from_secs(30),
        );
        assert_eq!(
            out.status.signal(),
            None,
            "attempt {attempts}: shmrt was killed by a signal: {}",
            text(&out)
        );
        assert_eq!(out.status.code(), Some(67), "{}", text(&out));
        attempts += 1;
    }
    drop(flapper);
    assert!(attempts >= 20, "only {attempts} attempts ran");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inspect` reads the whole peer table, every ring header and every slot
/// meta; the file keeps vanishing under it. Each run ends with a report or
/// an error status (66 when the truncation was seen), never by SIGBUS.
#[test]
fn inspect_survives_a_file_truncated_while_it_is_read() {
    let dir = tempdir();
    let path = segment_file(&dir, "flapping.seg", 64);
    let flapper = Flapper::start(&path);
    let start = Instant::now();
    let mut attempts = 0;
    let mut truncated_seen = 0;
    while attempts < 100 && start.elapsed() < Duration::from_secs(8) {
        let out = output_within(shmrt().arg("inspect").arg(&path), Duration::from_secs(30));
        assert_eq!(
            out.status.signal(),
            None,
            "attempt {attempts}: shmrt inspect was killed by a signal: {}",
            text(&out)
        );
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 4 | 66 | 67)),
            "{code:?}: {}",
            text(&out)
        );
        if code == Some(66) {
            assert!(
                text(&out).contains("truncated while it was being read"),
                "{}",
                text(&out)
            );
            truncated_seen += 1;
        }
        attempts += 1;
    }
    drop(flapper);
    assert!(attempts >= 10, "only {attempts} attempts ran");
    assert!(
        truncated_seen > 0,
        "no run saw the file truncated in {attempts} attempts"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Paths that are not regular files: `inspect` refuses each at once (exit
/// 66, naming the path and what it is) instead of blocking on a FIFO's
/// open or following a link; `run --attach` refuses them too (67).
#[test]
fn inspect_and_attach_refuse_fifos_sockets_devices_directories_and_symlinks() {
    let dir = tempdir();
    let segment = segment_file(&dir, "real.seg", 1);
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let link = dir.join("link.seg");
    std::os::unix::fs::symlink(&segment, &link).unwrap();
    let subdir = dir.join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let plugin = dir.join("plugin.wasm");
    std::fs::write(&plugin, b"\0asm never compiled").unwrap();
    let cases: [(&Path, &str); 5] = [
        (&fifo, "is a FIFO"),
        (&sock, "is a socket"),
        (Path::new("/dev/null"), "is a character device"),
        (&subdir, "is a directory"),
        (&link, "is a symbolic link"),
    ];
    for (path, what) in cases {
        for json in [false, true] {
            let mut cmd = shmrt();
            cmd.arg("inspect");
            if json {
                cmd.arg("--json");
            }
            let out = output_within(cmd.arg(path), Duration::from_secs(20));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(66),
                "{}: {}",
                path.display(),
                text(&out)
            );
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(what), "{}: {err}", path.display());
        }
        let out = output_within(
            shmrt().args(["run", "--attach"]).arg(path).arg(&plugin),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(67),
            "{}: {}",
            path.display(),
            text(&out)
        );
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(what), "{}: {err}", path.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
