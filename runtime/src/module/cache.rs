//! Compiled modules kept on disk between runs, so that a plugin run again
//! starts without compiling it again.
//!
//! An entry is wasmtime's serialized form of a module (`Module::serialize`)
//! behind a header of ours, named by the SHA-256 of the module's binary,
//! the engine's compatibility hash (its settings and wasmtime's version)
//! and shmrt's version: a module compiled under other settings is another
//! entry. The header repeats the module's SHA-256 and holds the SHA-256 of
//! the serialized bytes, both checked before anything is loaded: an entry
//! copied under another module's name, or damaged on disk, is compiled
//! again and replaced, never run (wasmtime itself checks only its own
//! header and the engine's compatibility, and machine code with a flipped
//! byte runs).
//!
//! Loading an entry runs the machine code in it, so the cache must be the
//! user's own: a directory that is not owned by this user or that others
//! may write, or that lies under such a directory, is not used (a warning
//! says so). Entries are written under a
//! fresh temporary name (created exclusively, mode 0600) and renamed into
//! place, so that a reader never sees half an entry and a planted link is
//! never written through. Someone who can write as this user can forge an
//! entry; they can also run code as this user anyway.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The header of an entry: a tag, the module's SHA-256, the SHA-256 of
/// the serialized module that follows.
const TAG: &[u8; 8] = b"SHMRTC01";
const HEADER_LEN: usize = 8 + 32 + 32;

/// Where compiled modules are kept.
#[derive(Debug)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    /// The user's default cache directory for shmrt: `$XDG_CACHE_HOME/shmrt`
    /// or `~/.cache/shmrt`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(base.join("shmrt"))
    }

    pub fn new(dir: PathBuf) -> Self {
        ModuleCache { dir }
    }

    fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }

    /// The entry's path and the module's SHA-256.
    fn entry(&self, engine: &Engine, binary: &[u8]) -> (PathBuf, [u8; 32]) {
        let module_hash: [u8; 32] = Sha256::digest(binary).into();
        let mut h = Sha256::new();
        h.update(module_hash);
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut engine_hash);
        h.update(std::hash::Hasher::finish(&engine_hash).to_le_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        let name: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        (
            self.modules_dir().join(format!("{name}.cwasm")),
            module_hash,
        )
    }

    /// The module compiled from `binary`: loaded from the cache, or
    /// compiled and stored. A cache that can not be used, read or written
    /// is passed by (a warning), never a failure of the run.
    pub fn get_or_compile(&self, engine: &Engine, binary: &[u8]) -> wasmtime::Result<Module> {
        let (path, module_hash) = self.entry(engine, binary);
        let usable = match self.prepare() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "not using the compiled-module cache {}: {e}; pass --no-cache to skip it",
                    self.dir.display()
                );
                false
            }
        };
        if usable && let Some(module) = load(engine, &path, &module_hash) {
            tracing::debug!("compiled module taken from the cache: {}", path.display());
            return Ok(module);
        }
        let module = compile_and_log(engine, binary, usable)?;
        if usable && let Err(e) = store(&path, &module_hash, &module) {
            tracing::warn!(
                "could not keep the compiled module in {}: {e}; pass --no-cache to skip the cache",
                self.dir.display()
            );
        }
        Ok(module)
    }

    /// Makes the directories (mode 0700) and checks that they are this
    /// user's own and that nobody else may write them.
    fn prepare(&self) -> std::io::Result<()> {
        let modules = self.modules_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&modules)?;
        // SAFETY: a plain getuid call.
        let me = unsafe { libc::getuid() };
        for dir in [&self.dir, &modules] {
            let meta = fs::symlink_metadata(dir)?;
            if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} must be a directory of this user's that only they may write (mode 0700)",
                    dir.display()
                )));
            }
        }
        // Whoever may write a directory above the cache may swap it (or a
        // link on the way) for their own after this check. Each one, on
        // the path as given and with links resolved, is this user's or
        // root's and nobody else may write it, unless it is sticky (then
        // others can not rename what they do not own: its child is
        // checked in turn).
        let given = std::path::absolute(&self.dir)?;
        let resolved = fs::canonicalize(&self.dir)?;
        for dir in given.ancestors().chain(resolved.ancestors()).skip(1) {
            let meta = fs::metadata(dir)?;
            let others_write = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
            if (meta.uid() != me && meta.uid() != 0) || others_write {
                return Err(std::io::Error::other(format!(
                    "{} is above it and is not this user's, or others may write it: anyone who \
                     can write it can swap the cache for their own",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

/// Compiles `binary`, saying so at info level (`shmrt run -v`): a
/// compilation is the slow part of a first run.
pub(crate) fn compile_and_log(
    engine: &Engine,
    binary: &[u8],
    kept: bool,
) -> wasmtime::Result<Module> {
    let started = std::time::Instant::now();
    let module = Module::from_binary(engine, binary)?;
    tracing::info!(
        "compiled the module ({} KiB) in {:.0?}{}",
        binary.len().div_ceil(1024),
        started.elapsed(),
        if kept {
            "; kept in the module cache"
        } else {
            ""
        }
    );
    Ok(module)
}

/// The entry at `path` if it is whole and is `module_hash`'s.
fn load(engine: &Engine, path: &Path, module_hash: &[u8; 32]) -> Option<Module> {
    let bytes = fs::read(path).ok()?;
    let why = if bytes.len() < HEADER_LEN || &bytes[..8] != TAG {
        "not an entry of this shmrt"
    } else if &bytes[8..40] != module_hash {
        "the entry of another module"
    } else if bytes[40..72] != Sha256::digest(&bytes[HEADER_LEN..])[..] {
        "damaged"
    } else {
        // SAFETY: the bytes are what `store` wrote for this module (its
        // hash and the hash of the serialized bytes were checked just
        // now), from a module this engine's settings compiled, in a
        // directory only this user may write (`prepare`); wasmtime checks
        // the engine's compatibility again.
        match unsafe { Module::deserialize(engine, &bytes[HEADER_LEN..]) } {
            Ok(module) => return Some(module),
            Err(e) => {
                tracing::debug!("compiled-module cache entry {}: {e}", path.display());
                "made by another build"
            }
        }
    };
    tracing::debug!(
        "compiled-module cache entry {} is {why}; compiling again",
        path.display()
    );
    None
}

fn store(path: &Path, module_hash: &[u8; 32], module: &Module) -> anyhow::Result<()> {
    let dir = path.parent().expect("an entry is inside the directory");
    let serialized = module.serialize()?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(TAG);
    header.extend_from_slice(module_hash);
    header.extend_from_slice(&Sha256::digest(&serialized));
    // A fresh name, created exclusively: never a file or link someone put
    // there.
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{:016x}.part", random_u64()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let written = file
        .write_all(&header)
        .and_then(|()| file.write_all(&serialized));
    drop(file);
    if let Err(e) = written.map_err(anyhow::Error::from).and_then(|()| {
        fs::rename(&tmp, path)?;
        Ok(())
    }) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// 64 bits no other process can guess (std's per-process random keys).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}
