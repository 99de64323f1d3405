//! `shmrt inspect`: what a segment file holds, validated as it is read.
//!
//! The file is opened without following a symbolic link or blocking, and
//! only a regular file is read (a FIFO would block forever). It is mapped
//! read-only, registered with the SIGBUS handler before the first read, and
//! nothing is written: a file truncated while it is read is an error, not a
//! crash. The header is
//! checked first; if it fails, the report holds the header's fields as
//! found and the reason. Past the header, every part is read through the
//! validated readers: inconsistent ring cursors, slot metas in no state,
//! broken or looping free lists and unknown peer states are reported field
//! by field, never trusted.
//!
//! A segment file a shmrt made says who serves it (its owner record and
//! its creator's `flock`, see [`crate::segment_file::Owner`]): one whose
//! creator is gone is reported stale, as a problem.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Mmap, MmapOptions};
use serde_json::{Value, json};
use shmrt_primitives::segment_header::{FEATURE_DOORBELLS, HeaderSnapshot, SegmentHeader};
use shmrt_primitives::{Segment, SlotError};

use crate::runtime::monotonic_ns;
use crate::segment_file::Owner;

/// A segment's report: JSON for `--json`, and the list of problems found.
#[derive(Debug)]
pub struct Report {
    pub json: Value,
    /// Each inconsistency found, one line each.
    pub problems: Vec<String>,
    /// The header could not be validated (nothing past it was read).
    pub header_invalid: bool,
}

/// Inspects the segment file at `path`. An error when it is not a regular
/// file, cannot be read, or was truncated while it was read.
pub fn inspect(path: &Path) -> std::io::Result<Report> {
    let (file, len) = crate::segment_file::open_regular(path, false)?;
    if len < 128 {
        return Ok(Report {
            json: json!({ "path": path.display().to_string(), "file_size": len, "error": format!("{len} bytes is shorter than the 128-byte segment header") }),
            problems: vec![format!(
                "file is {len} bytes, shorter than a segment header"
            )],
            header_invalid: true,
        });
    }
    let map_len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a read-only shared mapping; the bytes may change under us,
    // which the validated readers expect. Nothing is written through it.
    // Exactly the length checked above, even if the file has shrunk since.
    let map = unsafe { MmapOptions::new().len(map_len).map(&file)? };
    let truncated = Arc::new(AtomicBool::new(false));
    // Declared after `map`, so dropped before it is unmapped.
    let _sigbus = crate::sigbus::protect(map.as_ptr(), map.len(), &truncated);
    // Read from the file (pread) and the kernel's locks, not the mapping.
    let owner = Owner::of(&file);
    let report = read(path, len, &map, owner);
    // SYNC POINT truncated, see sigbus::zero_fill.
    if truncated.load(Ordering::Acquire) {
        return Err(std::io::Error::other(
            "the file was truncated while it was being read",
        ));
    }
    Ok(report)
}

/// The report on the mapped segment file (`len` bytes at `path`), whose
/// owner is `owner`.
fn read(path: &Path, len: u64, map: &Mmap, owner: std::io::Result<Owner>) -> Report {
    let base = map.as_ptr() as *mut u8;
    // SAFETY: at least 128 bytes are mapped, page-aligned.
    let snap = unsafe { &*(base as *const SegmentHeader) }.snapshot();
    let header = header_json(&snap);
    // SAFETY: `map.len()` bytes are mapped; only loads are made.
    let seg = match unsafe { Segment::open_validated(base, map.len()) } {
        Ok(seg) => seg,
        Err(e) => {
            return Report {
                json: json!({ "path": path.display().to_string(), "file_size": len, "header": header, "error": e.to_string() }),
                problems: vec![format!("header: {e}")],
                header_invalid: true,
            };
        }
    };
    let mut problems = Vec::new();
    let owner = owner_json(path, owner, &mut problems);
    let layout = *seg.layout();
    let now = monotonic_ns();
    let mut peers = Vec::new();
    for i in 0..layout.max_guests {
        let p = seg.peer(i).expect("index in range");
        let state_word = p.state.load(std::sync::atomic::Ordering::Acquire);
        let state = p.state().map(|s| s.name().to_string());
        if state.is_none() {
            problems.push(format!(
                "peer {}: state word {state_word} is not a state",
                i + 1
            ));
        }
        let hb = p.last_heartbeat();
        let age_ms = (layout.heartbeat_interval_ns != 0 && hb != 0)
            .then(|| now.saturating_sub(hb) as f64 / 1e6);
        let mut rings = serde_json::Map::new();
        for (dir, ring) in [("g2h", seg.g2h_ring(i)), ("h2g", seg.h2g_ring(i))] {
            let c = ring.expect("index in range").cursors();
            let occupancy = c.occupancy(layout.ring_capacity);
            if occupancy.is_none() {
                problems.push(format!(
                    "peer {} {dir} ring: cursors are inconsistent (write {}, watermark {}, read {}, capacity {})",
                    i + 1,
                    c.write,
                    c.watermark,
                    c.read,
                    layout.ring_capacity
                ));
            }
            if c.capacity_field != layout.ring_capacity {
                problems.push(format!(
                    "peer {} {dir} ring: capacity word is {}, the header says {}",
                    i + 1,
                    c.capacity_field,
                    layout.ring_capacity
                ));
            }
            rings.insert(
                dir.into(),
                json!({
                    "write": c.write, "watermark": c.watermark, "read": c.read,
                    "capacity": layout.ring_capacity,
                    "occupancy": occupancy,
                    "wrapped": c.watermark != 0,
                    "full_percent": occupancy.map(|o| (o as f64 * 100.0 / layout.ring_capacity as f64).round()),
                }),
            );
        }
        peers.push(json!({
            "peer": i + 1,
            "state": state.unwrap_or_else(|| format!("invalid ({state_word})")),
            "epoch": p.epoch(),
            "heartbeat_age_ms": age_ms,
            "ring_offset": layout.ring_pair_offset(i),
            "doorbells": (layout.features & FEATURE_DOORBELLS != 0).then(|| json!({
                "g2h": { "seq": p.g2h_doorbell.sequence(), "waiters": p.g2h_doorbell.waiters.load(std::sync::atomic::Ordering::Relaxed) },
                "h2g": { "seq": p.h2g_doorbell.sequence(), "waiters": p.h2g_doorbell.waiters.load(std::sync::atomic::Ordering::Relaxed) },
            })),
            "rings": rings,
        }));
    }
    let pool = seg.pool();
    let mut classes = Vec::new();
    for c in 0..pool.class_count() {
        let u = pool.usage(c).expect("class in range");
        let mut owners = std::collections::BTreeMap::<u32, u32>::new();
        pool.owners(c, |_, owner| *owners.entry(owner).or_default() += 1);
        if u.invalid > 0 {
            problems.push(format!(
                "class {c}: {} slot metas are in no valid state",
                u.invalid
            ));
        }
        let free_list = match u.free_list {
            Ok(n) => {
                if n != u.free {
                    problems.push(format!(
                        "class {c}: the free list holds {n} slots but {} metas are Free (a slot is lost or listed twice)",
                        u.free
                    ));
                }
                json!(n)
            }
            Err(e) => {
                problems.push(format!("class {c}: {}", slot_error(&e)));
                json!({ "error": e.to_string() })
            }
        };
        classes.push(json!({
            "class": c,
            "slot_size": u.slot_size,
            "slot_count": u.slot_count,
            "allocated": u.allocated,
            "free": u.free,
            "invalid": u.invalid,
            "free_list": free_list,
            "allocated_by_owner": owners.iter().map(|(o, n)| (o.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    Report {
        json: json!({
            "path": path.display().to_string(),
            "file_size": len,
            "header": header,
            "owner": owner,
            "peers": peers,
            "pool": classes,
            "problems": problems,
        }),
        problems,
        header_invalid: false,
    }
}

/// The `owner` object of the report; a stale segment is a problem.
fn owner_json(path: &Path, owner: std::io::Result<Owner>, problems: &mut Vec<String>) -> Value {
    let owner = match owner {
        Ok(owner) => owner,
        Err(e) => {
            return json!({ "state": "unknown", "error": format!("the owner could not be told: {e}") });
        }
    };
    let (state, record) = match owner {
        Owner::Live(record) => ("live", record),
        Owner::Stale(record) => ("stale", Some(record)),
        Owner::Unknown => ("unknown", None),
    };
    if let Owner::Stale(_) = owner {
        problems.push(format!(
            "owner: {}; `shmrt run --segment {} --replace-stale ...` reclaims it, or remove the file",
            owner.describe(),
            path.display()
        ));
    }
    json!({
        "state": state,
        "lock_held": matches!(owner, Owner::Live(_)),
        "pid": record.map(|r| r.pid),
        "start_time": record.map(|r| r.start_time),
        "process_running": record.and_then(|r| r.process_running()),
        "description": owner.describe(),
    })
}

fn slot_error(e: &SlotError) -> String {
    e.to_string()
}

fn header_json(h: &HeaderSnapshot) -> Value {
    json!({
        "magic": h.magic.iter().map(|&b| if b.is_ascii_graphic() { (b as char).to_string() } else { format!("\\x{b:02x}") }).collect::<String>(),
        "version": h.version,
        "header_size": h.header_size,
        "total_size": h.total_size,
        "max_payload_size": h.max_payload_size,
        "inline_threshold": h.inline_threshold,
        "max_guests": h.max_guests,
        "bipbuf_capacity": h.bipbuf_capacity,
        "peer_table_offset": h.peer_table_offset,
        "var_pool_offset": h.var_pool_offset,
        "heartbeat_interval_ns": h.heartbeat_interval,
        "host_goodbye": h.host_goodbye,
        "num_var_slot_classes": h.num_var_slot_classes,
        "current_size": h.current_size,
        "features": h.features,
        "doorbells": h.features & FEATURE_DOORBELLS != 0,
    })
}

/// The report as text, one section per part.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let j = &r.json;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "segment {} ({} bytes)",
        j["path"].as_str().unwrap_or("?"),
        j["file_size"]
    );
    if let Some(h) = j["header"].as_object() {
        let _ = writeln!(out, "header:");
        for (k, v) in h {
            let _ = writeln!(out, "  {k:<22} {v}");
        }
    }
    if let Some(e) = j["error"].as_str() {
        let _ = writeln!(out, "INVALID: {e}");
        return out;
    }
    if let Some(o) = j["owner"].as_object() {
        let what = o
            .get("description")
            .or_else(|| o.get("error"))
            .and_then(|d| d.as_str())
            .unwrap_or("?");
        let state = o["state"].as_str().unwrap_or("?");
        let _ = writeln!(out, "owner: {state}: {what}");
    }
    for p in j["peers"].as_array().into_iter().flatten() {
        let age = p["heartbeat_age_ms"]
            .as_f64()
            .map_or("-".to_string(), |a| format!("{a:.1} ms"));
        let _ = writeln!(
            out,
            "peer {}: {} epoch {} heartbeat age {age}",
            p["peer"],
            p["state"].as_str().unwrap_or("?"),
            p["epoch"]
        );
        for dir in ["g2h", "h2g"] {
            let r = &p["rings"][dir];
            let occ = r["occupancy"]
                .as_u64()
                .map_or("inconsistent".to_string(), |o| {
                    format!("{o}/{} bytes", r["capacity"])
                });
            let _ = writeln!(
                out,
                "  {dir}: {occ}{} (write {}, watermark {}, read {})",
                if r["wrapped"].as_bool() == Some(true) {
                    ", wrapped"
                } else {
                    ""
                },
                r["write"],
                r["watermark"],
                r["read"]
            );
        }
    }
    let _ = writeln!(out, "pool:");
    for c in j["pool"].as_array().into_iter().flatten() {
        let owners: Vec<String> = c["allocated_by_owner"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(o, n)| format!("peer {o}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  class {}: {} x {} bytes, {} allocated, {} free, free list {}{}",
            c["class"],
            c["slot_count"],
            c["slot_size"],
            c["allocated"],
            c["free"],
            c["free_list"],
            if owners.is_empty() {
                String::new()
            } else {
                format!(" ({})", owners.join(", "))
            }
        );
    }
    if r.problems.is_empty() {
        let _ = writeln!(out, "no problems found");
    } else {
        for p in &r.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
    }
    out
}
