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
//! Named and foreign files can be truncated by anyone who can open them:
//! their mappings are registered with the SIGBUS handler ([`crate::sigbus`])
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

/// The host's page size for file mappings.
const OS_PAGE: u64 = 4096;

/// Random temporary names tried before `create_named` gives up.
const PART_ATTEMPTS: usize = 8;

/// A segment file and the host's mapping of it.
pub struct SegmentFile {
    file: Arc<File>,
    map: Mapping,
    segment: Segment,
    /// Bytes of the file (the mapping may round up within the last page).
    file_len: u64,
    /// Removed on drop: (directory, file name).
    remove: Option<(Dir, PathBuf)>,
    path: Option<PathBuf>,
}

/// The host's mapping of a segment file, registered with the SIGBUS
/// handler from the start when others can truncate the file.
struct Mapping {
    /// Declared before `mmap` so that it drops first: the range is
    /// unregistered before it is unmapped.
    _sigbus: Option<crate::sigbus::Guard>,
    mmap: MmapMut,
    /// A page of the file vanished under a mapping (the file was
    /// truncated); raised from the SIGBUS handler.
    truncated: Arc<AtomicBool>,
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
            mmap,
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
        // Named files can be truncated by others (memfds are sealed).
        let mut map = Mapping::new(&file, len, path.is_some())
            .map_err(|e| SandboxError::io("mapping the segment", e))?;
        // SAFETY: the mapping is page-aligned, `len` bytes, zero-filled and
        // not yet used by anyone else.
        let segment = unsafe { Segment::create(map.mmap.as_mut_ptr(), len, config) }
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
        let mut map = Mapping::new(&file, len, true).map_err(io_err)?;
        // SAFETY: `len` mapped bytes, page-aligned.
        let validated = unsafe { Segment::open_validated(map.mmap.as_mut_ptr(), len) };
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
            file: Arc::new(file),
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
        self.map.mmap.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.map.mmap.is_empty()
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
