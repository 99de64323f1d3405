//! The file behind a segment and the host's own mapping of it.
//!
//! Three kinds: an anonymous memfd (the default for a sandbox), sealed
//! against shrinking and growing so that neither side can pull pages out
//! from under the other; a named file that other processes and
//! `shmrt inspect` can open, created exclusively with mode 0600 through a
//! directory capability and removed on drop unless kept; and an existing
//! file another program made, opened for `--attach` and validated before
//! anything else is read.
//!
//! A named file records who serves it (see [`OwnerRecord`], in
//! `owner.rs`): a stale one, whose creator is gone,
//! [`SegmentFile::create_named_with`] can replace.
//!
//! Named and foreign files can be truncated by anyone who can open them:
//! their mappings are registered with the SIGBUS handler (`sigbus.rs`) right
//! after `mmap`, before the first byte is read or written.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use memmap2::{MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};
use shmrt_primitives::layout::WASM_PAGE_SIZE;
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout};

use super::owner::{
    CREATED, Owner, OwnerRecord, file_id, lock_as_creator, lock_stale, open_regular, still_named,
};
use crate::error::{OpenSegmentError, SandboxError};

/// Random temporary names tried before `create_named` gives up.
const PART_ATTEMPTS: usize = 8;

/// A segment and the host's view of it: a file and the host's mapping of
/// it, or (an in-process sandbox) pages of the guest's own linear memory,
/// with no file at all.
pub struct SegmentFile {
    /// `None` for a segment in the guest's memory.
    file: Option<Arc<File>>,
    map: Mapping,
    segment: Segment,
    /// Bytes of the file (the mapping may round up within the last page).
    file_len: u64,
    /// Removed on drop: (directory, file name).
    remove: Option<(Dir, PathBuf)>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .field("file_len", &self.file_len)
            .field("segment", &self.segment)
            .field("removed_on_drop", &self.remove.is_some())
            .finish_non_exhaustive()
    }
}

/// The host's mapping of a segment file, registered with the SIGBUS
/// handler from the start when others can truncate the file.
struct Mapping {
    /// Declared before `mmap` so that it drops first: the range is
    /// unregistered before it is unmapped.
    _sigbus: Option<super::sigbus::Guard>,
    mmap: HostView,
    /// A page of the file vanished under a mapping (the file was
    /// truncated); raised from the SIGBUS handler.
    truncated: Arc<AtomicBool>,
}

/// The memory the host reads the segment through.
enum HostView {
    /// Its own shared mapping of the file.
    File(MmapMut),
    /// The guest's window, in the reservation both share.
    Region(Arc<super::memory_window::GuestRegion>),
}

impl HostView {
    fn as_ptr(&self) -> *const u8 {
        match self {
            HostView::File(m) => m.as_ptr(),
            HostView::Region(r) => r.window_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            HostView::File(m) => m.len(),
            HostView::Region(r) => r.window_len(),
        }
    }
}

impl Mapping {
    /// Maps `len` bytes of `file` shared and read-write; with `protect`,
    /// registers the range before returning, so before any access.
    fn new(file: &File, len: usize, protect: bool) -> io::Result<Self> {
        // SAFETY: a shared mapping of a segment file; the other mappings of
        // it are the guest's window and other peers, which by design share
        // these pages and are read through the validated readers. A
        // truncation under us is caught by the SIGBUS handler (`protect`).
        let mmap = unsafe { MmapOptions::new().len(len).map_mut(file) }?;
        let truncated = Arc::new(AtomicBool::new(false));
        let sigbus = protect
            .then(|| super::sigbus::protect(mmap.as_ptr(), mmap.len(), &truncated))
            .flatten();
        Ok(Mapping {
            _sigbus: sigbus,
            mmap: HostView::File(mmap),
            truncated,
        })
    }

    fn was_truncated(&self) -> bool {
        // SYNC POINT truncated, see sigbus::zero_fill.
        self.truncated.load(Ordering::Acquire)
    }
}

/// A hidden temporary name next to `name`, with 64 random bits so that
/// nobody can guess it and create it first: a `RandomState`'s keys come
/// from the OS's random source, so the SipHash of anything under a fresh
/// one is unpredictable to other processes.
fn part_name(name: &Path) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let mut part = OsString::from(".");
    part.push(name);
    part.push(format!(".{:016x}.part", hasher.finish()));
    PathBuf::from(part)
}

impl SegmentFile {
    /// The segment of an in-process sandbox: a reservation for the guest's
    /// linear memory whose window, after the module's `initial_pages`, is
    /// `template` mapped copy-on-write when the memory grows into it (see
    /// `template.rs`). Nothing is read or written here: the
    /// host's view waits for the placement.
    pub(crate) fn create_in_guest_memory(
        template: Arc<super::template::SegmentTemplate>,
        initial_pages: u64,
    ) -> Result<(Self, Arc<super::memory_window::GuestRegion>), SandboxError> {
        let (layout, size) = (template.layout, template.size);
        let window_at =
            usize::try_from(initial_pages.saturating_mul(WASM_PAGE_SIZE)).unwrap_or(usize::MAX);
        let region = super::memory_window::GuestRegion::reserve(window_at, template)
            .map_err(|e| SandboxError::io("reserving the sandbox's memory", e))?;
        // SAFETY: the window is page-aligned and `size` bytes of it are the
        // template's segment once placed; `from_layout` touches nothing.
        let segment = unsafe { Segment::from_layout(region.window_ptr(), size, layout) }
            .map_err(SandboxError::Config)?;
        let map = Mapping {
            _sigbus: None,
            mmap: HostView::Region(region.clone()),
            truncated: Arc::new(AtomicBool::new(false)),
        };
        let file = SegmentFile {
            file: None,
            map,
            segment,
            file_len: size as u64,
            remove: None,
            path: None,
        };
        Ok((file, region))
    }

    /// Creates and initializes a sealed memfd segment for `config`.
    pub fn create_memfd(config: &SegmentConfig) -> Result<Self, SandboxError> {
        let layout = SegmentLayout::compute(config).map_err(SandboxError::Config)?;
        let size = layout.window_size();
        let fd = rustix::fs::memfd_create(
            "shmrt-segment",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| SandboxError::io("creating the segment memfd", e.into()))?;
        rustix::fs::ftruncate(&fd, size)
            .map_err(|e| SandboxError::io("sizing the segment memfd", e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| SandboxError::io("sealing the segment memfd", e.into()))?;
        Self::init(File::from(fd), size, config, None, None)
    }

    /// Creates and initializes a segment as the named file `path`: created
    /// exclusively (an existing file is an error, never overwritten), mode
    /// 0600, through a capability on its directory. It is built under a
    /// hidden temporary name and linked into place once its header is
    /// written, so nobody sees `path` half made. Removed on drop unless
    /// `keep`. It carries an owner record, and this process holds its lock
    /// for as long as the segment lives (see [`Owner`]).
    pub fn create_named(
        path: &Path,
        config: &SegmentConfig,
        keep: bool,
    ) -> Result<Self, SandboxError> {
        Self::create_named_with(path, config, keep, false)
    }

    /// [`Self::create_named`], and with `replace_stale`, an existing file
    /// at `path` that is a stale segment ([`Owner::Stale`]: made by a shmrt
    /// that is gone) is replaced instead of refused. A live segment, or a
    /// file without an owner record, is never replaced.
    ///
    /// The stale file's lock is taken and held until the new file has been
    /// renamed over it, and `path` is checked to still be that file once
    /// the lock is held: two runs replacing the same stale file cannot both
    /// succeed, and neither replaces the other's live segment.
    pub fn create_named_with(
        path: &Path,
        config: &SegmentConfig,
        keep: bool,
        replace_stale: bool,
    ) -> Result<Self, SandboxError> {
        let layout = SegmentLayout::compute(config).map_err(SandboxError::Config)?;
        let size = layout.window_size();
        let (dir_path, name) = split_path(path);
        let dir = Dir::open_ambient_dir(&dir_path, ambient_authority())
            .map_err(|e| SandboxError::io("opening the segment's directory", e))?;
        let named_err = |source| SandboxError::NamedSegment {
            path: path.to_owned(),
            source,
        };
        // Taken already: the same error as the link below would give,
        // before any work, saying what the file is; or, with
        // `replace_stale`, the stale file to replace, locked.
        let mut stale = None;
        if dir.symlink_metadata(&name).is_ok() {
            stale = Some(lock_stale(path, replace_stale).map_err(named_err)?);
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        {
            use cap_std::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        // A taken name is someone else's file (never ours to open): try
        // another.
        let mut attempts = 0;
        let (part, file) = loop {
            let part = part_name(&name);
            attempts += 1;
            match dir.open_with(&part, &opts) {
                Ok(file) => break (part, file.into_std()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < PART_ATTEMPTS => {}
                Err(e) => {
                    let taken = if e.kind() == io::ErrorKind::AlreadyExists {
                        format!(" ({attempts} random names in a row were taken)")
                    } else {
                        String::new()
                    };
                    return Err(SandboxError::io(
                        "creating the segment's temporary file",
                        io::Error::new(
                            e.kind(),
                            format!("{}: {e}{taken}", dir_path.join(&part).display()),
                        ),
                    ));
                }
            }
        };
        // Locked before it has its name, so `path` is never this segment
        // unlocked.
        let built = lock_as_creator(&file)
            .and_then(|()| file.set_len(size))
            .map_err(|e| SandboxError::io("sizing and locking the segment file", e))
            .and_then(|()| Self::init(file, size, config, None, Some(path.to_owned())));
        let placed = built.and_then(|seg| {
            let recorded = seg
                .file
                .as_deref()
                .map_or(Ok(false), OwnerRecord::record_creator)
                .map_err(|e| SandboxError::io("recording the segment file's owner", e))?;
            if !recorded {
                tracing::warn!(
                    "the file system of {} keeps no extended attributes: the segment carries no \
                     owner record, so if it is left behind `--replace-stale` can not reclaim it",
                    path.display()
                );
            }
            match &stale {
                // The link fails if `path` appeared meanwhile: never
                // overwritten.
                None => dir.hard_link(&part, &dir, &name),
                Some(old) => {
                    still_named(&dir, &name, old).and_then(|()| dir.rename(&part, &dir, &name))
                }
            }
            .map(|()| seg)
            .map_err(named_err)
        });
        if (stale.is_none() || placed.is_err())
            && let Err(e) = dir.remove_file(&part)
        {
            tracing::warn!("could not remove {}: {e}", dir_path.join(&part).display());
        }
        let mut seg = placed?;
        if let Some(Ok(meta)) = seg.file.as_ref().map(|f| f.metadata()) {
            CREATED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(file_id(&meta));
        }
        if let Some(old) = stale {
            tracing::info!(
                "replaced the stale segment {} ({})",
                path.display(),
                Owner::Stale(old.1).describe()
            );
        }
        if !keep {
            seg.remove = Some((dir, name));
        }
        Ok(seg)
    }

    /// Maps `file` (already `size` bytes, zero-filled) and lays out a fresh
    /// segment in it.
    fn init(
        file: File,
        size: u64,
        config: &SegmentConfig,
        remove: Option<(Dir, PathBuf)>,
        path: Option<PathBuf>,
    ) -> Result<Self, SandboxError> {
        let len = usize::try_from(size)
            .map_err(|_| SandboxError::Config(shmrt_primitives::LayoutError::Overflow))?;
        // Named files can be truncated by others (memfds are sealed).
        let map = Mapping::new(&file, len, path.is_some())
            .map_err(|e| SandboxError::io("mapping the segment", e))?;
        // SAFETY: the mapping is page-aligned, `len` bytes, zero-filled and
        // not yet used by anyone else.
        let segment = unsafe { Segment::create(map.mmap.as_ptr().cast_mut(), len, config) }
            .map_err(SandboxError::Config)?;
        if map.was_truncated() {
            return Err(SandboxError::io(
                "laying out the segment file",
                io::Error::other("the file was truncated while it was being written"),
            ));
        }
        Ok(Self::assemble(file, map, segment, size, remove, path))
    }

    /// Opens a segment file another program made and validates it: magic,
    /// version, sizes against the file, every offset in bounds.
    pub fn open_existing(path: &Path) -> Result<Self, OpenSegmentError> {
        let io_err = |source| OpenSegmentError::Io {
            path: path.to_owned(),
            source,
        };
        let (file, file_len) = open_regular(path, true).map_err(io_err)?;
        let len = usize::try_from(file_len)
            .ok()
            .filter(|&l| l >= 128 && (l as u64) < (1u64 << 32))
            .ok_or(OpenSegmentError::Size {
                path: path.to_owned(),
                len: file_len,
            })?;
        // The other program writes the file concurrently, which is what the
        // validated readers are for, and may truncate it at any moment,
        // validation included: protected before the first read.
        let map = Mapping::new(&file, len, true).map_err(io_err)?;
        // SAFETY: `len` mapped bytes, page-aligned.
        let validated = unsafe { Segment::open_validated(map.mmap.as_ptr().cast_mut(), len) };
        // Zero pages read in place of vanished ones are no header error.
        if map.was_truncated() {
            return Err(OpenSegmentError::Truncated {
                path: path.to_owned(),
            });
        }
        let segment = validated.map_err(|error| OpenSegmentError::Header {
            path: path.to_owned(),
            error,
        })?;
        Ok(Self::assemble(
            file,
            map,
            segment,
            file_len,
            None,
            Some(path.to_owned()),
        ))
    }

    fn assemble(
        file: File,
        map: Mapping,
        segment: Segment,
        file_len: u64,
        remove: Option<(Dir, PathBuf)>,
        path: Option<PathBuf>,
    ) -> Self {
        SegmentFile {
            file: Some(Arc::new(file)),
            map,
            segment,
            file_len,
            remove,
            path,
        }
    }

    /// The flag raised when a page of the file vanished under a mapping.
    pub(crate) fn truncated_flag(&self) -> &Arc<AtomicBool> {
        &self.map.truncated
    }

    /// Whether the file was truncated under a mapping of it.
    pub fn was_truncated(&self) -> bool {
        self.map.was_truncated()
    }

    /// The segment, through the host's mapping.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The reservation of the guest's memory the segment was laid out in
    /// (an in-process sandbox), for the memory to adopt.
    pub(crate) fn region(&self) -> Option<&Arc<super::memory_window::GuestRegion>> {
        match &self.map.mmap {
            HostView::Region(r) => Some(r),
            HostView::File(_) => None,
        }
    }

    /// The file, for the guest's window (`None`: the segment is in the
    /// guest's memory already).
    pub(crate) fn file(&self) -> Option<&Arc<File>> {
        self.file.as_ref()
    }

    /// Bytes of the guest's window: the file rounded up to whole 64 KiB
    /// pages (what lies past the file is anonymous memory).
    pub fn window_len(&self) -> usize {
        self.file_len.div_ceil(WASM_PAGE_SIZE) as usize * WASM_PAGE_SIZE as usize
    }

    /// Bytes of the file to map into the window: its length rounded up to
    /// the OS page (the rest of that page reads as zeros).
    pub(crate) fn file_map_len(&self) -> usize {
        let page = rustix::param::page_size() as u64;
        (self.file_len.div_ceil(page) * page) as usize
    }

    /// Bytes mapped by the host.
    pub fn len(&self) -> usize {
        self.map.mmap.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.map.mmap.len() == 0
    }

    /// The file's path, for named and attached segments.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let Some(path) = &self.path else { return };
        // The creator's lock goes now, not when the last copy of the
        // descriptor closes: a child forked meanwhile (until it execs)
        // holds one, and would keep the segment looking live. (A file we
        // did not create holds no lock of ours: a no-op.)
        let Some(file) = &self.file else { return };
        let _ = rustix::fs::flock(&**file, rustix::fs::FlockOperation::Unlock);
        let Ok(id) = file.metadata().map(|m| file_id(&m)) else {
            return;
        };
        CREATED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| *c != id);
        let Some((dir, name)) = self.remove.take() else {
            return;
        };
        // Only our own file: the name may have been removed (a signal) and
        // taken by another run since.
        use cap_std::fs::MetadataExt;
        match dir.symlink_metadata(&name) {
            Ok(m) if (m.dev(), m.ino()) == id => {
                if let Err(e) = dir.remove_file(&name) {
                    tracing::warn!("could not remove segment file {}: {e}", path.display());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not remove segment file {}: {e}", path.display()),
        }
    }
}

fn split_path(path: &Path) -> (PathBuf, PathBuf) {
    let name = path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| path.to_owned());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    (dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shmrt-segfile-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temporary_names_are_random_and_hidden() {
        let name = Path::new("seg");
        let a = part_name(name);
        let b = part_name(name);
        assert_ne!(a, b);
        for p in [&a, &b] {
            let s = p.to_str().unwrap();
            assert!(s.starts_with(".seg.") && s.ends_with(".part"), "{s}");
            assert!(!s.contains(&format!(".{}.", std::process::id())), "{s}");
        }
    }

    /// The temporary name the creation used to take (`.NAME.PID.part`)
    /// exists already, made by someone else: creation still succeeds and
    /// leaves that file alone.
    #[test]
    fn a_pre_created_temporary_name_does_not_block_creation() {
        let dir = tempdir("precreated");
        let path = dir.join("seg");
        let squatted = dir.join(format!(".seg.{}.part", std::process::id()));
        std::fs::write(&squatted, b"not yours").unwrap();
        let seg = SegmentFile::create_named(&path, &SegmentConfig::single_guest(), false)
            .expect("created despite the squatted name");
        assert!(path.is_file());
        assert_eq!(std::fs::read(&squatted).unwrap(), b"not yours");
        drop(seg);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
