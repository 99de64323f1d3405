//! Checks made on a module before it is compiled, with errors that say
//! how to fix the plugin.

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

use crate::host_imports::MODULE as SHMRT_MODULE;
use crate::memory_limit::{MAX_MEMORIES, MAX_TABLES};

/// What the runtime needs to know about a module.
#[derive(Debug, Default)]
pub(crate) struct ModuleFacts {
    pub imports_shmrt: bool,
    pub imports_memory: bool,
    /// The first defined memory: (is 64-bit, initial pages, maximum pages).
    pub memory: Option<(bool, u64, Option<u64>)>,
    /// Memories and tables, imported or defined.
    pub memories: usize,
    pub tables: usize,
}

/// Reads the facts; a parse error is left for wasmtime to report.
pub(crate) fn facts(bytes: &[u8]) -> ModuleFacts {
    let mut f = ModuleFacts::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ImportSection(reader) => {
                for imp in reader.into_imports().flatten() {
                    if imp.module == SHMRT_MODULE {
                        f.imports_shmrt = true;
                    }
                    match imp.ty {
                        TypeRef::Memory(_) => {
                            f.imports_memory = true;
                            f.memories += 1;
                        }
                        TypeRef::Table(_) => f.tables += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                f.memories += reader.count() as usize;
                if let Some(Ok(m)) = reader.into_iter().next() {
                    f.memory.get_or_insert((m.memory64, m.initial, m.maximum));
                }
            }
            Payload::TableSection(reader) => f.tables += reader.count() as usize,
            _ => {}
        }
    }
    f
}

/// Whether the module validates with the threads proposal off, i.e. has
/// no atomic instruction (nor shared memory).
pub(crate) fn has_no_atomics(bytes: &[u8]) -> bool {
    let features =
        WasmFeatures::default() & !WasmFeatures::THREADS & !WasmFeatures::SHARED_EVERYTHING_THREADS;
    Validator::new_with_features(features)
        .validate_all(bytes)
        .is_ok()
}

/// Refuses what the memory window can not serve. `window_pages` is the
/// segment's size in 64 KiB pages.
pub(crate) fn check(bytes: &[u8], window_pages: u64) -> Result<(), String> {
    let f = facts(bytes);
    if f.imports_shmrt && has_no_atomics(bytes) {
        return Err("module imports the `shmrt` interface but contains no atomic instruction, so its ring \
                    polling could hang forever; rebuild it with `-C target-feature=+atomics,+bulk-memory` \
                    (`shmrt build` does this; or set it under [build] rustflags in .cargo/config.toml)"
            .into());
    }
    if f.imports_memory {
        return Err("module imports its linear memory; shmrt places the segment inside a memory the module \
                    defines itself: link without --import-memory"
            .into());
    }
    if f.memories > MAX_MEMORIES {
        return Err(format!(
            "module has {} linear memories; shmrt allows at most {MAX_MEMORIES} (each reserves 4 GiB \
             of address space)",
            f.memories
        ));
    }
    if f.tables > MAX_TABLES {
        return Err(format!(
            "module has {} tables; shmrt allows at most {MAX_TABLES}",
            f.tables
        ));
    }
    let Some((is64, initial, maximum)) = f.memory else {
        return Err(
            "module defines no linear memory, so there is nowhere to place the shared segment"
                .into(),
        );
    };
    if is64 {
        return Err(
            "module uses a 64-bit memory (memory64); shmrt supports 32-bit memories only".into(),
        );
    }
    if let Some(max) = maximum
        && max < initial + window_pages
    {
        return Err(format!(
            "module declares a maximum of {max} pages, leaving no room for the {window_pages}-page segment \
             window after its {initial} initial pages; link with a larger --max-memory or none"
        ));
    }
    Ok(())
}
