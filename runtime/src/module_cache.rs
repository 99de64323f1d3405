//! Compiled modules kept on disk between runs, so that a plugin run again
//! starts without compiling it again.
//!
//! An entry is wasmtime's serialized form of a module (`Module::serialize`),
//! named by the SHA-256 of the module's binary, the engine's compatibility
//! hash (its settings and wasmtime's version) and shmrt's version: a module
//! compiled under other settings is another entry. The directory is made
//! mode 0700 and each entry is written under a temporary name, then
//! renamed, mode 0600, so a reader never sees half an entry.
//!
//! Loading an entry runs the machine code in it, so the directory must be
//! the user's own: `Module::deserialize_file` trusts what it loads. An
//! entry that fails to load (truncated, or from another build) is compiled
//! again and replaced.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Where compiled modules are kept, and the engine's identity.
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

    fn entry(&self, engine: &Engine, binary: &[u8]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(binary);
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut engine_hash);
        h.update(std::hash::Hasher::finish(&engine_hash).to_le_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        let digest = h.finalize();
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("modules").join(format!("{name}.cwasm"))
    }

    /// The module compiled from `binary`: loaded from the cache, or
    /// compiled and stored. A cache that can not be read or written is
    /// passed by (a warning), never a failure of the run.
    pub fn get_or_compile(&self, engine: &Engine, binary: &[u8]) -> wasmtime::Result<Module> {
        let path = self.entry(engine, binary);
        if path.is_file() {
            // SAFETY: the entry was written by `store` below into the
            // user's own cache directory (mode 0700), from a module this
            // engine compiled; wasmtime checks that it was made by a
            // compatible engine and refuses it otherwise.
            match unsafe { Module::deserialize_file(engine, &path) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::debug!(
                    "compiled-module cache entry {} is unusable ({e}); compiling again",
                    path.display()
                ),
            }
        }
        let module = Module::from_binary(engine, binary)?;
        if let Err(e) = store(&path, &module) {
            tracing::warn!(
                "could not keep the compiled module in {}: {e}; pass --no-cache to skip the cache",
                self.dir.display()
            );
        }
        Ok(module)
    }
}

fn store(path: &Path, module: &Module) -> anyhow::Result<()> {
    let dir = path.parent().expect("an entry is inside the directory");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = module.serialize()?;
    // Unique per process and per store, so that two writers of one entry
    // never share a temporary file; the rename makes either one win whole.
    static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.part",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    fs::rename(&tmp, path)?;
    Ok(())
}
