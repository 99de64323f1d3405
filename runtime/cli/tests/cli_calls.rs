//! `shmrt run --call NAME`, `--config` and `--config-file`, as a user runs
//! them, with examples/text-tools, in every execution mode.

mod common;

use common::{guest, in_exec_mode, len32, parse_len32, run, stderr};

const MODES: [&str; 3] = ["thread", "fiber", "callback"];

#[test]
fn each_line_is_a_call_and_its_output_a_line_in_every_mode() {
    let plugin = guest("examples/text-tools");
    let input: String = (0..200).map(|i| format!("name {i}\n")).collect();
    let want: String = (0..200).map(|i| format!("Hi, name {i}!\n")).collect();
    for mode in MODES {
        in_exec_mode(mode, || {
            let out = run(
                &["--call", "greet", "--config", "greeting=Hi"],
                &plugin,
                input.as_bytes(),
            );
            assert!(out.status.success(), "{mode}: {}", stderr(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{mode}");
        });
    }
}

#[test]
fn len32_records_are_calls_and_state_is_kept_between_them() {
    let plugin = guest("examples/text-tools");
    let records: Vec<Vec<u8>> = vec![b"aa".to_vec(), b"e\ni".to_vec(), Vec::new()];
    for mode in MODES {
        in_exec_mode(mode, || {
            let out = run(
                &["--call", "count_vowels", "--framing", "len32"],
                &plugin,
                &len32(&records),
            );
            assert!(out.status.success(), "{mode}: {}", stderr(&out));
            let got: Vec<String> = parse_len32(&out.stdout)
                .into_iter()
                .map(|r| String::from_utf8(r).unwrap())
                .collect();
            assert_eq!(
                got,
                [
                    r#"{"vowels":2,"chars":2,"total_vowels":2}"#,
                    r#"{"vowels":2,"chars":3,"total_vowels":4}"#,
                    r#"{"vowels":0,"chars":0,"total_vowels":4}"#,
                ],
                "{mode}"
            );
        });
    }
}

/// A call's error is reported with its input's number, the other calls
/// are answered in order, and the run ends with status 5.
#[test]
fn plugin_errors_are_reported_and_the_run_goes_on() {
    let plugin = guest("examples/text-tools");
    let input = b"{\"num\":9,\"den\":3}\n{\"num\":1,\"den\":0}\nnot json\n{\"num\":8,\"den\":-2}\n";
    let out = run(&["--call", "checked_div"], &plugin, input);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n-4\n");
    let err = stderr(&out);
    assert!(
        err.contains("input 2:") && err.contains("(code 22): division by zero"),
        "{err}"
    );
    assert!(err.contains("input 3:") && err.contains("code -2"), "{err}");
    assert!(err.contains("2 calls of `checked_div` failed"), "{err}");

    let out = run(&["--call", "no_such_fn"], &plugin, b"x\n");
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("it exports: count_vowels, greet, lookup, checked_div"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn configuration_comes_from_a_file_and_flags_and_bad_input_is_named() {
    let plugin = guest("examples/text-tools");
    let dir = common::TempDir::new("cli-calls-config");
    let file = dir.path().join("plugin.conf");
    std::fs::write(&file, "# the greeting\n\ngreeting = Moin\nother=1\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let out = run(
        &["--call", "greet", "--config-file", file_arg],
        &plugin,
        b"Ada\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"Moin, Ada!\n");
    // A flag wins over the file.
    let out = run(
        &[
            "--call",
            "greet",
            "--config-file",
            file_arg,
            "--config",
            "greeting=Tach",
        ],
        &plugin,
        b"Ada\n",
    );
    assert_eq!(out.stdout, b"Tach, Ada!\n", "{}", stderr(&out));

    std::fs::write(&file, "greeting Moin\n").unwrap();
    let out = run(
        &["--call", "greet", "--config-file", file_arg],
        &plugin,
        b"Ada\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("line 1: expected KEY=VALUE"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &["--call", "greet", "--config", "novalue"],
        &plugin,
        b"Ada\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--config novalue"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &["--call", "greet", "--restart", "on-failure"],
        &plugin,
        b"Ada\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A line longer than the largest message fails its own call only.
#[test]
fn an_overlong_line_fails_its_call_only() {
    let plugin = guest("examples/text-tools");
    let mut input = b"first\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', 2 << 20));
    input.extend_from_slice(b"\nlast\n");
    let out = run(&["--call", "greet"], &plugin, &input);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, first!\nHello, last!\n"
    );
    assert!(stderr(&out).contains("input 2:"), "{}", stderr(&out));
}
