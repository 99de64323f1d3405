//! Named segments left behind by a shmrt that died (SIGKILL): `inspect`
//! calls them stale, `shmrt run --segment PATH --replace-stale` reclaims
//! them, and a live segment is never replaced. The owner record lives in
//! an extended attribute of the file, where no guest reaches: a guest can
//! neither hide a stale segment nor make another program's file look like
//! one.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{guest, shmrt};
use shmrt::primitives::SegmentConfig;
use shmrt::{Owner, SegmentFile};

fn tempdir(what: &str) -> common::TempDir {
    common::TempDir::new(&format!("stale-{what}"))
}

fn inspect_json(path: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = shmrt()
        .args(["inspect", "--json"])
        .arg(path)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect --json printed invalid JSON: {e}"));
    (out.status.code(), v, common::stderr(&out))
}

/// `shmrt run --segment PATH` on echo, stdin kept open; returns once the
/// file is there and live.
fn serve(path: &Path, extra: &[&str]) -> Child {
    let child = shmrt()
        .args(["run", "--segment"])
        .arg(path)
        .args(extra)
        .arg(guest("examples/echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !path.exists() || inspect_json(path).1["owner"]["state"] != "live" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the segment file never appeared, or never became live"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn a_segment_left_by_a_killed_shmrt_is_stale_and_replaced_on_request() {
    let dir = tempdir("killed");
    let path = dir.join("seg");
    let plugin = guest("examples/echo");
    let path_arg = path.to_str().unwrap();

    let mut live = serve(&path, &[]);
    let (code, v, err) = inspect_json(&path);
    assert_eq!(code, Some(0), "{v:#}{err}");
    assert_eq!(v["owner"]["state"], "live", "{v:#}");
    assert_eq!(v["owner"]["pid"], live.id(), "{v:#}");
    assert_eq!(v["owner"]["process_running"], true, "{v:#}");

    // A live segment is never replaced, asked or not.
    for extra in [&[][..], &["--replace-stale"][..]] {
        let args = [&["--segment", path_arg][..], extra].concat();
        let out = common::run(&args, &plugin, b"x\n");
        assert!(!out.status.success());
        let err = common::stderr(&out);
        assert!(err.contains("in use by a live process"), "{err}");
        if !extra.is_empty() {
            assert!(err.contains("never replaced"), "{err}");
        }
    }
    // ... nor removed by the run that was refused, and still serves.
    assert!(path.exists(), "a refused run removed the live segment");
    let mut stdin = live.stdin.take().unwrap();
    stdin.write_all(b"still here\n").unwrap();
    let mut line = [0u8; 11];
    live.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"still here\n");

    live.kill().unwrap();
    live.wait().unwrap();
    drop(stdin);
    assert!(path.exists(), "SIGKILL leaves the file behind");

    let (code, v, err) = inspect_json(&path);
    assert_eq!(code, Some(4), "a stale segment is a problem: {v:#}{err}");
    assert_eq!(v["owner"]["state"], "stale", "{v:#}");
    assert_eq!(v["owner"]["lock_held"], false, "{v:#}");
    assert_eq!(v["owner"]["process_running"], false, "{v:#}");
    let problems = v["problems"].to_string();
    assert!(problems.contains("--replace-stale"), "{problems}");
    let text = shmrt().arg("inspect").arg(&path).output().unwrap();
    assert_eq!(text.status.code(), Some(4));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("owner: stale"), "{text}");
    assert!(!text.contains("no problems found"), "{text}");

    // Without the flag: refused, saying how to reclaim it.
    let out = common::run(&["--segment", path_arg], &plugin, b"x\n");
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("stale") && err.contains("--replace-stale"),
        "{err}"
    );

    // With it: reclaimed, served, and removed on exit as any segment.
    let out = common::run(
        &["--segment", path_arg, "--replace-stale"],
        &plugin,
        b"a\nb\n",
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(out.stdout, b"a\nb\n");
    assert!(!path.exists(), "removed on exit");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(leftovers.is_empty(), "files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A kept segment stays stale after its run, and a new run takes it over.
#[test]
fn a_kept_segment_is_stale_once_its_run_ends() {
    let dir = tempdir("kept");
    let path = dir.join("seg");
    let plugin = guest("examples/echo");
    let path_arg = path.to_str().unwrap();
    let out = common::run(&["--segment", path_arg, "--keep-segment"], &plugin, b"a\n");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (code, v, _) = inspect_json(&path);
    assert_eq!((code, &v["owner"]["state"]), (Some(4), &"stale".into()));

    let mut live = serve(&path, &["--replace-stale", "--keep-segment"]);
    let (code, v, _) = inspect_json(&path);
    assert_eq!((code, &v["owner"]["state"]), (Some(0), &"live".into()));
    assert_eq!(v["owner"]["pid"], live.id());
    drop(live.stdin.take());
    assert!(live.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two processes' worth of replacers race for one stale file: exactly one
/// gets it, and the loser does not take the winner's live segment.
#[test]
fn racing_replacers_take_a_stale_segment_once() {
    let dir = tempdir("race");
    let path = dir.join("seg");
    let config = SegmentConfig::single_guest();
    for round in 0..20 {
        drop(SegmentFile::create_named(&path, &config, true).unwrap());
        let file = std::fs::File::open(&path).unwrap();
        assert!(matches!(Owner::of(&file).unwrap(), Owner::Stale(_)));
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        SegmentFile::create_named_with(&path, &config, false, true)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let outcomes: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|_| ()).map_err(|e| format!("{e:?}")))
            .collect();
        let won = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        let file = std::fs::File::open(&path).unwrap();
        assert!(matches!(Owner::of(&file).unwrap(), Owner::Live(Some(_))));
        drop(results);
        assert!(!path.exists(), "round {round}: the winner removed it");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The owner record is no part of the format: the header's reserved
/// bytes stay zero (the reference crate validates it, our attach path
/// opens it), and a segment without a record (as vox-shm makes them, or a
/// copy of ours) is "unknown", healthy, and never replaced.
#[test]
fn the_owner_record_keeps_the_format_and_its_absence_is_not_stale() {
    let dir = tempdir("compat");
    let path = dir.join("seg");
    let seg = SegmentFile::create_named(&path, &SegmentConfig::single_guest(), true).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut header = [0u64; 16];
    // SAFETY: 128 bytes of plain integers.
    let bytes = unsafe { std::slice::from_raw_parts_mut(header.as_mut_ptr().cast::<u8>(), 128) };
    file.read_exact_at(bytes, 0).unwrap();
    assert_eq!(
        &bytes[84..128],
        &[0; 44],
        "nothing of shmrt's in the guest's bytes"
    );
    // SAFETY: the reference crate's header is 128 bytes, 8-aligned, of
    // integers and atomics, all valid for any bits.
    let theirs = unsafe { &*header.as_ptr().cast::<shm_primitives::SegmentHeader>() };
    theirs.validate().unwrap();
    drop(seg);
    SegmentFile::open_existing(&path).expect("our attach path opens it");
    assert!(matches!(Owner::of(&file).unwrap(), Owner::Stale(_)));

    // Another program's file: the same bytes, no record.
    let foreign = dir.join("foreign");
    std::fs::copy(&path, &foreign).unwrap();
    let (code, v, err) = inspect_json(&foreign);
    assert_eq!(code, Some(0), "{v:#}{err}");
    assert_eq!(v["owner"]["state"], "unknown");
    let e = SegmentFile::create_named_with(&foreign, &SegmentConfig::single_guest(), false, true)
        .expect_err("a file without a record is not replaced");
    let e = format!("{:#}", anyhow::Error::from(e));
    assert!(e.contains("no owner record"), "{e}");
    assert!(foreign.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `poke` lines of the probe guest that write `words` at `offset` of
/// its window, then a line it echoes once they are done.
fn pokes(offset: u64, words: &[u32]) -> String {
    let mut lines: String = (0..)
        .zip(words)
        .map(|(i, w)| format!("poke {} {w}\n", offset + 4 * i))
        .collect();
    lines += "done\n";
    lines
}

/// A `--segment` guest overwrites the header bytes where shmrt once kept
/// its owner record, then its host is killed: the file is still shmrt's
/// stale segment for `inspect` and `--replace-stale`.
#[test]
fn a_guest_can_not_erase_the_owner_record() {
    let dir = tempdir("erased");
    let path = dir.join("seg");
    let mut live = shmrt()
        .args(["run", "--segment"])
        .arg(&path)
        .arg(guest("runtime/tests/guests/probe"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = live.stdin.take().unwrap();
    // The header's reserved bytes after shmrt's feature word, zeroed.
    stdin.write_all(pokes(84, &[0; 11]).as_bytes()).unwrap();
    let mut done = [0u8; 5];
    live.stdout.as_mut().unwrap().read_exact(&mut done).unwrap();
    assert_eq!(&done, b"done\n");
    live.kill().unwrap();
    live.wait().unwrap();
    drop(stdin);

    let (code, v, err) = inspect_json(&path);
    assert_eq!(v["owner"]["state"], "stale", "{v:#}{err}");
    assert_eq!(v["owner"]["pid"], live.id(), "{v:#}");
    assert_eq!(code, Some(4), "{v:#}{err}");
    let echo = guest("examples/echo");
    let path_arg = path.to_str().unwrap();
    let out = common::run(&["--segment", path_arg, "--replace-stale"], &echo, b"a\n");
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(out.stdout, b"a\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Another program's segment, whose attached guest wrote a shmrt owner
/// record of a dead process into the header (its window is the whole
/// file): still another program's file, which `--replace-stale` leaves
/// alone.
#[test]
fn a_forged_owner_record_does_not_make_a_file_replaceable() {
    let dir = tempdir("forged");
    let made = dir.join("made");
    drop(SegmentFile::create_named(&made, &SegmentConfig::single_guest(), true).unwrap());
    let path = dir.join("theirs");
    std::fs::copy(&made, &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A pid that is gone: a child that was reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let mut forged = [0u8; 16];
    forged[0..4].copy_from_slice(b"OWNR");
    forged[4..8].copy_from_slice(&dead.to_le_bytes());
    forged[8..16].copy_from_slice(&12345u64.to_le_bytes());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&forged, 96)
        .unwrap();
    let forged_file = std::fs::read(&path).unwrap();
    assert_ne!(before, forged_file);

    let (_, v, err) = inspect_json(&path);
    assert_eq!(v["owner"]["state"], "unknown", "{v:#}{err}");
    let echo = guest("examples/echo");
    let out = common::run(
        &["--segment", path.to_str().unwrap(), "--replace-stale"],
        &echo,
        b"a\n",
    );
    assert!(!out.status.success(), "replaced another program's file");
    let err = common::stderr(&out);
    assert!(err.contains("no owner record"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        forged_file,
        "the file was touched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A guest given `--dir` access to its segment's directory links the
/// segment under another name; the link outlives the run (shmrt removes
/// the name it made), and another program then writes its own data into
/// that file (the same inode, so the owner record follows). Before, `shmrt
/// run --segment LINK --replace-stale` replaced that program's file; now
/// only a file that still holds the segment shmrt laid out is replaced.
#[test]
fn a_link_to_a_segment_that_another_program_filled_is_not_replaced() {
    let dir = tempdir("link");
    let linker = dir.join("link.wat");
    std::fs::write(
        &linker,
        r#"(module
  (import "shmrt" "ring" (func))
  (import "wasi_snapshot_preview1" "path_link"
    (func $link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "seg.shm")
  (data (i32.const 120) "victim.dat")
  (func (export "_start")
    (drop (i32.atomic.load (i32.const 0)))
    (call $exit (call $link (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
                            (i32.const 3) (i32.const 120) (i32.const 10)))))"#,
    )
    .unwrap();
    let segments = dir.join("d");
    std::fs::create_dir_all(&segments).unwrap();
    let out = shmrt()
        .args(["run", "--segment"])
        .arg(segments.join("seg.shm"))
        .arg("--dir")
        .arg(&segments)
        .arg(&linker)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let victim = segments.join("victim.dat");
    assert!(victim.exists(), "the guest's link outlived the run");
    // Another program writes its own data into the file (O_TRUNC keeps the
    // inode, and with it the extended attribute).
    std::fs::write(&victim, b"IMPORTANT DATA ".repeat(100)).unwrap();
    let out = shmrt()
        .args(["run", "--replace-stale", "--segment"])
        .arg(&victim)
        .arg(guest("examples/echo"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("no longer holds that segment"), "{err}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"IMPORTANT DATA ".repeat(100),
        "the other program's data is intact"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
