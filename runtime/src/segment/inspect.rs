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
//! its creator's `flock`, see [`crate::Owner`]): one whose
//! creator is gone is reported stale, as a problem.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Mmap, MmapOptions};
use shmrt_primitives::Segment;
use shmrt_primitives::ring::RingRef;
use shmrt_primitives::segment_header::{FEATURE_DOORBELLS, HeaderSnapshot, SegmentHeader};

use super::monotonic_ns;
use super::owner::Owner;

// With the `serde` feature every report type derives `Serialize`: that is
// `shmrt inspect --json`, field for field in this order.

/// What `inspect` found in a segment file.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// The file, as given.
    pub path: String,
    /// Its length when it was opened.
    pub file_size: u64,
    /// The header's fields as found; absent when the file is shorter than
    /// a header.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub header: Option<HeaderReport>,
    /// Why the header could not be validated (nothing past it was read).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
    /// Everything past a valid header.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub segment: Option<SegmentReport>,
}

impl Report {
    /// The header could not be validated: see `error`.
    pub fn header_invalid(&self) -> bool {
        self.segment.is_none()
    }

    /// Each inconsistency found past a valid header, one line each (none
    /// when the header is invalid: see `error`).
    pub fn problems(&self) -> &[String] {
        self.segment.as_ref().map_or(&[], |s| &s.problems)
    }
}

/// The header's fields, as found (not trusted).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeaderReport {
    /// Printable ASCII as it is, other bytes as `\xNN`.
    pub magic: String,
    /// Format version (7).
    pub version: u32,
    /// Header bytes (128).
    pub header_size: u32,
    /// The segment's bytes.
    pub total_size: u64,
    /// Largest payload a message may have.
    pub max_payload_size: u32,
    /// Largest frame sent inline (0 means 256).
    pub inline_threshold: u32,
    /// Guest entries of the peer table.
    pub max_guests: u32,
    /// Each ring's capacity in bytes.
    pub bipbuf_capacity: u32,
    /// Where the peer table starts.
    pub peer_table_offset: u64,
    /// Where the slot pool starts.
    pub var_pool_offset: u64,
    /// Heartbeat interval, nanoseconds (0: off).
    pub heartbeat_interval_ns: u64,
    /// The host's goodbye word (non-zero: said).
    pub host_goodbye: u32,
    /// Slot classes of the pool.
    pub num_var_slot_classes: u32,
    /// The size the segment says it has now.
    pub current_size: u64,
    /// Feature flags.
    pub features: u32,
    /// The doorbell feature flag is set.
    pub doorbells: bool,
}

/// A segment whose header is valid: who serves it, its peers, its pool,
/// and the problems found.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SegmentReport {
    /// Who serves the segment.
    pub owner: OwnerReport,
    /// One entry per guest.
    pub peers: Vec<PeerReport>,
    /// One entry per slot class.
    pub pool: Vec<ClassReport>,
    /// Each inconsistency found, one line each.
    pub problems: Vec<String>,
}

/// Who serves the segment (see [`Owner`]).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(untagged))]
pub enum OwnerReport {
    /// The owner could be told.
    Known {
        /// `live`, `stale` or `unknown`.
        state: &'static str,
        /// Some process holds the creator's lock on the file.
        lock_held: bool,
        /// From shmrt's owner record, when the file has one.
        pid: Option<u32>,
        /// The creator's start time, from the owner record.
        start_time: Option<u64>,
        /// Whether the recorded process still runs (`None`: can not be told).
        process_running: Option<bool>,
        /// The same in words.
        description: String,
    },
    /// The file's lock or owner record could not be read.
    Unknown {
        /// Always `unknown`.
        state: &'static str,
        /// Why it could not be read.
        error: String,
    },
}

/// One peer entry.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PeerReport {
    /// Peer id (1 + index).
    pub peer: u32,
    /// The state's name, or `invalid (WORD)`.
    pub state: String,
    /// The entry's epoch word.
    pub epoch: u32,
    /// Since the last heartbeat; none when heartbeats are off or none came.
    pub heartbeat_age_ms: Option<f64>,
    /// Where the entry's ring pair starts.
    pub ring_offset: u64,
    /// When the segment has doorbells.
    pub doorbells: Option<Directions<DoorbellReport>>,
    /// The ring pair's cursors.
    pub rings: Directions<RingReport>,
}

/// One value per direction.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Directions<T> {
    /// Guest to host.
    pub g2h: T,
    /// Host to guest.
    pub h2g: T,
}

/// A doorbell's words.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DoorbellReport {
    /// The sequence word (bumped at each ring).
    pub seq: u32,
    /// The waiter count.
    pub waiters: u32,
}

/// A ring's cursors as found.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RingReport {
    /// The write cursor.
    pub write: u32,
    /// The watermark (where the last wrap left the end).
    pub watermark: u32,
    /// The read cursor.
    pub read: u32,
    /// The header's capacity (the ring's own word is not trusted).
    pub capacity: u32,
    /// Bytes queued; none when the cursors are inconsistent.
    pub occupancy: Option<u32>,
    /// The writer has wrapped to the front.
    pub wrapped: bool,
    /// Occupancy as a percentage of the capacity.
    pub full_percent: Option<f64>,
}

/// One slot class of the pool.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClassReport {
    /// The class's index.
    pub class: usize,
    /// Bytes a slot (its payload and 4-byte length).
    pub slot_size: u32,
    /// The class's slots.
    pub slot_count: u32,
    /// Slots allocated.
    pub allocated: u32,
    /// Slots free.
    pub free: u32,
    /// Metas in no valid state.
    pub invalid: u32,
    /// The free list as walked.
    pub free_list: FreeListReport,
    /// Allocated slots by the peer that allocated them.
    pub allocated_by_owner: BTreeMap<u32, u32>,
}

/// The free list's length, or why it could not be walked.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(untagged))]
pub enum FreeListReport {
    /// Slots on the free list.
    Length(u32),
    /// The walk found a broken or looping list.
    Broken {
        /// What was wrong.
        error: String,
    },
}

/// Inspects the segment file at `path`. An error when it is not a regular
/// file, cannot be read, or was truncated while it was read.
pub fn inspect(path: &Path) -> std::io::Result<Report> {
    let (file, len) = super::owner::open_regular(path, false)?;
    if len < 128 {
        return Ok(Report {
            path: path.display().to_string(),
            file_size: len,
            header: None,
            error: Some(format!(
                "{len} bytes is shorter than the 128-byte segment header"
            )),
            segment: None,
        });
    }
    let map_len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a read-only shared mapping; the bytes may change under us,
    // which the validated readers expect. Nothing is written through it.
    // Exactly the length checked above, even if the file has shrunk since.
    let map = unsafe { MmapOptions::new().len(map_len).map(&file)? };
    let truncated = Arc::new(AtomicBool::new(false));
    // Declared after `map`, so dropped before it is unmapped.
    let _sigbus = super::sigbus::protect(map.as_ptr(), map.len(), &truncated);
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
    let mut report = Report {
        path: path.display().to_string(),
        file_size: len,
        header: Some(header_report(&snap)),
        error: None,
        segment: None,
    };
    // SAFETY: `map.len()` bytes are mapped; only loads are made.
    let seg = match unsafe { Segment::open_validated(base, map.len()) } {
        Ok(seg) => seg,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let mut problems = Vec::new();
    let owner = owner_report(path, owner, &mut problems);
    let now = monotonic_ns();
    let peers = (0..seg.layout().max_guests)
        .map(|i| peer_report(&seg, i, now, &mut problems))
        .collect();
    let classes = class_reports(&seg, &mut problems);
    report.segment = Some(SegmentReport {
        owner,
        peers,
        pool: classes,
        problems,
    });
    report
}

/// Peer entry `i`, its rings and doorbells; what is wrong with them goes
/// to `problems`.
fn peer_report(seg: &Segment, i: u32, now: u64, problems: &mut Vec<String>) -> PeerReport {
    let layout = *seg.layout();
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
    let age_ms =
        (layout.heartbeat_interval_ns != 0 && hb != 0).then(|| now.saturating_sub(hb) as f64 / 1e6);
    let rings = Directions {
        g2h: ring_report(i, "g2h", seg.g2h_ring(i), layout.ring_capacity, problems),
        h2g: ring_report(i, "h2g", seg.h2g_ring(i), layout.ring_capacity, problems),
    };
    // Relaxed: a snapshot for a person to read; nothing is derived
    // from the waiter counts.
    let doorbells = (layout.features & FEATURE_DOORBELLS != 0).then(|| Directions {
        g2h: DoorbellReport {
            seq: p.g2h_doorbell.sequence(),
            waiters: p.g2h_doorbell.waiters.load(Ordering::Relaxed),
        },
        h2g: DoorbellReport {
            seq: p.h2g_doorbell.sequence(),
            waiters: p.h2g_doorbell.waiters.load(Ordering::Relaxed),
        },
    });
    PeerReport {
        peer: i + 1,
        state: state.unwrap_or_else(|| format!("invalid ({state_word})")),
        epoch: p.epoch(),
        heartbeat_age_ms: age_ms,
        ring_offset: layout.ring_pair_offset(i),
        doorbells,
        rings,
    }
}

/// The `dir` ring of peer entry `i`, of `capacity` bytes by the header.
fn ring_report(
    i: u32,
    dir: &str,
    ring: Option<RingRef>,
    capacity: u32,
    problems: &mut Vec<String>,
) -> RingReport {
    let c = ring.expect("index in range").cursors();
    let occupancy = c.occupancy(capacity);
    if occupancy.is_none() {
        problems.push(format!(
            "peer {} {dir} ring: cursors are inconsistent (write {}, watermark {}, read {}, capacity {})",
            i + 1,
            c.write,
            c.watermark,
            c.read,
            capacity
        ));
    }
    if c.capacity_field != capacity {
        problems.push(format!(
            "peer {} {dir} ring: capacity word is {}, the header says {}",
            i + 1,
            c.capacity_field,
            capacity
        ));
    }
    RingReport {
        write: c.write,
        watermark: c.watermark,
        read: c.read,
        capacity,
        occupancy,
        wrapped: c.watermark != 0,
        full_percent: occupancy.map(|o| (o as f64 * 100.0 / capacity as f64).round()),
    }
}

/// Every slot class of the pool.
fn class_reports(seg: &Segment, problems: &mut Vec<String>) -> Vec<ClassReport> {
    let pool = seg.pool();
    let mut classes = Vec::new();
    for c in 0..pool.class_count() {
        let u = pool.usage(c).expect("class in range");
        let mut owners = BTreeMap::<u32, u32>::new();
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
                FreeListReport::Length(n)
            }
            Err(e) => {
                problems.push(format!("class {c}: {e}"));
                FreeListReport::Broken {
                    error: e.to_string(),
                }
            }
        };
        classes.push(ClassReport {
            class: c,
            slot_size: u.slot_size,
            slot_count: u.slot_count,
            allocated: u.allocated,
            free: u.free,
            invalid: u.invalid,
            free_list,
            allocated_by_owner: owners,
        });
    }
    classes
}

/// Who serves the segment; a stale segment is a problem.
fn owner_report(
    path: &Path,
    owner: std::io::Result<Owner>,
    problems: &mut Vec<String>,
) -> OwnerReport {
    let owner = match owner {
        Ok(owner) => owner,
        Err(e) => {
            return OwnerReport::Unknown {
                state: "unknown",
                error: format!("the owner could not be told: {e}"),
            };
        }
    };
    let (state, record) = match owner {
        Owner::Live(record) => ("live", record),
        Owner::Stale(record) => ("stale", Some(record)),
        Owner::Unknown => ("unknown", None),
    };
    if let Owner::Stale(_) = owner {
        problems.push(format!(
            "owner: stale: {}; `shmrt run --segment {} --replace-stale ...` reclaims it, or remove the file",
            owner.describe(),
            path.display()
        ));
    }
    OwnerReport::Known {
        state,
        lock_held: matches!(owner, Owner::Live(_)),
        pid: record.map(|r| r.pid),
        start_time: record.map(|r| r.start_time),
        process_running: record.and_then(|r| r.process_running()),
        description: owner.describe(),
    }
}

fn header_report(h: &HeaderSnapshot) -> HeaderReport {
    HeaderReport {
        magic: h
            .magic
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    (b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect(),
        version: h.version,
        header_size: h.header_size,
        total_size: h.total_size,
        max_payload_size: h.max_payload_size,
        inline_threshold: h.inline_threshold,
        max_guests: h.max_guests,
        bipbuf_capacity: h.bipbuf_capacity,
        peer_table_offset: h.peer_table_offset,
        var_pool_offset: h.var_pool_offset,
        heartbeat_interval_ns: h.heartbeat_interval,
        host_goodbye: h.host_goodbye,
        num_var_slot_classes: h.num_var_slot_classes,
        current_size: h.current_size,
        features: h.features,
        doorbells: h.features & FEATURE_DOORBELLS != 0,
    }
}

/// The report as text, one section per part.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "segment {} ({} bytes)", r.path, r.file_size);
    if let Some(h) = &r.header {
        let _ = writeln!(out, "header:");
        // The magic quoted, as in the JSON.
        let fields: [(&str, &dyn std::fmt::Display); 16] = [
            ("magic", &format!("{:?}", h.magic)),
            ("version", &h.version),
            ("header_size", &h.header_size),
            ("total_size", &h.total_size),
            ("max_payload_size", &h.max_payload_size),
            ("inline_threshold", &h.inline_threshold),
            ("max_guests", &h.max_guests),
            ("bipbuf_capacity", &h.bipbuf_capacity),
            ("peer_table_offset", &h.peer_table_offset),
            ("var_pool_offset", &h.var_pool_offset),
            ("heartbeat_interval_ns", &h.heartbeat_interval_ns),
            ("host_goodbye", &h.host_goodbye),
            ("num_var_slot_classes", &h.num_var_slot_classes),
            ("current_size", &h.current_size),
            ("features", &h.features),
            ("doorbells", &h.doorbells),
        ];
        for (k, v) in fields {
            let _ = writeln!(out, "  {k:<22} {v}");
        }
    }
    let Some(seg) = &r.segment else {
        let _ = writeln!(out, "INVALID: {}", r.error.as_deref().unwrap_or("?"));
        return out;
    };
    let (state, what) = match &seg.owner {
        OwnerReport::Known {
            state, description, ..
        } => (state, description),
        OwnerReport::Unknown { state, error } => (state, error),
    };
    let _ = writeln!(out, "owner: {state}: {what}");
    for p in &seg.peers {
        let age = p
            .heartbeat_age_ms
            .map_or("-".to_string(), |a| format!("{a:.1} ms"));
        let _ = writeln!(
            out,
            "peer {}: {} epoch {} heartbeat age {age}",
            p.peer, p.state, p.epoch
        );
        for (dir, r) in [("g2h", &p.rings.g2h), ("h2g", &p.rings.h2g)] {
            let occ = r.occupancy.map_or("inconsistent".to_string(), |o| {
                format!("{o}/{} bytes", r.capacity)
            });
            let _ = writeln!(
                out,
                "  {dir}: {occ}{} (write {}, watermark {}, read {})",
                if r.wrapped { ", wrapped" } else { "" },
                r.write,
                r.watermark,
                r.read
            );
        }
    }
    let _ = writeln!(out, "pool:");
    for c in &seg.pool {
        let owners: Vec<String> = c
            .allocated_by_owner
            .iter()
            .map(|(o, n)| format!("peer {o}: {n}"))
            .collect();
        let free_list = match &c.free_list {
            FreeListReport::Length(n) => n.to_string(),
            FreeListReport::Broken { error } => format!("broken ({error})"),
        };
        let _ = writeln!(
            out,
            "  class {}: {} x {} bytes, {} allocated, {} free, free list {free_list}{}",
            c.class,
            c.slot_count,
            c.slot_size,
            c.allocated,
            c.free,
            if owners.is_empty() {
                String::new()
            } else {
                format!(" ({})", owners.join(", "))
            }
        );
    }
    if seg.problems.is_empty() {
        let _ = writeln!(out, "no problems found");
    } else {
        for p in &seg.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
    }
    out
}
