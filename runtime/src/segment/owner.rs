//! Who serves a named segment file: the owner record its creator writes
//! into an extended attribute of the file (out of the guest's reach: the
//! header is in its window) and the exclusive `flock` the creator holds
//! for as long as the segment lives. A file whose lock nobody holds was
//! left behind by a process that is gone (SIGKILL, a crash): `shmrt
//! inspect` calls it stale, and [`SegmentFile::create_named_with`] can
//! replace it. Also how a segment file is opened: never through a
//! symbolic link, never blocking, only a regular file.
//!
//! [`SegmentFile::create_named_with`]: crate::SegmentFile::create_named_with

use std::fs::{File, FileType};
use std::io;
use std::path::Path;

use cap_std::fs::Dir;

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
    pub(super) fn record_creator(file: &File) -> io::Result<bool> {
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
pub(super) static CREATED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

pub(super) fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
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
pub(super) fn lock_as_creator(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
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

/// The existing file at `path`, locked as its creator's lock, when it is a
/// stale segment and `replace` allows replacing it; otherwise an error
/// that says what the file is (and, when it is stale, how to reclaim it).
pub(super) fn lock_stale(path: &Path, replace: bool) -> io::Result<(File, OwnerRecord)> {
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
pub(super) fn still_named(dir: &Dir, name: &Path, old: &(File, OwnerRecord)) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
