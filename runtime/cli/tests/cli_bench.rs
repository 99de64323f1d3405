//! `shmrt bench --quick --json` runs every workload and reports the
//! documented names, units and ratio keys. Nothing here is timed: the
//! targets are judged from the report, on the machine it ran on.

mod common;

#[test]
fn bench_quick_json_reports_every_workload_and_ratio() {
    let out = common::shmrt()
        .args(["bench", "--quick", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    // The CPUs the process may use, counted before the bench pins itself.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let machine = v["machine"].as_str().unwrap_or_default();
    assert!(machine.contains(&format!(", {cpus} cores")), "{machine}");
    let names: Vec<(&str, &str)> = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert!(w["median"].as_f64().is_some_and(|m| m > 0.0), "{w}");
            (w["name"].as_str().unwrap(), w["unit"].as_str().unwrap())
        })
        .collect();
    for (name, unit) in [
        ("floor_cacheline_rtt", "ns"),
        ("rtt_native", "ns"),
        ("rtt_guest_spin", "ns"),
        ("rtt_guest_parked", "ns"),
        ("rtt_native_futex", "ns"),
        ("stream_native", "msg/s"),
        ("stream_guest", "msg/s"),
        ("slot_4kib", "ns"),
        ("slot_64kib", "ns"),
        ("slot_1mib", "ns"),
        ("copy_call_4kib", "ns"),
        ("copy_call_64kib", "ns"),
        ("copy_call_1mib", "ns"),
        ("slot_stream_1mib", "ns"),
        ("cli_lines", "ms"),
        ("cat_lines", "ms"),
        ("cli_raw", "ms"),
        ("cat_raw", "ms"),
        ("spawn_sandbox", "us"),
        ("spawn_plain_wasmtime", "us"),
        ("density_live", "sandboxes"),
        ("idle_rss_per_sandbox", "KiB"),
        ("idle_vmrss_per_sandbox", "KiB"),
        ("maps_per_sandbox", "maps"),
    ] {
        assert!(
            names.contains(&(name, unit)),
            "{name} ({unit}) missing from {names:?}"
        );
    }
    for key in [
        "guest_rtt_vs_native",
        "guest_stream_vs_native",
        "slot_1mib_vs_copy_call",
        "parked_rtt_vs_native_futex",
        "cli_lines_vs_cat",
        "cli_raw_vs_cat",
        "spawn_vs_plain_wasmtime",
    ] {
        assert!(
            v["ratios"][key].as_f64().is_some_and(|r| r > 0.0),
            "ratio {key} missing: {}",
            v["ratios"]
        );
    }
    // A quick run spawns 1,000 sandboxes: it can not meet the density
    // target of 10,000, so it does not judge it.
    let density = &v["targets"]["density_live"];
    assert!(density["met"].is_null(), "{density}");
    assert!(
        density["not_measured"]
            .as_str()
            .is_some_and(|why| why.contains("10,000")),
        "{density}"
    );
    assert!(v["targets"]["guest_rtt_vs_native"]["met"].is_boolean());
    // The C guest against the Rust one: measured when Zig is there (the
    // source tree is, for a test), else reported, saying why.
    let zig = std::process::Command::new("python3")
        .args(["-m", "ziglang", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    for (key, workload) in [
        ("c_guest_rtt_vs_rust", "rtt_guest_callback_c"),
        ("c_guest_slot_1mib_vs_rust", "slot_1mib_callback_c"),
    ] {
        let target = &v["targets"][key];
        if zig {
            assert!(
                v["ratios"][key].as_f64().is_some_and(|r| r > 0.0),
                "ratio {key} missing: {}",
                v["ratios"]
            );
            assert!(target["met"].is_boolean(), "{key}: {target}");
            assert!(names.contains(&(workload, "ns")), "{workload} missing");
        } else {
            assert!(v["ratios"][key].is_null(), "{key}: {}", v["ratios"]);
            assert!(
                target["not_measured"]
                    .as_str()
                    .is_some_and(|why| why.contains("pip install ziglang")),
                "{key}: {target}"
            );
        }
    }
}

/// The bench guest's `checksum` mode reads payloads in place with SIMD
/// loads, unaligned ones when a slot payload starts 4 bytes past a
/// boundary; its sums must equal `sum64` at every length, inline or in a
/// slot.
#[test]
fn bench_guest_checksum_matches_sum64_at_every_alignment_and_length() {
    let plugin = common::guest("examples/bench-guest");
    let lengths = [
        0, 1, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 200, 511, 512, 527, 528, 529, 543, 544, 1023,
        1040, 1041, 4095, 4096, 4097, 5000, 65535, 65536, 70001, 300_017,
    ];
    let mut records = vec![b"checksum".to_vec()];
    records.extend(
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| common::bytes(i as u64 + 1, len)),
    );
    let out = common::run(&["--framing", "len32"], &plugin, &common::len32(&records));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let sums = common::parse_len32(&out.stdout);
    assert_eq!(sums.len(), lengths.len(), "one answer per payload");
    for (record, sum) in records[1..].iter().zip(&sums) {
        assert_eq!(
            sum.as_slice(),
            shmrt_primitives::checksum::sum64(record).to_le_bytes(),
            "checksum of {} bytes",
            record.len()
        );
    }
}
