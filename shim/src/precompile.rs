//! Precompiled modules: runwasi calls the shim's [`Precompiler`] the first
//! time an image runs and keeps what it returns in containerd's content
//! store, next to the image; later runs get it instead of the module.
//!
//! What is kept is a bundle: the module's bytes and the entry shmrt's
//! module cache holds for it (wasmtime's compiled form behind shmrt's
//! header, which names the module's SHA-256 and the compiled bytes'). The
//! plugin's run writes the entry into a cache directory of its own and
//! runs the module with that cache: shmrt checks the entry as it checks any
//! (module hash, content hash, engine settings) and compiles afresh if it
//! does not fit, e.g. a run with `SHMRT_FUEL` (another engine setting).

use std::hash::Hash;
use std::path::Path;

use anyhow::Context;
use containerd_shim_wasm::sandbox::context::WasmLayer;
use containerd_shim_wasm::shim::Compiler;

/// The bundle's first bytes.
const MAGIC: &[u8; 8] = b"SHMRTPC1";

/// Compiles modules for runwasi's precompile hook.
#[derive(Debug)]
pub struct Precompiler;

impl Compiler for Precompiler {
    fn cache_key(&self) -> impl Hash {
        // The entries say themselves which engine made them; this key
        // only spares compiling again for each run of the same shim.
        (env!("CARGO_PKG_VERSION"), std::env::consts::ARCH)
    }

    async fn compile(&self, layers: &[WasmLayer]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        layers
            .iter()
            .map(|layer| {
                // A layer that is not a module (or that shmrt refuses) is
                // left as it is: its run says why.
                if layer.precompiled || !layer.layer.starts_with(b"\0asm") {
                    return Ok(None);
                }
                match compile(&layer.layer) {
                    Ok(bundle) => Ok(Some(bundle)),
                    Err(e) => {
                        log::warn!("not precompiling a wasm layer: {e:#}");
                        Ok(None)
                    }
                }
            })
            .collect()
    }
}

/// The bundle of `wasm`: compiled as `shmrt run` compiles it by default.
fn compile(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let dir = tempdir()?;
    let result = (|| {
        let runtime = shmrt::Runtime::with_config(shmrt::RuntimeConfig {
            fuel: false,
            module_cache: Some(dir.join("shmrt")),
        })?;
        runtime.prepare(wasm)?;
        let modules = dir.join("shmrt").join("modules");
        let entry = std::fs::read_dir(&modules)
            .with_context(|| format!("reading {}", modules.display()))?
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .context("shmrt kept no compiled entry for the module")?;
        let name = entry.file_name().into_string().ok().context("entry name")?;
        let compiled = std::fs::read(entry.path())?;
        Ok(bundle(wasm, &name, &compiled))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh private directory for one compilation.
fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "shmrt-precompile-{}-{}",
        std::process::id(),
        shmrt::monotonic_ns()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn bundle(wasm: &[u8], name: &str, compiled: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 16 + wasm.len() + name.len() + compiled.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(wasm.len() as u64).to_le_bytes());
    out.extend_from_slice(wasm);
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(compiled);
    out
}

/// A bundle's parts: the module, the cache entry's file name and its bytes.
pub struct Unbundled<'a> {
    pub wasm: &'a [u8],
    pub entry_name: &'a str,
    pub entry: &'a [u8],
}

/// The parts of `bytes`, a bundle made by [`Precompiler`].
pub fn unbundle(bytes: &[u8]) -> anyhow::Result<Unbundled<'_>> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(rest.len() >= n, "truncated");
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> anyhow::Result<usize> {
        let b = take(rest, 8)?;
        Ok(usize::try_from(u64::from_le_bytes(b.try_into()?))?)
    }
    let parse = || {
        let mut rest = bytes;
        anyhow::ensure!(
            take(&mut rest, 8)? == MAGIC,
            "not a shmrt precompiled bundle"
        );
        let n = len(&mut rest)?;
        let wasm = take(&mut rest, n)?;
        let n = len(&mut rest)?;
        let entry_name = std::str::from_utf8(take(&mut rest, n)?)?;
        anyhow::ensure!(
            Path::new(entry_name)
                .file_name()
                .is_some_and(|f| f == entry_name),
            "entry name `{entry_name}` is not a file name"
        );
        Ok(Unbundled {
            wasm,
            entry_name,
            entry: rest,
        })
    };
    parse().context(
        "the precompiled layer runwasi gave back is not one this shim made: remove the image's \
         `runwasi.io/precompiled/shmrt/*` labels and content, and run it again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_damaged_ones_are_refused() {
        let b = bundle(b"\0asm\x01\0\0\0", "abc.cwasm", b"compiled");
        let u = unbundle(&b).unwrap();
        assert_eq!(u.wasm, b"\0asm\x01\0\0\0");
        assert_eq!(u.entry_name, "abc.cwasm");
        assert_eq!(u.entry, b"compiled");
        assert!(unbundle(&b[..20]).is_err());
        assert!(unbundle(b"\0asm\x01\0\0\0").is_err());
        let evil = bundle(b"", "../x.cwasm", b"");
        assert!(unbundle(&evil).is_err());
    }

    #[test]
    fn a_module_compiles_into_a_bundle_holding_its_cache_entry() {
        let wasm = wat::parse_str("(module (memory 1) (func (export \"_start\")))").unwrap();
        let b = compile(&wasm).unwrap();
        let u = unbundle(&b).unwrap();
        assert_eq!(u.wasm, &wasm[..]);
        assert!(u.entry_name.ends_with(".cwasm"));
        assert!(u.entry.starts_with(b"SHMRTC01"));
    }
}
