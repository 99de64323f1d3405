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
//! A named file records who serves it (see [`OwnerRecord`]): its creator
//! holds an exclusive `flock` on it for as long as the segment lives, and
//! writes its pid and start time into an extended attribute of the file,
//! out of the guest's reach (the header is in its window). A file
//! whose lock nobody holds was left behind by a process that is gone
//! (SIGKILL, a crash): `shmrt inspect` calls it stale, and
//! [`SegmentFile::create_named_with`] can replace it.
//!
//! Named and foreign files can be truncated by anyone who can open them:
//! their mappings are registered with the SIGBUS handler (`crate::sigbus`)
//! right after `mmap`, before the first byte is read or written.

use std::ffi::OsString;
use std::fs::{File, FileType};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use memmap2::{MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};
use shmrt_primitives::layout::WASM_PAGE_SIZE;
use shmrt_primitives::{HeaderError, Segment, SegmentConfig, SegmentLayout};

use crate::error::SandboxError;

/// Random temporary names tried before `create_named` gives up.
const PART_ATTEMPTS: usize = 8;

/// The extended attribute that holds the owner record of a named segment
/// file shmrt created. It lives in the file's inode, outside the mapped
/// bytes, so no guest can write it (a guest's window is the file's data);
/// setting it takes write access to the file, which only the creator and
/// those who could remove the file anyway have.
pub const OWNER_XATTR: &str = "user.shmrt.owner";
/// The tag that opens an owner record, "OWNR". It also says that the
/// creator holds an exclusive `flock` on the file while it serves the
/// segment, so that a free lock means the creator is gone.
pub const OWNER_TAG: u32 = u32::from_le_bytes(*b"OWNR");
/// Bytes of the record: tag u32, pid u32, start time u64, inode u64, all
/// little-endian.
const OWNER_RECORD_LEN: usize = 24;

/// Who created a named segment file, as recorded in its extended
/// attribute [`OWNER_XATTR`]: proof that a shmrt made this very file (the
/// record names its inode, so a copy carries none). Whether the segment
/// is served is told by its lock ([`lock_held`]), which lives in the
/// kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The creator's process id (in its PID namespace).
    pub pid: u32,
    /// The creator's start time, in clock ticks after boot (field 22 of
    /// `/proc/PID/stat`): with the pid, it tells a reused pid apart.
    pub start_time: u64,
}

impl OwnerRecord {
    /// This process.
    fn this_process() -> Self {
        let pid = std::process::id();
        OwnerRecord {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }

    /// The attribute's value for the file whose inode is `ino`.
    fn to_bytes(self, ino: u64) -> [u8; OWNER_RECORD_LEN] {
        let mut b = [0u8; OWNER_RECORD_LEN];
        b[0..4].copy_from_slice(&OWNER_TAG.to_le_bytes());
        b[4..8].copy_from_slice(&self.pid.to_le_bytes());
        b[8..16].copy_from_slice(&self.start_time.to_le_bytes());
        b[16..24].copy_from_slice(&ino.to_le_bytes());
        b
    }

    /// Records this process as the creator of `file`. `Ok(false)` when
    /// its file system keeps no extended attributes of users.
    fn record_creator(file: &File) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let ino = file.metadata()?.ino();
        let value = Self::this_process().to_bytes(ino);
        match rustix::fs::fsetxattr(file, OWNER_XATTR, &value, rustix::fs::XattrFlags::CREATE) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOTSUP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The record of `file`, `None` when it has none, or one that is not
    /// shmrt's or names another inode (the file is a copy).
    pub fn read(file: &File) -> io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        let mut b = [0u8; OWNER_RECORD_LEN];
        let n = match rustix::fs::fgetxattr(file, OWNER_XATTR, &mut b) {
            Ok(n) => n,
            // None, one too long to be ours, or a file system without them.
            Err(
                rustix::io::Errno::NODATA | rustix::io::Errno::RANGE | rustix::io::Errno::NOTSUP,
            ) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if n != OWNER_RECORD_LEN || half(0) != OWNER_TAG || word(16) != file.metadata()?.ino() {
            return Ok(None);
        }
        Ok(Some(OwnerRecord {
            pid: half(4),
            start_time: word(8),
        }))
    }

    /// Whether the recorded process still runs here: its pid exists with
    /// the recorded start time. `None` when that cannot be told (no
    /// `/proc`, or no start time was recorded).
    pub fn process_running(&self) -> Option<bool> {
        if self.start_time == 0 || !Path::new("/proc/self/stat").exists() {
            return None;
        }
        Some(process_start_time(self.pid) == Some(self.start_time))
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// after boot. `None` when there is no such process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 is the command in parentheses, which may hold spaces and
    // parentheses itself: count from the last `)`, which is field 3's
    // predecessor.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether some process holds the lock of a segment's creator on `file`
/// (tested with a shared, non-blocking `flock` that is released at once).
pub fn lock_held(file: &File) -> io::Result<bool> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            flock(file, FlockOperation::Unlock)?;
            Ok(false)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// What a segment file's owner record and lock say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Its creator's lock is held: the segment is being served.
    Live(Option<OwnerRecord>),
    /// Made by a shmrt (it has a record of this file) and nobody holds the lock: the
    /// creator is gone, or has let the file go (`--keep-segment`).
    Stale(OwnerRecord),
    /// No record and no lock: made by another program (vox-shm, an older
    /// shmrt, a copy), which says nothing about whether it is served.
    Unknown,
}

impl Owner {
    /// The owner of the segment file `file`.
    pub fn of(file: &File) -> io::Result<Self> {
        let record = OwnerRecord::read(file)?;
        Ok(match (lock_held(file)?, record) {
            (true, record) => Owner::Live(record),
            (false, Some(record)) => Owner::Stale(record),
            (false, None) => Owner::Unknown,
        })
    }

    /// A few words for a message: whose it is and whether it runs.
    pub fn describe(&self) -> String {
        let pid = |r: &OwnerRecord| match r.process_running() {
            Some(true) => format!("pid {}, still running", r.pid),
            Some(false) => format!("pid {}, gone", r.pid),
            None => format!("pid {}", r.pid),
        };
        match self {
            Owner::Live(Some(r)) => format!("in use by a live process (created by {})", pid(r)),
            Owner::Live(None) => "in use by a live process".into(),
            Owner::Stale(r) => format!(
                "created by a shmrt that no longer serves it ({}), nobody holds its lock",
                pid(r)
            ),
            Owner::Unknown => "made by another program or an older shmrt (no owner record)".into(),
        }
    }
}

/// The named segment files this process created and still has (device
/// and inode): what [`remove_if_created_here`] may remove.
static CREATED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Removes `path` if it is a named segment file this process created
/// (the same file, not merely the same name: a run that failed to create
/// its segment because `path` was taken must not remove the file that
/// took it). Returns whether it was removed.
pub fn remove_if_created_here(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let id = file_id(&meta);
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if !created.contains(&id) {
        return Ok(false);
    }
    std::fs::remove_file(path)?;
    created.retain(|c| *c != id);
    Ok(true)
}

/// Takes the creator's lock on a segment file shmrt creates.
fn lock_as_creator(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
}

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
    _sigbus: Option<crate::sigbus::Guard>,
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
    Region(Arc<crate::memory_window::GuestRegion>),
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
            .then(|| crate::sigbus::protect(mmap.as_ptr(), mmap.len(), &truncated))
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

/// Why an existing segment file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenSegmentError {
    #[error("cannot open segment {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("segment {} is {len} bytes, too small or too large to map", path.display())]
    Size { path: PathBuf, len: u64 },
    #[error("segment {} is not valid: {error}", path.display())]
    Header { path: PathBuf, error: HeaderError },
    #[error("segment {} was truncated while it was being opened", path.display())]
    Truncated { path: PathBuf },
}

/// Opens `path`, the segment file itself: never through a symbolic link
/// at its end, never blocking (opening a FIFO or a device node can block
/// forever, or do something), and only a regular file, checked on the
/// opened descriptor. Anything else is an error that says what it is.
/// Returns the file and its length.
pub(crate) fn open_regular(path: &Path, write: bool) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // Say why by what the path is: a symbolic link fails with ELOOP, a
        // socket with ENXIO, a directory opened for writing with EISDIR.
        Err(e) => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.is_file() => not_regular(meta.file_type()),
                _ => e,
            });
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok((file, meta.len()))
}

fn not_regular(kind: FileType) -> io::Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_symlink() {
        "is a symbolic link, which shmrt does not follow: give the path of the segment file itself"
    } else if kind.is_fifo() {
        "is a FIFO, not a regular file"
    } else if kind.is_socket() {
        "is a socket, not a regular file"
    } else if kind.is_char_device() {
        "is a character device, not a regular file"
    } else if kind.is_block_device() {
        "is a block device, not a regular file"
    } else if kind.is_dir() {
        "is a directory, not a regular file"
    } else {
        "is not a regular file"
    };
    io::Error::new(io::ErrorKind::InvalidInput, what)
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
    /// [`crate::segment_template`]). Nothing is read or written here: the
    /// host's view waits for the placement.
    pub(crate) fn create_in_guest_memory(
        template: Arc<crate::segment_template::SegmentTemplate>,
        initial_pages: u64,
    ) -> Result<(Self, Arc<crate::memory_window::GuestRegion>), SandboxError> {
        let (layout, size) = (template.layout, template.size);
        let window_at =
            usize::try_from(initial_pages.saturating_mul(WASM_PAGE_SIZE)).unwrap_or(usize::MAX);
        let region = crate::memory_window::GuestRegion::reserve(window_at, template)
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
    pub(crate) fn region(&self) -> Option<&Arc<crate::memory_window::GuestRegion>> {
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

/// The existing file at `path`, locked as its creator's lock, when it is a
/// stale segment and `replace` allows replacing it; otherwise an error
/// that says what the file is (and, when it is stale, how to reclaim it).
fn lock_stale(path: &Path, replace: bool) -> io::Result<(File, OwnerRecord)> {
    let exists = |what: String| io::Error::new(io::ErrorKind::AlreadyExists, what);
    let Ok((file, len)) = open_regular(path, false) else {
        return Err(exists("a file of that name exists".into()));
    };
    let owner = if len >= 128 {
        Owner::of(&file)?
    } else {
        Owner::Unknown
    };
    match owner {
        // The record follows the inode, through every hard link and every
        // later writer of it: only a file that still holds the segment
        // shmrt laid out is ours to replace (a guest with `--dir` access
        // can link the segment under another name, which another program
        // may then fill with its own data).
        Owner::Stale(_) if replace && !still_a_segment(&file, len) => Err(exists(
            "it has the owner record of a segment a shmrt made and left, but no longer holds \
             that segment (no segment header of its length: another program wrote it, or it is \
             a link made to the segment); `--replace-stale` replaces only the segment itself; \
             remove the file yourself if nothing uses it"
                .into(),
        )),
        Owner::Stale(record) if replace => match lock_as_creator(&file) {
            Ok(()) => Ok((file, record)),
            // Someone took it since: replacing it too, or serving it.
            Err(_) => Err(exists(
                "it is a stale segment, but another process took it meanwhile".into(),
            )),
        },
        Owner::Stale(_) => Err(exists(format!(
            "it exists, a stale segment: {}; `--replace-stale` replaces it",
            owner.describe()
        ))),
        Owner::Live(_) => Err(exists(format!(
            "it exists, {}; a live segment is never replaced",
            owner.describe()
        ))),
        Owner::Unknown if replace => Err(exists(format!(
            "it exists, {}: `--replace-stale` replaces only a segment a shmrt made and left; \
             remove the file yourself if nothing uses it",
            owner.describe()
        ))),
        Owner::Unknown => Err(exists("it exists".into())),
    }
}

/// Whether `file` (of `len` bytes) still starts with a segment header
/// whose total size, rounded up to the window's 64 KiB, is its length (as
/// a named segment is made).
fn still_a_segment(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 24];
    if file.read_exact_at(&mut head, 0).is_err() {
        return false;
    }
    let total = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    head[..8] == shmrt_primitives::segment_header::MAGIC[..]
        && total != 0
        && total.checked_next_multiple_of(65536) == Some(len)
}

/// Checks that `name` in `dir` is still the file `old` (a regular file,
/// same device and inode): nobody replaced it between our open and our
/// lock.
fn still_named(dir: &Dir, name: &Path, old: &(File, OwnerRecord)) -> io::Result<()> {
    use cap_std::fs::MetadataExt as _;
    use std::os::unix::fs::MetadataExt;
    let now = dir.symlink_metadata(name)?;
    let was = old.0.metadata()?;
    if now.dev() != was.dev() || now.ino() != was.ino() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the stale segment was replaced by another process meanwhile",
        ));
    }
    Ok(())
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
    fn the_owner_record_round_trips_and_names_this_process() {
        let me = OwnerRecord::this_process();
        assert_eq!(me.pid, std::process::id());
        assert_ne!(me.start_time, 0, "read from /proc/self/stat");
        assert_eq!(me.process_running(), Some(true));
        let dir = tempdir("record");
        let path = dir.join("seg");
        std::fs::write(&path, [0u8; 128]).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(OwnerRecord::read(&file).unwrap(), None);
        assert!(
            OwnerRecord::record_creator(&file).unwrap(),
            "ext4 and tmpfs keep them"
        );
        assert_eq!(OwnerRecord::read(&file).unwrap(), Some(me));
        // The same record on another file (copied with its attributes)
        // names the first one's inode: not a record of this file.
        let copy = dir.join("copy");
        std::fs::write(&copy, [0u8; 128]).unwrap();
        let copy = File::open(&copy).unwrap();
        let mut value = [0u8; 64];
        let n = rustix::fs::fgetxattr(&file, OWNER_XATTR, &mut value).unwrap();
        rustix::fs::fsetxattr(
            &copy,
            OWNER_XATTR,
            &value[..n],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(OwnerRecord::read(&copy).unwrap(), None);
        let gone = OwnerRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(
            gone.process_running(),
            Some(false),
            "a reused pid is not ours"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn only_regular_files_open_and_symlinks_are_not_followed() {
        let dir = tempdir("kinds");
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sock = dir.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(open_regular(&file, false).unwrap().1, 1);
        for (path, what) in [
            (&link, "symbolic link"),
            (&fifo, "FIFO"),
            (&sock, "socket"),
            (&dir, "directory"),
            (&PathBuf::from("/dev/null"), "character device"),
        ] {
            for write in [false, true] {
                let e = open_regular(path, write).unwrap_err().to_string();
                assert!(e.contains(what), "{}: {e}", path.display());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
