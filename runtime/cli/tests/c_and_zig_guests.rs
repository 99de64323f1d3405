//! Plugins in C and Zig, built by `shmrt build` with Zig against the
//! guest SDK's C ABI (guest-sdk/c), pass the behaviour tests the Rust
//! examples pass: every framing, slot payloads both ways, replies in
//! place, the three execution modes, a timeout and the memory budget; and
//! misuse of the C ABI gives the documented error codes. Skipped, saying
//! so, when Zig is not installed (`python3 -m pip install ziglang`;
//! scripts/test-all.sh installs it).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use common::{TempDir, bytes, len32, parse_len32, run, shmrt, stderr, workspace};

const MODES: [&str; 3] = ["thread", "fiber", "callback"];

/// Whether Zig is there; says so once when it is not.
fn zig() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let has = Command::new("python3")
            .args(["-m", "ziglang", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has {
            eprintln!(
                "SKIPPED: C and Zig guest tests need Zig: `python3 -m pip install ziglang` \
                 (scripts/test-all.sh installs it)"
            );
        }
        has
    })
}

/// `shmrt build DIR` (DIR relative to the workspace), once per process.
fn built(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut map = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = map.get(dir) {
        return p.clone();
    }
    let wasm = build(&workspace().join(dir));
    map.insert(dir.to_string(), wasm.clone());
    wasm
}

fn build(dir: &Path) -> PathBuf {
    let out = shmrt()
        .arg("build")
        .arg(dir)
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("guests"),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", dir.display(), stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().expect("a path"))
}

/// The sum of `zig-checksum`: little-endian u64 words, the tail
/// zero-padded, wrapping.
fn sum64(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0u64, |sum, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        sum.wrapping_add(u64::from_le_bytes(w))
    })
}

#[test]
fn c_upper_answers_lines_in_every_execution_mode() {
    if !zig() {
        return;
    }
    let wasm = built("examples/c-upper");
    // Its callback leaves its cursors to the host: the record is exported.
    let module = wasmtime::Module::from_file(&wasmtime::Engine::default(), &wasm).unwrap();
    assert!(
        module
            .exports()
            .any(|e| e.name() == "SHMRT_CALLBACK_CURSORS"),
        "c-upper exports the SDK's callback cursor record"
    );
    let input: Vec<u8> = (0..3000)
        .flat_map(|i| format!("line {i} of c-upper\n").into_bytes())
        .collect();
    let want = String::from_utf8_lossy(&input).to_uppercase();
    for mode in MODES {
        let out = run(&["--exec", mode], &wasm, &input);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{mode}");
    }
}

/// Sizes around the inline threshold and every slot class: inline
/// messages and slot payloads both ways, upper-cased in place.
#[test]
fn c_upper_replies_in_place_inline_and_in_slots_with_len32_framing() {
    if !zig() {
        return;
    }
    let wasm = built("examples/c-upper");
    let mut sizes = vec![0usize, 1, 7, 247, 248, 249];
    for cap in [4096usize, 65536, 1 << 20] {
        sizes.extend([cap - 1, cap]);
    }
    let records: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u64, n))
        .collect();
    for mode in MODES {
        let out = run(
            &["--framing", "len32", "--exec", mode],
            &wasm,
            &len32(&records),
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let got = parse_len32(&out.stdout);
        assert_eq!(got.len(), records.len(), "{mode}");
        for (g, r) in got.iter().zip(&records) {
            assert!(
                *g == r.to_ascii_uppercase(),
                "{mode}: a {}-byte message came back wrong ({} bytes)",
                r.len(),
                g.len()
            );
        }
    }
}

#[test]
fn c_upper_streams_raw_bytes_exactly() {
    if !zig() {
        return;
    }
    let input = bytes(42, 3_000_000);
    let out = run(&["--framing", "raw"], &built("examples/c-upper"), &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == input.to_ascii_uppercase(),
        "raw output differs"
    );
}

#[test]
fn zig_checksum_sums_slot_payloads_in_place_in_every_execution_mode() {
    if !zig() {
        return;
    }
    let wasm = built("examples/zig-checksum");
    let input = bytes(7, 1_000_000);
    let want: String = input
        .chunks(300 * 1024)
        .map(|c| format!("{} {:016x}\n", c.len(), sum64(c)))
        .collect();
    for mode in MODES {
        let out = run(
            &["--framing", "raw", "--chunk", "300KiB", "--exec", mode],
            &wasm,
            &input,
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{mode}");
    }
}

/// The C bench guest's `checksum` mode (the `c_guest_*` workloads of
/// `shmrt bench`) reads payloads in place with SIMD loads, unaligned ones
/// when a slot payload starts 4 bytes past a boundary; its sums must equal
/// the word sum at every length, inline or in a slot, as the Rust bench
/// guest's do.
#[test]
fn c_bench_guest_checksum_matches_sum64_at_every_alignment_and_length() {
    if !zig() {
        return;
    }
    let wasm = built("examples/c-bench-guest");
    let lengths = [
        0, 1, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 200, 511, 512, 527, 528, 529, 543, 544, 1023,
        1024, 1025, 1040, 1041, 2049, 4095, 4096, 4097, 5000, 65535, 65536, 70001, 300_017,
    ];
    let mut records = vec![b"checksum".to_vec()];
    records.extend(
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| bytes(i as u64 + 1, len)),
    );
    let out = run(&["--framing", "len32"], &wasm, &len32(&records));
    assert!(out.status.success(), "{}", stderr(&out));
    let sums = parse_len32(&out.stdout);
    assert_eq!(sums.len(), lengths.len(), "one answer per payload");
    for (record, sum) in records[1..].iter().zip(&sums) {
        assert_eq!(
            sum.as_slice(),
            sum64(record).to_le_bytes(),
            "checksum of {} bytes",
            record.len()
        );
    }
}

#[test]
fn zig_checksum_answers_lines_and_len32_records() {
    if !zig() {
        return;
    }
    let wasm = built("examples/zig-checksum");
    let out = run(&[], &wasm, b"abc\n\n");
    assert!(out.status.success(), "{}", stderr(&out));
    // `lines` adds a newline after each answer, which has its own.
    let want = format!("3 {:016x}\n\n0 {:016x}\n\n", sum64(b"abc"), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let records = vec![bytes(1, 100), bytes(2, 70_000)];
    let out = run(&["--framing", "len32"], &wasm, &len32(&records));
    assert!(out.status.success(), "{}", stderr(&out));
    let got = parse_len32(&out.stdout);
    for (g, r) in got.iter().zip(&records) {
        assert_eq!(
            String::from_utf8_lossy(g),
            format!("{} {:016x}\n", r.len(), sum64(r))
        );
    }
}

#[test]
fn a_spinning_c_guest_is_ended_by_its_timeout() {
    if !zig() {
        return;
    }
    let start = std::time::Instant::now();
    let out = run(
        &["--timeout", "300ms"],
        &built("runtime/cli/tests/guests/c-misuse"),
        b"spin\n",
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out after 300ms"));
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn the_memory_budget_binds_a_c_guest() {
    if !zig() {
        return;
    }
    let wasm = built("examples/c-upper");
    let out = run(&["--max-memory", "64KiB"], &wasm, b"hello\n");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("memory limit"), "{}", stderr(&out));
    let out = run(&["--max-memory", "4MiB"], &wasm, b"hello\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
}

/// Every misuse of the C ABI gives its documented code (see
/// tests/guests/c-misuse/misuse.c and shmrt_guest.h).
#[test]
fn misuse_of_the_c_abi_returns_error_codes() {
    if !zig() {
        return;
    }
    let wasm = built("runtime/cli/tests/guests/c-misuse");
    let want = "null_data=-1 null_recv=-1 recv_while_held=-4 made_up=-2 reply_null=-1 release=0 \
                release_twice=-3 use_after_release=-3 send_null=-1 reserve_null=-1 reserve=0 \
                send_while_reserved=-4 over_commit=-5 abandon=0 commit_after_abandon=-3 \
                log_level=-16 log_not_utf8=-15 config_missing=-17 host_fn_missing=-17 \
                send_len_overflow=-16 log_len_overflow=-16 host_fn_len_overflow=-16 \
                host_fn_overlap=-16 config_overlap=-16 host_goodbye_is_0_or_1=1 peer=1\n";
    for mode in ["thread", "fiber"] {
        let out = run(&["--exec", mode], &wasm, b"misuse\nignored\n");
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{mode}");
        // A send after the plugin's goodbye is refused (exit 0 says so).
        let out = run(&["--exec", mode], &wasm, b"bye\n");
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

/// The scaffolded C plugin: its native test passes, it builds to at most
/// 64 KiB and runs in every mode; the Zig one builds and runs too.
#[test]
fn new_c_and_zig_plugins_build_test_and_run() {
    if !zig() {
        return;
    }
    let dir = TempDir::new("new-native");
    for (lang, name) in [("c", "hello-c"), ("zig", "hello-zig")] {
        let out = shmrt()
            .current_dir(dir.path())
            .args(["new", "--lang", lang, name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        let plugin = dir.path().join(name);
        if lang == "c" {
            let out = Command::new(plugin.join("test.sh")).output().unwrap();
            assert!(out.status.success(), "test.sh: {}", stderr(&out));
        }
        let wasm = build(&plugin);
        let size = std::fs::metadata(&wasm).unwrap().len();
        if lang == "c" {
            assert!(size <= 64 * 1024, "the new C plugin is {size} bytes");
        }
        for mode in MODES {
            let out = run(&["--exec", mode], &wasm, b"hello\nab\n");
            assert!(out.status.success(), "{lang} {mode}: {}", stderr(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), "olleh\nba\n");
        }
    }
}

/// The files under `dir`, each with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            files.push((rel, meta.len(), meta.modified().unwrap()));
        }
    }
    files.sort();
    files
}

/// Sets `dir` and everything in it read-only, or writable again.
#[cfg(unix)]
fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![dir.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                let mode = meta.permissions().mode();
                let mode = if read_only {
                    mode & !0o222
                } else {
                    mode | 0o200
                };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        dirs.push(d);
    }
    for d in dirs {
        let mode = if read_only { 0o555 } else { 0o755 };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// An installed SDK may be read-only: `shmrt new --lang c --sdk COPY` and
/// `shmrt build --sdk COPY` build the C ABI's library from it without
/// writing into it (no Cargo.lock, no target/). Tests run as root in CI,
/// where permissions do not stop a write: the copy is also compared
/// before and after.
#[cfg(unix)]
#[test]
fn a_c_plugin_builds_against_a_read_only_sdk() {
    if !zig() {
        return;
    }
    let dir = TempDir::new("ro-sdk");
    let sdk = dir.path().join("sdk");
    for part in ["guest-sdk", "primitives"] {
        copy_dir(&workspace().join(part), &sdk.join(part));
    }
    set_read_only(&sdk, true);
    struct Writable<'a>(&'a Path);
    impl Drop for Writable<'_> {
        fn drop(&mut self) {
            set_read_only(self.0, false);
        }
    }
    let _writable = Writable(&sdk);
    let before = snapshot(&sdk);

    let out = shmrt()
        .current_dir(dir.path())
        .args(["new", "--lang", "c", "hello", "--sdk"])
        .arg(&sdk)
        .output()
        .unwrap();
    assert!(out.status.success(), "shmrt new: {}", stderr(&out));
    let plugin = dir.path().join("hello");
    let out = Command::new(plugin.join("test.sh")).output().unwrap();
    assert!(out.status.success(), "test.sh: {}", stderr(&out));
    // The plugin's own target/, not a shared one.
    let out = shmrt()
        .arg("build")
        .arg(&plugin)
        .arg("--sdk")
        .arg(&sdk)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "shmrt build: {}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let wasm = PathBuf::from(stdout.lines().last().expect("a path"));
    assert!(wasm.starts_with(&plugin), "{}", wasm.display());
    for mode in MODES {
        let out = run(&["--exec", mode], &wasm, b"hello\n");
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "olleh\n");
    }
    assert_eq!(snapshot(&sdk), before, "shmrt wrote into the SDK");
}

/// Copies `from` to `to`, without build output (target/, Cargo.lock).
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

#[test]
fn without_zig_the_error_says_how_to_install_it() {
    let dir = TempDir::new("no-zig");
    std::fs::write(dir.path().join("p.c"), "int x;\n").unwrap();
    let out = shmrt()
        .arg("build")
        .arg(dir.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pip install ziglang"),
        "{}",
        stderr(&out)
    );
}

/// shmrt_guest.h, the library's exports and shmrt.zig name the same
/// functions, and the header's error codes are the library's.
#[test]
fn the_header_declares_what_the_library_exports() {
    let c = workspace().join("guest-sdk/c");
    let header = std::fs::read_to_string(c.join("include/shmrt_guest.h")).unwrap();
    // Every source file of the library: its exports and its codes.
    let mut lib = String::new();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(c.join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    sources.sort();
    for f in sources {
        lib += &std::fs::read_to_string(f).unwrap();
    }
    let zig = std::fs::read_to_string(c.join("zig/shmrt.zig")).unwrap();
    let names_after = |text: &str, marker: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .match_indices(marker)
            .map(|(i, _)| {
                text[i + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .filter(|n: &String| n.starts_with("shmrt_"))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    // Header prototypes: `shmrt_name(` at the start of a declaration
    // (after its return type), not inside the macros.
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| {
            !l.starts_with(' ') && !l.starts_with('#') && !l.starts_with('/') && l.contains('(')
        })
        .filter_map(|l| {
            let i = l.find("shmrt_")?;
            let name: String = l[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            l[i + name.len()..].starts_with('(').then_some(name)
        })
        .collect();
    declared.sort();
    let exported = names_after(&lib, "extern \"C\" fn ");
    assert_eq!(declared, exported, "shmrt_guest.h against src/");
    assert_eq!(
        names_after(&zig, "pub extern fn "),
        exported,
        "shmrt.zig against src/lib.rs"
    );
    // Error codes: `#define SHMRT_E_X (-n)` against codes.rs.
    for line in header.lines().filter(|l| l.starts_with("#define SHMRT_E_")) {
        let mut parts = line.split_whitespace().skip(1);
        let (name, value) = (parts.next().unwrap(), parts.next().unwrap());
        let value = value.trim_matches(|c| c == '(' || c == ')');
        assert!(
            lib.contains(&format!("\"{name}\"")),
            "{name} is not in codes.rs"
        );
        assert!(
            zig.contains(&format!("pub const {name}: i32 = {value};")),
            "{name} = {value} is not in shmrt.zig"
        );
        let konst = name.trim_start_matches("SHMRT_");
        assert!(
            lib.contains(&format!("pub const {konst}: i32 = {value};")),
            "{name} = {value} differs in codes.rs"
        );
    }
}

/// The plugin contract from C (runtime/cli/tests/guests/c-calls): calls by
/// name, a plugin error, configuration, a host function and its failure,
/// state kept across calls, an unknown name, in every execution mode.
#[test]
fn c_exports_are_called_by_name_with_config_and_host_functions_in_every_mode() {
    use std::sync::Arc;

    use shmrt::{CallError, Execution, HostFnError, HostFunctions, Runtime, SandboxOptions};

    if !zig() {
        return;
    }
    let wasm = std::fs::read(built("runtime/cli/tests/guests/c-calls")).unwrap();
    let mut functions = HostFunctions::new();
    functions.define("kv_get", |key, out| match key.to_vec().as_slice() {
        b"lang" => {
            out.write(b"C");
            Ok(())
        }
        other => Err(HostFnError::new(
            404,
            format!("no key {}", String::from_utf8_lossy(other)),
        )),
    });
    let functions = Arc::new(functions);
    let runtime = Runtime::new().unwrap();
    for execution in [Execution::Thread, Execution::Fiber, Execution::Callback] {
        let options = SandboxOptions {
            name: format!("c-calls-{}", execution.name()),
            execution,
            timeout: Some(std::time::Duration::from_secs(60)),
            config: Arc::new([("greeting".to_string(), "Ahoj".to_string())].into()),
            host_functions: Some(Arc::clone(&functions)),
            ..SandboxOptions::default()
        };
        let mut sandbox = runtime.spawn(&wasm, options).unwrap();
        assert_eq!(
            sandbox.call("greet", b"Zig").unwrap(),
            b"Ahoj, Zig!",
            "{execution:?}"
        );
        assert_eq!(sandbox.call("lookup", b"lang").unwrap(), b"C");
        match sandbox.call("lookup", b"nope") {
            Err(CallError::Plugin { code, message, .. }) => {
                assert_eq!(code, 2);
                assert!(message.contains("no key nope"), "{message}");
            }
            other => panic!("{execution:?}: {other:?}"),
        }
        let err = sandbox.call("fail", b"").unwrap_err();
        assert_eq!(err.plugin_code(), Some(7), "{err}");
        assert!(err.to_string().contains("asked to fail"), "{err}");
        let err = sandbox.call("absent", b"").unwrap_err();
        assert_eq!(
            err.plugin_code(),
            Some(shmrt::call_codes::NO_SUCH_EXPORT),
            "{err}"
        );
        assert_eq!(sandbox.call("count", b"").unwrap(), 5u32.to_le_bytes());
        assert_eq!(
            sandbox.close(std::time::Duration::from_secs(10)).unwrap(),
            0
        );
    }
}
