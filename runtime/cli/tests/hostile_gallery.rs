//! A gallery of hostile guests. Each ends with its own clear error (or is
//! served correctly), with no host panic, no signal and no hang, and other
//! sandboxes go on unaffected.

mod common;

use std::time::Duration;

use common::{guest, run, stderr};
use shmrt::primitives::{SegmentConfig, SegmentLayout};
use shmrt::{Runtime, SandboxError, SandboxOptions};

/// Writes a hand-made module for this file's tests.
fn wat_file(name: &str, text: &str) -> std::path::PathBuf {
    common::write_wat("gallery", name, text)
}

fn layout() -> SegmentLayout {
    SegmentLayout::compute(&SegmentConfig::single_guest()).unwrap()
}

fn probe() -> std::path::PathBuf {
    guest("runtime/tests/guests/probe")
}

/// `poke` lines writing `words` at the start of the G2H ring data, then
/// `write = len`, as a guest forging a frame would.
fn forged_frame(words: &[u32]) -> String {
    let l = layout();
    let ring = l.g2h_ring_offset(0);
    let mut lines = String::new();
    for (i, w) in words.iter().enumerate() {
        lines += &format!("poke {} {}\n", ring + 128 + 4 * i as u64, w);
    }
    lines += &format!("poke {} {}\n", ring, 4 * words.len());
    lines
}

fn assert_protocol_error(input: &str, needle: &str) {
    let out = run(&[], &probe(), input.as_bytes());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(
        err.contains("protocol violation") && err.contains(needle),
        "expected {needle:?} in: {err}"
    );
    assert!(!common::host_panicked(&err), "{err}");
}

#[test]
fn a_ring_cursor_past_the_capacity() {
    let l = layout();
    assert_protocol_error(
        &format!("poke {} 1000000\n", l.g2h_ring_offset(0)),
        "write cursor 1000000 is past the capacity 65536",
    );
}

#[test]
fn a_violation_is_the_status_even_when_the_stop_interrupts_the_guest() {
    // The guest is busy when the host stops it for the forged cursor: the
    // stop traps it, and the status is still the violation, not the trap.
    let l = layout();
    assert_protocol_error(
        &format!("poke {} 1000000\nspin\n", l.g2h_ring_offset(0)),
        "write cursor 1000000 is past the capacity 65536",
    );
}

#[test]
fn a_watermark_past_the_capacity() {
    let l = layout();
    assert_protocol_error(
        &format!("poke {} 70000\n", l.g2h_ring_offset(0) + 4),
        "watermark cursor 70000",
    );
}

#[test]
fn a_frame_with_zero_total_len() {
    assert_protocol_error(&forged_frame(&[0, 0]), "total_len 0 is invalid");
}

#[test]
fn a_frame_with_an_unaligned_total_len() {
    assert_protocol_error(&forged_frame(&[10, 0, 0]), "total_len 10 is invalid");
}

#[test]
fn a_frame_with_a_huge_total_len() {
    assert_protocol_error(
        &forged_frame(&[0xFFFF_FFF0, 0]),
        "total_len 4294967280 is invalid",
    );
}

#[test]
fn a_frame_with_both_flags() {
    assert_protocol_error(&forged_frame(&[20, 3, 0, 0, 0]), "flags 0x03");
}

#[test]
fn an_inline_length_past_the_frame() {
    assert_protocol_error(
        &forged_frame(&[12, 100 << 16, 0]),
        "inline_payload_len 100 exceeds",
    );
}

#[test]
fn a_slot_ref_with_a_bad_class() {
    assert_protocol_error(&forged_frame(&[20, 1, 9, 0, 0]), "class_idx 9 out of range");
}

#[test]
fn a_slot_ref_with_a_bad_index() {
    assert_protocol_error(
        &forged_frame(&[20, 1, 0, 64, 0]),
        "slot_idx 64 out of range",
    );
}

#[test]
fn a_slot_ref_with_a_forged_generation() {
    assert_protocol_error(
        &forged_frame(&[20, 1, 0, 3, 77]),
        "generation is 0, the reference says 77",
    );
}

#[test]
fn a_slot_ref_to_a_slot_already_freed() {
    // Generation 0 matches a never-used slot, which is Free: a double free.
    assert_protocol_error(&forged_frame(&[20, 1, 0, 3, 0]), "is not allocated");
}

#[test]
fn an_out_of_range_free_list_head_then_the_host_allocates() {
    let runtime = Runtime::new().unwrap();
    let mut sb = runtime
        .spawn_file(
            &probe(),
            SandboxOptions {
                name: "head".into(),
                ..SandboxOptions::default()
            },
        )
        .unwrap();
    let head = layout().classes()[0].header_offset + 8;
    sb.sender()
        .send(format!("poke {head} 5000").as_bytes())
        .unwrap();
    // The echo of a later message proves the poke was done.
    sb.sender().send(b"sync").unwrap();
    assert_eq!(sb.receiver().recv().unwrap().to_vec(), b"sync");
    match sb.sender().send(&[7; 1000]) {
        Err(SandboxError::Protocol { error, .. }) => {
            assert!(
                error
                    .to_string()
                    .contains("free list free_head = 5000 out of range"),
                "{error}"
            );
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(sb.join().is_err(), "the sandbox was stopped");
}

#[test]
fn a_free_list_cycle_then_the_host_allocates() {
    let l = layout();
    let c = l.classes()[0];
    // slot 1 -> slot 0 -> slot 1 ...: the list loops.
    let big = "z".repeat(1000);
    let input = format!(
        "poke {} 0\n{big}\n{big}\n{big}\n{big}\n",
        c.meta_offset + 16 + 12
    );
    let out = run(&["--timeout", "20s"], &probe(), input.as_bytes());
    let err = stderr(&out);
    // Whoever pops the looping slot first finds it allocated: the host
    // reports the violation (76), the guest's own send fails (1), or the
    // guest finds the corrupt slot in what the host sent and panics (70).
    assert!(
        matches!(out.status.code(), Some(76) | Some(70) | Some(1) | Some(0)),
        "{err}"
    );
    assert!(
        !common::host_panicked(&err) && !err.contains("timed out"),
        "{err}"
    );
}

#[test]
fn a_scribbled_header_and_peer_entry_do_not_stop_the_host() {
    // The host keeps its own copy of the layout and serves the guest on.
    let input = "poke 0 0\npoke 4 0\npoke 32 77\npoke 36 1\npoke 68 9\npoke 128 99\npoke 144 0\npoke 148 0\nhello\nstill here\n";
    let out = run(&[], &probe(), input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nstill here\n");
}

#[test]
fn a_guest_scribbling_continuously_while_the_host_reads() {
    for seed in [1, 7, 42] {
        let out = run(
            &["--timeout", "30s"],
            &probe(),
            format!("chaos {seed} 300000\n").as_bytes(),
        );
        let err = stderr(&out);
        // Served, stopped for a violation, or ended by its own scribbling:
        // never a host panic or a hang.
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 70 | 76)),
            "seed {seed}: {err}"
        );
        assert!(!common::host_panicked(&err), "seed {seed}: {err}");
    }
}

#[test]
fn huge_and_invalid_utf8_log_messages_are_cut_and_replaced() {
    let mut input = b"log 3 ".to_vec();
    input.extend(std::iter::repeat_n(0xFFu8, 100_000));
    input.extend(b"\nbye\n");
    let out = run(&[], &probe(), &input);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains('\u{FFFD}') && err.contains("[truncated]"),
        "{err}"
    );
    assert!(
        err.len() < 30_000,
        "the log line was cut: {} bytes",
        err.len()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
}

#[test]
fn an_import_called_with_an_out_of_range_pointer() {
    let out = run(&[], &probe(), b"badlog\n");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("outside linear memory"), "{err}");
}

#[test]
fn an_infinite_loop_under_fuel_and_a_memory_bomb_under_a_limit() {
    let spin = wat_file(
        "spin.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32)
               (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)) (i32.const 0)))"#,
    );
    let out = run(&["--fuel", "5000000"], &spin, b"");
    assert_eq!(out.status.code(), Some(71), "{}", stderr(&out));
    assert!(stderr(&out).contains("out of fuel"));

    // Grows by 1 MiB until refused, then traps: the run ends with the
    // memory-limit status and says so.
    let bomb = wat_file(
        "bomb.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32)
               (drop (i32.atomic.load (i32.const 0)))
               (block $done (loop $l
                 (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
                 (br $l)))
               unreachable))"#,
    );
    let out = run(&["--max-memory", "8MiB"], &bomb, b"");
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("memory limit reached"),
        "{}",
        stderr(&out)
    );
}

/// What a module does before its entry point is held to the same limits:
/// its declared initial memory, a start function growing memory, a start
/// function looping (fuel and deadline). A start function's failure is
/// the guest's, with its own status; a module too large for the limit is
/// refused before any of its code runs.
#[test]
fn initial_memory_and_start_functions_are_held_to_the_limits() {
    // 256 MiB of initial memory, touched at 190 MiB.
    let big = wat_file(
        "big-initial.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 4096)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32)
               (drop (i32.atomic.load (i32.const 0)))
               (i32.store (i32.const 200000000) (i32.const 1))
               (i32.const 0)))"#,
    );
    let out = run(&["--max-memory", "8MiB"], &big, b"");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("its initial linear memories and tables together are larger than the memory limit of 8388608 bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(&[], &big, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "without a limit: {}",
        stderr(&out)
    );

    // A start function grows by 250 MiB before the window is placed: the
    // growth is refused (-1: the window follows the initial pages, and only
    // the runtime's own growth places it), so the store at 190 MiB traps,
    // under a limit or not.
    let grow = wat_file(
        "start-grows.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func $grow (drop (memory.grow (i32.const 4000))))
             (start $grow)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32)
               (drop (i32.atomic.load (i32.const 0)))
               (i32.store (i32.const 200000000) (i32.const 1))
               (i32.const 0)))"#,
    );
    let out = run(&["--max-memory", "8MiB"], &grow, b"");
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    let out = run(&[], &grow, b"");
    assert_eq!(
        out.status.code(),
        Some(70),
        "without a limit: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("out of bounds memory access"),
        "{}",
        stderr(&out)
    );

    // A start function that never returns runs out of fuel.
    let spin = wat_file(
        "start-spins.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func $spin (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)))
             (start $spin)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32) (i32.const 0)))"#,
    );
    let out = run(&["--fuel", "5000000"], &spin, b"");
    assert_eq!(out.status.code(), Some(71), "{}", stderr(&out));
    // So does a WASI reactor's `_initialize`, run before the entry point
    // or the first callback, in every mode.
    let init = wat_file(
        "initialize-spins.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func (export "_initialize") (loop $l (drop (i32.atomic.load (i32.const 0))) (br $l)))
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32) (i32.const 0)))"#,
    );
    for mode in ["callback", "thread", "fiber"] {
        let out = run(&["--fuel", "5000000", "--exec", mode], &init, b"");
        assert_eq!(out.status.code(), Some(71), "{mode}: {}", stderr(&out));
    }
    // A start function that traps is the guest trapping (70); a data
    // segment past the memory is the module's fault (65).
    let trap = wat_file(
        "start-traps.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (func $boom unreachable) (start $boom)
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#,
    );
    let out = run(&[], &trap, b"");
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    let data = wat_file(
        "data-past-memory.wat",
        r#"(module (import "shmrt" "ring" (func)) (memory (export "memory") 1)
             (data (i32.const 65530) "0123456789")
             (func (export "shmrt_main") (export "shmrt_on_messages") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#,
    );
    let out = run(&[], &data, b"");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("instantiation failed"),
        "{}",
        stderr(&out)
    );
    // ... and past its deadline (it runs before the entry point).
    let out = run(&["--timeout", "300ms"], &spin, b"");
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 300ms"),
        "{}",
        stderr(&out)
    );
}

/// One sandbox breaking the protocol stops only itself.
#[test]
fn a_violating_sandbox_leaves_the_others_running() {
    let runtime = Runtime::new().unwrap();
    let options = |n: &str| SandboxOptions {
        name: n.into(),
        ..SandboxOptions::default()
    };
    let mut bad = runtime.spawn_file(&probe(), options("bad")).unwrap();
    let mut good = runtime
        .spawn_file(&guest("examples/echo"), options("good"))
        .unwrap();
    let l = layout();
    bad.sender()
        .send(format!("poke {} 999999", l.g2h_ring_offset(0)).as_bytes())
        .unwrap();
    match bad.receiver().recv_timeout(Some(Duration::from_secs(20))) {
        Err(SandboxError::Protocol { sandbox, .. }) => assert_eq!(sandbox, "bad"),
        other => panic!(
            "expected a protocol error, got {:?}",
            other.map(|m| m.map(|m| m.len()))
        ),
    }
    assert!(bad.join().is_err(), "the violating sandbox was stopped");
    for i in 0..500 {
        let msg = format!("still fine {i}");
        good.sender().send(msg.as_bytes()).unwrap();
        assert_eq!(good.receiver().recv().unwrap().to_vec(), msg.as_bytes());
    }
    good.sender().goodbye();
    assert_eq!(good.join().unwrap(), 0);
}

/// The cases driven by the probe guest (forged frames and cursors, a
/// scribbled pool and header, hostile logs and pointers).
fn probe_cases() {
    a_ring_cursor_past_the_capacity();
    a_violation_is_the_status_even_when_the_stop_interrupts_the_guest();
    a_watermark_past_the_capacity();
    a_frame_with_zero_total_len();
    a_frame_with_an_unaligned_total_len();
    a_frame_with_a_huge_total_len();
    a_frame_with_both_flags();
    an_inline_length_past_the_frame();
    a_slot_ref_with_a_bad_class();
    a_slot_ref_with_a_bad_index();
    a_slot_ref_with_a_forged_generation();
    a_slot_ref_to_a_slot_already_freed();
    an_out_of_range_free_list_head_then_the_host_allocates();
    a_free_list_cycle_then_the_host_allocates();
    a_scribbled_header_and_peer_entry_do_not_stop_the_host();
    a_guest_scribbling_continuously_while_the_host_reads();
    huge_and_invalid_utf8_log_messages_are_cut_and_replaced();
    an_import_called_with_an_out_of_range_pointer();
}

/// The hand-made modules of the limit cases export one function as both
/// entries: run as they are (`shmrt run` makes a plugin with a callback
/// one), they are callbacks; here they run on a thread of their own, with
/// the same statuses.
#[test]
fn the_limits_hold_for_thread_guests() {
    common::in_exec_mode("thread", || {
        an_infinite_loop_under_fuel_and_a_memory_bomb_under_a_limit();
        initial_memory_and_start_functions_are_held_to_the_limits();
    });
}

/// The whole gallery with the guest as a fiber on shmrt's thread: the
/// same errors, statuses and limits.
#[test]
fn the_gallery_holds_for_fiber_guests() {
    common::in_exec_mode("fiber", || {
        probe_cases();
        an_infinite_loop_under_fuel_and_a_memory_bomb_under_a_limit();
        initial_memory_and_start_functions_are_held_to_the_limits();
    });
}

/// The probe's cases with the guest as a callback (the limit cases run as
/// callbacks when run as they are: their modules export the callback).
#[test]
fn the_gallery_holds_for_callback_guests() {
    common::in_exec_mode("callback", probe_cases);
}

/// Names in a module reach shmrt's error messages (an import it does not
/// define): they are printed as one line of plain text, with no escape
/// sequence for the terminal and no line break that could start a forged
/// log line (before, both went out raw).
#[test]
fn names_in_a_module_can_not_drive_the_terminal_or_forge_a_line() {
    let module = wat_file(
        "bad-import-name.wat",
        r#"(module
             (import "shmrt" "ring\1b]0;pwned\07\1b[2J\0a2026-12-07T16:00:00Z  INFO shmrt: plugin ended\e2\80\a8x" (func))
             (memory (export "memory") 1)
             (func (export "shmrt_main") (result i32) (drop (i32.atomic.load (i32.const 0))) (i32.const 0)))"#,
    );
    let out = run(&[], &module, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(!err.contains('\u{2028}'), "{err:?}");
    assert!(
        !err.lines()
            .any(|l| l.contains("INFO shmrt: plugin ended") && !l.starts_with("shmrt: ")),
        "{err:?}"
    );
    assert!(
        err.contains("\\u{1b}"),
        "the escape is shown escaped: {err:?}"
    );
}
