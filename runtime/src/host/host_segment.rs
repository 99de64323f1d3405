//! The host side for native programs: a segment file this process creates,
//! for plugins that run sandboxed in other processes
//! (`shmrt run --attach PATH --peer N plugin.wasm`). Sending, receiving,
//! ringing and waiting are the same as with an in-process sandbox, and just
//! as zero-copy: the futex doorbells work between processes.

use std::path::Path;
use std::sync::Arc;

use shmrt_primitives::{PeerId, Segment, SegmentConfig};

use super::receiver::HostReceiver;
use super::sender::HostSender;
use crate::error::SandboxError;
use crate::segment::doorbell_futex;
use crate::segment::file::SegmentFile;
use crate::state::options::{SandboxOptions, SpinBudget};
use crate::state::shared::{GuestKind, SandboxShared};

/// A segment file made by this process, hosting guests in other processes.
#[derive(Debug)]
pub struct HostSegment {
    file: Arc<SegmentFile>,
}

impl HostSegment {
    /// Creates the segment file at `path` (exclusively, mode 0600), laid
    /// out for `config.max_guests` guests with doorbells on. Removed when
    /// dropped unless `keep`.
    pub fn create(path: &Path, config: &SegmentConfig, keep: bool) -> Result<Self, SandboxError> {
        let mut config = *config;
        config.features |= shmrt_primitives::segment_header::FEATURE_DOORBELLS;
        Ok(HostSegment {
            file: Arc::new(SegmentFile::create_named(path, &config, keep)?),
        })
    }

    /// The segment through this process's mapping.
    pub fn segment(&self) -> &Segment {
        self.file.segment()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path().expect("a named segment has a path")
    }

    /// Reserves the entry of guest `peer_id` (1..=max_guests) for a plugin
    /// about to attach, and returns this host's ends of its channel. The
    /// receiver reports `Closed` once the guest has marked its entry
    /// Goodbye and everything it sent is read.
    pub fn reserve(
        &self,
        peer_id: u32,
        spin: SpinBudget,
    ) -> Result<(HostSender, HostReceiver), SandboxError> {
        let peer_err = |reason: String| SandboxError::Peer {
            path: self.path().to_owned(),
            reason,
        };
        let index = PeerId::new(peer_id)
            .map(PeerId::index)
            .filter(|&i| i < self.segment().layout().max_guests)
            .ok_or_else(|| peer_err(format!("peer {peer_id} is not a guest of this segment")))?;
        let entry = self.segment().peer(index).expect("index checked");
        entry
            .try_reserve()
            .map_err(|e| peer_err(format!("cannot reserve peer {peer_id}: {e}")))?;
        let name = format!("{} peer {peer_id}", self.path().display());
        let options = SandboxOptions {
            name,
            spin,
            ..SandboxOptions::default()
        };
        let shared = Arc::new(SandboxShared::new(
            &options,
            self.file.clone(),
            GuestKind::External { index },
        ));
        let (tx, rx) =
            self.segment()
                .host_channel(index)
                .map_err(|error| SandboxError::Protocol {
                    sandbox: shared.name().to_owned(),
                    error,
                })?;
        Ok((
            HostSender::new(tx, shared.clone(), None),
            HostReceiver::new(rx, shared, None),
        ))
    }

    /// Raises host goodbye for every guest and wakes those parked.
    pub fn goodbye(&self) {
        let seg = self.segment();
        doorbell_futex::say_goodbye(seg, 0..seg.layout().max_guests);
    }
}
