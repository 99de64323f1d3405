//! The file behind a segment and the host's own mapping of it.
//!
//! Three kinds: an anonymous memfd (the default for a sandbox), sealed
//! against shrinking and growing so that neither side can pull pages out
//! from under the other; a named file that other processes and
//! `shmrt inspect` can open, created exclusively with mode 0600 through a
//! directory capability and removed on drop unless kept; and an existing
//! file another program made, opened for `--attach` and validated before
//! anything else is read.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use memmap2::{MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};
use shmrt_primitives::layout::WASM_PAGE_SIZE;
use shmrt_primitives::{HeaderError, Segment, SegmentConfig, SegmentLayout};

use crate::error::SandboxError;

/// The host's page size for file mappings.
const OS_PAGE: u64 = 4096;

/// A segment file and the host's mapping of it.
pub struct SegmentFile {
    file: Arc<File>,
    mmap: MmapMut,
    segment: Segment,
    /// Bytes of the file (the mapping may round up within the last page).
    file_len: u64,
    /// Removed on drop: (directory, file name).
    remove: Option<(Dir, PathBuf)>,
    path: Option<PathBuf>,
    /// A page of the file vanished under a mapping (the file was
    /// truncated); raised from the SIGBUS handler.
    truncated: Arc<std::sync::atomic::AtomicBool>,
    _sigbus: Option<crate::sigbus::Guard>,
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
}

impl SegmentFile {
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
    /// `keep`.
    pub fn create_named(
        path: &Path,
        config: &SegmentConfig,
        keep: bool,
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
        // before any work.
        if dir.symlink_metadata(&name).is_ok() {
            return Err(named_err(io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        let part = PathBuf::from(format!(".{}.{}.part", name.display(), std::process::id()));
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        {
            use cap_std::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = dir.open_with(&part, &opts).map_err(named_err)?.into_std();
        let built = file
            .set_len(size)
            .map_err(|e| SandboxError::io("sizing the segment file", e))
            .and_then(|()| Self::init(file, size, config, None, Some(path.to_owned())));
        // The link fails if `path` appeared meanwhile: never overwritten.
        let linked = built.and_then(|seg| {
            dir.hard_link(&part, &dir, &name)
                .map(|()| seg)
                .map_err(named_err)
        });
        if let Err(e) = dir.remove_file(&part) {
            tracing::warn!("could not remove {}: {e}", dir_path.join(&part).display());
        }
        let mut seg = linked?;
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
        // SAFETY: the file is ours and sized; other mappings of it are the
        // guest's window and peers, which by design share these pages.
        let mut mmap = unsafe { MmapOptions::new().len(len).map_mut(&file) }
            .map_err(|e| SandboxError::io("mapping the segment", e))?;
        // SAFETY: the mapping is page-aligned, `len` bytes, zero-filled and
        // not yet used by anyone else.
        let segment = unsafe { Segment::create(mmap.as_mut_ptr(), len, config) }
            .map_err(SandboxError::Config)?;
        Ok(Self::assemble(file, mmap, segment, size, remove, path))
    }

    /// Opens a segment file another program made and validates it: magic,
    /// version, sizes against the file, every offset in bounds.
    pub fn open_existing(path: &Path) -> Result<Self, OpenSegmentError> {
        let io_err = |source| OpenSegmentError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let len = usize::try_from(file_len)
            .ok()
            .filter(|&l| l >= 128 && (l as u64) < (1u64 << 32))
            .ok_or(OpenSegmentError::Size {
                path: path.to_owned(),
                len: file_len,
            })?;
        // SAFETY: a shared mapping of the file; the other program writes it
        // concurrently, which is what the validated readers are for. A
        // truncation under us is the documented limit of --attach.
        let mut mmap = unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(io_err)?;
        // SAFETY: `len` mapped bytes, page-aligned.
        let segment =
            unsafe { Segment::open_validated(mmap.as_mut_ptr(), len) }.map_err(|error| {
                OpenSegmentError::Header {
                    path: path.to_owned(),
                    error,
                }
            })?;
        Ok(Self::assemble(
            file,
            mmap,
            segment,
            file_len,
            None,
            Some(path.to_owned()),
        ))
    }

    fn assemble(
        file: File,
        mmap: MmapMut,
        segment: Segment,
        file_len: u64,
        remove: Option<(Dir, PathBuf)>,
        path: Option<PathBuf>,
    ) -> Self {
        let truncated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Named and foreign files can be truncated by others; memfds are
        // sealed.
        let sigbus = path
            .as_ref()
            .and_then(|_| crate::sigbus::protect(mmap.as_ptr(), mmap.len(), &truncated));
        SegmentFile {
            file: Arc::new(file),
            mmap,
            segment,
            file_len,
            remove,
            path,
            truncated,
            _sigbus: sigbus,
        }
    }

    /// The flag raised when a page of the file vanished under a mapping.
    pub(crate) fn truncated_flag(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.truncated
    }

    /// Whether the file was truncated under a mapping of it.
    pub fn was_truncated(&self) -> bool {
        self.truncated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The segment, through the host's mapping.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The file, for the guest's window.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes of the guest's window: the file rounded up to whole 64 KiB
    /// pages (what lies past the file is anonymous memory).
    pub fn window_len(&self) -> usize {
        self.file_len.div_ceil(WASM_PAGE_SIZE) as usize * WASM_PAGE_SIZE as usize
    }

    /// Bytes of the file to map into the window: its length rounded up to
    /// the OS page (the rest of that page reads as zeros).
    pub(crate) fn file_map_len(&self) -> usize {
        (self.file_len.div_ceil(OS_PAGE) * OS_PAGE) as usize
    }

    /// Bytes mapped by the host.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The file's path, for named and attached segments.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        if let Some((dir, name)) = self.remove.take()
            && let Err(e) = dir.remove_file(&name)
        {
            tracing::warn!("could not remove segment file {}: {e}", name.display());
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
