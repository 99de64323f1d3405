//! The C guest (examples/c-bench-guest, on the guest SDK's C ABI) against
//! the Rust bench guest, both as callbacks on the host's thread, in
//! alternating phases: 64-byte round trips and 1 MiB slot payloads
//! checksummed in place. The protocol is the same Rust code on both
//! sides; the ratios say what the C ABI costs.
//!
//! The binary does not carry the C guest: it is built at bench time, with
//! `shmrt build`'s code, into a temporary directory, when Zig is installed
//! and the source tree this shmrt was built from is there. Otherwise the
//! ratios are reported as not measured, saying why.

use std::path::{Path, PathBuf};

use shmrt::{Execution, Runtime, SandboxError};
use shmrt_primitives::checksum::sum64;

use super::host_thread::spawn_on_host_thread;
use super::slots::payload;
use super::{explain, finish, guest_round_trip};
use crate::cli::bench::BenchPlan;
use crate::cli::bench::measure::{
    Measured, PerPhase, batches, median, median_ratio, payload_samples,
};
use crate::cli::build_native::{self, Places};

/// The ratios of this family, judged only when the C guest could be
/// built.
pub(super) const RATIO_KEYS: [&str; 2] = ["c_guest_rtt_vs_rust", "c_guest_slot_1mib_vs_rust"];

/// Measures the family: `rtt_guest_callback_c` and `slot_1mib_callback_c`
/// with their ratios to the Rust guest. `Ok(Some(why))` when the C guest
/// could not be built here (no Zig, no source tree).
pub(super) fn record(
    runtime: &Runtime,
    rust_guest: &[u8],
    plan: BenchPlan,
    measured: &mut Measured,
    step: &mut dyn FnMut(&str),
) -> Result<Option<String>, SandboxError> {
    step("building examples/c-bench-guest");
    let c_guest = match build_c_guest() {
        Ok(wasm) => wasm,
        Err(why) => return Ok(Some(why)),
    };
    step("rtt_guest_callback_c");
    let (c, rust) = rtt_pair(runtime, &c_guest, rust_guest, plan)?;
    measured
        .paired
        .push(("c_guest_rtt_vs_rust", median_ratio(&c, &rust, median)));
    measured.latency("rtt_guest_callback_c", c.concat());
    step("slot_1mib_callback_c");
    let (c, rust) = slot_pair(runtime, &c_guest, rust_guest, plan, 1 << 20)?;
    measured
        .paired
        .push(("c_guest_slot_1mib_vs_rust", median_ratio(&c, &rust, median)));
    measured.latency("slot_1mib_callback_c", c.concat());
    Ok(None)
}

/// The source tree this shmrt was built from (runtime/cli is two levels
/// down).
fn source_root() -> &'static Path {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    cli.ancestors().nth(2).unwrap_or(cli)
}

/// The source tree, when it is still there with the C bench guest and
/// the SDK's C ABI.
fn source_tree() -> Option<PathBuf> {
    let root = source_root().to_path_buf();
    let complete = root.join("examples/c-bench-guest/bench.c").is_file()
        && root.join("guest-sdk/c/Cargo.toml").is_file();
    complete.then_some(root)
}

/// Builds examples/c-bench-guest as `shmrt build` does, into a temporary
/// directory removed afterwards; its bytes, or why it could not be built.
fn build_c_guest() -> Result<Vec<u8>, String> {
    let Some(root) = source_tree() else {
        return Err(format!(
            "needs the source tree (examples/c-bench-guest and guest-sdk/ of {})",
            source_root().display()
        ));
    };
    if !build_native::zig_available() {
        return Err("needs Zig: python3 -m pip install ziglang".into());
    }
    let tmp = std::env::temp_dir().join(format!("shmrt-bench-c-guest-{}", std::process::id()));
    let built = (|| -> anyhow::Result<Vec<u8>> {
        let dir = root.join("examples/c-bench-guest");
        let sdk = crate::cli::new::find_sdk(Some(&root))?;
        let (lang, sources) = build_native::detect(&dir)?
            .ok_or_else(|| anyhow::anyhow!("{} has no C sources", dir.display()))?;
        let wasm = build_native::build_in(&dir, lang, &sources, &sdk, &Places::under(&tmp))?;
        Ok(std::fs::read(&wasm)?)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    built.map_err(|e| {
        let why = format!("building examples/c-bench-guest failed: {e:#}");
        eprintln!("shmrt bench: {why}");
        why.lines().next().unwrap_or_default().to_string()
    })
}

/// 64-byte round trips with the C and the Rust guest echoing in place, as
/// callbacks, in alternating phases: ns per round trip, per phase: (C,
/// Rust).
fn rtt_pair(
    runtime: &Runtime,
    c_guest: &[u8],
    rust_guest: &[u8],
    plan: BenchPlan,
) -> Result<PerPhase, SandboxError> {
    let mut c = spawn_on_host_thread(runtime, c_guest, Execution::Callback, b"echo")?;
    let mut rust = spawn_on_host_thread(runtime, rust_guest, Execution::Callback, b"echo")?;
    // Both answer their first message.
    drop(c.receiver().recv()?);
    drop(rust.receiver().recv()?);
    let msg = [7u8; 64];
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases).max(4),
        ..plan
    };
    let (mut c_failure, mut rust_failure) = (None, None);
    let (mut in_c, mut in_rust) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for c_side in [i % 2 == 0, i % 2 == 1] {
            if c_side {
                in_c.push(batches(phase, || {
                    guest_round_trip(&mut c, &msg, &mut c_failure)
                }));
            } else {
                in_rust.push(batches(phase, || {
                    guest_round_trip(&mut rust, &msg, &mut rust_failure)
                }));
            }
        }
    }
    if let Some(e) = c_failure {
        return Err(explain(c, e));
    }
    if let Some(e) = rust_failure {
        return Err(explain(rust, e));
    }
    finish(c)?;
    finish(rust)?;
    Ok((in_c, in_rust))
}

/// `len`-byte payloads handed to the C and the Rust guest in a slot (each
/// written in place once, as in [`super::slots`]), checksummed in place
/// and answered with the sum, as callbacks, in alternating phases: ns per
/// hand-off, per phase: (C, Rust).
fn slot_pair(
    runtime: &Runtime,
    c_guest: &[u8],
    rust_guest: &[u8],
    plan: BenchPlan,
    len: usize,
) -> Result<PerPhase, SandboxError> {
    let mut sides = [
        (
            spawn_on_host_thread(runtime, c_guest, Execution::Callback, b"checksum")?,
            "c-bench-checksum",
            false,
            Vec::new(),
        ),
        (
            spawn_on_host_thread(runtime, rust_guest, Execution::Callback, b"checksum")?,
            "bench-checksum",
            false,
            Vec::new(),
        ),
    ];
    let data = payload(len);
    let want = sum64(&data);
    let phase = BenchPlan {
        payloads: plan.payloads.div_ceil(plan.phases).max(8),
        ..plan
    };
    let mut failure = None;
    'phases: for i in 0..plan.phases {
        for side in [i % 2, 1 - i % 2] {
            let (sb, name, filled, samples) = &mut sides[side];
            let r = payload_samples(phase, name, want, || {
                sb.sender().send_with(len, |mut buf| {
                    if !*filled {
                        buf.copy_from(&data);
                        *filled = true;
                    }
                })?;
                let reply = sb.receiver().recv()?;
                Ok(reply.bytes().u64_le(0).unwrap_or(0))
            });
            match r {
                Ok(r) => samples.push(r),
                Err(e) => {
                    failure = Some((side, e));
                    break 'phases;
                }
            }
        }
    }
    let [(c, _, _, in_c), (rust, _, _, in_rust)] = sides;
    match failure {
        Some((0, e)) => Err(explain(c, e)),
        Some((_, e)) => Err(explain(rust, e)),
        None => {
            finish(c)?;
            finish(rust)?;
            Ok((in_c, in_rust))
        }
    }
}
