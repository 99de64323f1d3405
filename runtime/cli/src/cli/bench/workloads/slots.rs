//! Throughput between two cores: streams of small messages through the
//! rings (native against guest), and payloads handed over in slots,
//! checksummed in place by the guest, against the copy-call baseline, one
//! at a time and streamed.

use std::time::Instant;

use shmrt::SpinBudget;
use shmrt::{Runtime, Sandbox, SandboxError};
use shmrt_primitives::SendError;
use shmrt_primitives::checksum::sum64;

use super::copy_call::CopyCallGuest;
use super::{NativePeer, explain, finish, heap_segment, spawn_bench};
use crate::cli::bench::BenchPlan;
use crate::cli::bench::cpus::Cpus;
use crate::cli::bench::measure::{Measured, PerPhase, median, median_ratio, payload_samples};
use crate::cli::bench::report::Workload;

/// Measures the family: `stream_native` and `stream_guest` with their
/// ratio, the slot and copy-call payloads of each size with the 1 MiB
/// ratio, and `slot_stream_1mib`.
pub(super) fn record(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
    measured: &mut Measured,
    step: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    step("stream_native, stream_guest");
    let (native, in_guest) = stream_pair(runtime, guest, plan, cpus)?;
    measured.paired.push((
        "guest_stream_vs_native",
        median_ratio(
            &in_guest.iter().map(|&r| vec![r]).collect::<Vec<_>>(),
            &native.iter().map(|&r| vec![r]).collect::<Vec<_>>(),
            |phase| phase[0],
        ),
    ));
    for (name, runs) in [("stream_native", native), ("stream_guest", in_guest)] {
        measured.workloads.push(Workload {
            name,
            unit: "msg/s",
            median: median(&runs),
            p99: None,
        });
    }
    for (slot, copy, len) in [
        ("slot_4kib", "copy_call_4kib", 4096),
        ("slot_64kib", "copy_call_64kib", 65536),
        ("slot_1mib", "copy_call_1mib", 1 << 20),
    ] {
        step(&format!("{slot}, {copy}"));
        let (slots, copies) = payload_pair(runtime, guest, plan, len, cpus)?;
        measured.latency_pair(
            (len == 1 << 20).then_some("slot_1mib_vs_copy_call"),
            (slot, slots),
            (copy, copies),
        );
    }
    step("slot_stream_1mib");
    measured.latency(
        "slot_stream_1mib",
        slot_stream(runtime, guest, plan, 1 << 20, cpus)?,
    );
    Ok(())
}

/// Streams of 64-byte messages one way, native to native and host to
/// guest, in alternating phases of `plan.stream / plan.phases` messages;
/// msg/s per phase. The consumer counts; a 1-byte message starts a phase
/// and an empty one ends it (the consumer answers both with its count and
/// parks after the end).
fn stream_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
) -> Result<(Vec<f64>, Vec<f64>), SandboxError> {
    let (_region, seg) = heap_segment();
    let (mut tx, mut rx) = seg.host_channel(0).expect("fresh rings");
    let (mut gtx, mut grx) = seg.guest_channel(0).expect("fresh rings");
    let peer = NativePeer::start(cpus, move |rest, stopping| {
        // A pure consumer, as the guest's is.
        grx.set_lazy_release(true);
        let mut count = 0u64;
        while !stopping() {
            let len = match grx.try_recv() {
                Ok(Some(m)) => m.len(),
                _ => {
                    std::hint::spin_loop();
                    continue;
                }
            };
            if len > 1 {
                count += len as u64 / 64;
                continue;
            }
            grx.publish();
            while gtx.send(&count.to_le_bytes()) == Err(SendError::Full) {}
            if len == 0 && !rest() {
                return;
            }
        }
    });
    let mut sb = spawn_bench(runtime, guest, "stream", SpinBudget(u32::MAX), cpus)?;
    let per_phase = plan.stream.div_ceil(plan.phases);
    let msg = [5u8; 64];
    let (mut native, mut in_guest) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        let want = ((i + 1) * per_phase) as u64;
        for guest_side in [i % 2 == 1, i % 2 == 0] {
            if guest_side {
                let r = guest_stream_phase(&mut sb, &msg, per_phase, want);
                match r {
                    Ok(rate) => in_guest.push(rate),
                    Err(e) => {
                        peer.finish();
                        return Err(explain(sb, e));
                    }
                }
            } else {
                peer.wake();
                let mut mark = |tx: &mut shmrt_primitives::Sender, m: &[u8]| {
                    tx.send(m).expect("room");
                    loop {
                        if let Ok(Some(r)) = rx.try_recv() {
                            // SAFETY: the peer is our own native thread,
                            // which follows the protocol: it does not write
                            // a message it has sent.
                            break count_of(unsafe { r.as_bytes() });
                        }
                        std::hint::spin_loop();
                    }
                };
                mark(&mut tx, &[1]);
                let t = Instant::now();
                let mut sent = 0;
                while sent < per_phase {
                    match tx.send(&msg) {
                        Ok(()) => sent += 1,
                        Err(_) => back_off(),
                    }
                }
                let count = mark(&mut tx, &[]);
                native.push(per_phase as f64 / t.elapsed().as_secs_f64());
                assert_eq!(count, want, "the native consumer's count");
            }
        }
    }
    peer.finish();
    sb.sender().goodbye();
    while sb.receiver().recv().is_ok() {}
    sb.join()?;
    Ok((native, in_guest))
}

/// One guest phase of [`stream_pair`]: `per_phase` messages streamed to
/// the counting guest, between the 1-byte message that starts the phase
/// and the empty one that ends it; msg/s, once the guest's count is
/// checked against `want`.
fn guest_stream_phase(
    sb: &mut Sandbox,
    msg: &[u8],
    per_phase: usize,
    want: u64,
) -> Result<f64, SandboxError> {
    sb.sender().send(&[1])?;
    sb.receiver().recv()?;
    let t = Instant::now();
    let mut sent = 0;
    while sent < per_phase {
        if sb.sender().try_send_no_notify(msg)? {
            sent += 1;
        } else {
            sb.sender().notify();
            back_off();
        }
    }
    sb.sender().send(&[])?;
    let count = count_of(&sb.receiver().recv()?.to_vec());
    let rate = per_phase as f64 / t.elapsed().as_secs_f64();
    if count != want {
        return Err(SandboxError::Trap {
            sandbox: "bench-stream".into(),
            message: format!("counted {count} of {want}"),
        });
    }
    Ok(rate)
}

/// The count a stream's consumer answers (u64 LE); 0 for a malformed one.
fn count_of(m: &[u8]) -> u64 {
    u64::from_le_bytes(m.try_into().unwrap_or([0; 8]))
}

/// What a streaming producer does when the ring is full: wait a little
/// before looking at the consumer's cursor again, so as not to pull its
/// cache line away from the consumer with every look.
fn back_off() {
    for _ in 0..64 {
        std::hint::spin_loop();
    }
}

/// `len` bytes of a fixed pattern, the payload every hand-off carries.
pub(super) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

/// Hand-offs of `len`-byte payloads, in alternating phases (both sides
/// see the same drift of the machine): in a slot to a spinning guest that
/// checksums it in place and answers the sum, and copied into a plain
/// wasmtime instance of the same guest whose export checksums it (the
/// baseline). ns per hand-off, per phase: (slot, copy-call).
fn payload_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
    cpus: &Cpus,
) -> Result<PerPhase, SandboxError> {
    let mut sb = spawn_bench(runtime, guest, "checksum", SpinBudget(u32::MAX), cpus)?;
    let mut baseline = CopyCallGuest::new(guest)?;
    let data = payload(len);
    let want = sum64(&data);
    let phase = BenchPlan {
        payloads: plan.payloads.div_ceil(plan.phases).max(8),
        ..plan
    };
    let mut filled = false;
    let (mut slots, mut copies) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for slot_side in [i % 2 == 0, i % 2 == 1] {
            if !slot_side {
                copies.push(payload_samples(phase, "copy-call", want, || {
                    baseline.checksum(0, &data)
                })?);
                continue;
            }
            slots.push(payload_samples(phase, "bench-checksum", want, || {
                // The producer writes its data in place once: the slot that
                // comes back from the free list is the same one, its bytes
                // untouched (the guest's checksum of every hand-off proves
                // it).
                sb.sender().send_with(len, |mut buf| {
                    if !filled {
                        buf.copy_from(&data);
                        filled = true;
                    }
                })?;
                let reply = sb.receiver().recv()?;
                Ok(reply.bytes().u64_le(0).unwrap_or(0))
            })?);
        }
    }
    finish(sb)?;
    Ok((slots, copies))
}

/// Payloads streamed through slots, `IN_FLIGHT` hand-offs outstanding:
/// the host sends the next payload as soon as a sum comes back, so the
/// guest's reading overlaps the hand-off's cache-line traffic. ns per
/// payload, per batch of `STREAM_BATCH`. The producer writes each slot the
/// pool gives it once (the guest's sums prove the bytes stay); which slots
/// those are, and so how their payloads are aligned, is the pool's choice.
fn slot_stream(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
    cpus: &Cpus,
) -> Result<Vec<f64>, SandboxError> {
    const IN_FLIGHT: usize = 2;
    const STREAM_BATCH: usize = 10;
    let mut sb = spawn_bench(runtime, guest, "checksum", SpinBudget(u32::MAX), cpus)?;
    let data = payload(len);
    let want = sum64(&data);
    let mut filled = std::collections::HashSet::new();
    let mut send = |sb: &mut Sandbox| {
        sb.sender().send_with(len, |mut buf| {
            if filled.insert(buf.as_mut_ptr() as usize) {
                buf.copy_from(&data);
            }
        })
    };
    let take = |sb: &mut Sandbox| -> Result<(), SandboxError> {
        let reply = sb.receiver().recv()?;
        let sum = reply.bytes().u64_le(0).unwrap_or(0);
        if sum != want {
            return Err(SandboxError::Trap {
                sandbox: "bench-checksum".into(),
                message: format!("checksum {sum:x}, want {want:x}"),
            });
        }
        Ok(())
    };
    for _ in 0..IN_FLIGHT {
        send(&mut sb)?;
    }
    let mut r = Vec::new();
    // The first batches fill the slots and warm up; they are not kept.
    for batch in 0..plan.payloads.div_ceil(STREAM_BATCH) + 4 {
        let t = Instant::now();
        for _ in 0..STREAM_BATCH {
            take(&mut sb)?;
            send(&mut sb)?;
        }
        if batch >= 4 {
            r.push(t.elapsed().as_nanos() as f64 / STREAM_BATCH as f64);
        }
    }
    for _ in 0..IN_FLIGHT {
        take(&mut sb)?;
    }
    finish(sb)?;
    Ok(r)
}
