//! Checks made on a module before it is compiled, with errors that say
//! how to fix the plugin.

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

use crate::exec::host_imports::MODULE as SHMRT_MODULE;
use crate::state::memory_limit::{MAX_MEMORIES, MAX_TABLES};

/// What the runtime needs to know about a module.
#[derive(Debug, Default)]
pub(crate) struct ModuleFacts {
    pub imports_shmrt: bool,
    /// It imports WASI (preview 1): its sandboxes need a WASI context.
    pub imports_wasi: bool,
    pub imports_memory: bool,
    /// The first defined memory: (is 64-bit, initial pages, maximum pages).
    pub memory: Option<(bool, u64, Option<u64>)>,
    /// Memories and tables, imported or defined.
    pub memories: usize,
    pub tables: usize,
    /// It has a start function (guest code run by the instantiation).
    pub has_start: bool,
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
                    if imp.module.starts_with("wasi_") {
                        f.imports_wasi = true;
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
            Payload::StartSection { .. } => f.has_start = true,
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

/// Why a module is refused before it runs. `Display` says how to fix the
/// plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusedModule {
    /// It imports `shmrt` but has no atomic instruction.
    NoAtomics,
    /// It imports its linear memory.
    ImportsMemory,
    /// More linear memories than an instance may have.
    TooManyMemories { count: usize },
    /// More tables than an instance may have.
    TooManyTables { count: usize },
    /// It defines no linear memory.
    NoMemory,
    /// Its first memory is 64-bit.
    Memory64,
    /// Its declared maximum leaves no room for the window.
    NoRoomForWindow {
        maximum: u64,
        initial: u64,
        window_pages: u64,
    },
}

impl std::fmt::Display for RefusedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::NoAtomics => f.write_str(
                "module imports the `shmrt` interface but contains no atomic instruction, so its ring \
                 polling could hang forever; rebuild it with `-C target-feature=+atomics,+bulk-memory` \
                 (`shmrt build` does this; or set it under [build] rustflags in .cargo/config.toml)",
            ),
            Self::ImportsMemory => f.write_str(
                "module imports its linear memory; shmrt places the segment inside a memory the module \
                 defines itself: link without --import-memory",
            ),
            Self::TooManyMemories { count } => write!(
                f,
                "module has {count} linear memories; shmrt allows at most {MAX_MEMORIES} (each reserves 4 GiB \
                 of address space)"
            ),
            Self::TooManyTables { count } => write!(
                f,
                "module has {count} tables; shmrt allows at most {MAX_TABLES}"
            ),
            Self::NoMemory => f.write_str(
                "module defines no linear memory, so there is nowhere to place the shared segment",
            ),
            Self::Memory64 => f.write_str(
                "module uses a 64-bit memory (memory64); shmrt supports 32-bit memories only",
            ),
            Self::NoRoomForWindow {
                maximum,
                initial,
                window_pages,
            } => write!(
                f,
                "module declares a maximum of {maximum} pages, leaving no room for the {window_pages}-page segment \
                 window after its {initial} initial pages; link with a larger --max-memory or none"
            ),
        }
    }
}

impl std::error::Error for RefusedModule {}

/// Refuses what the memory window can not serve. `window_pages` is the
/// segment's size in 64 KiB pages.
#[cfg(test)]
pub(crate) fn check(bytes: &[u8], window_pages: u64) -> Result<(), RefusedModule> {
    let f = check_module(bytes)?;
    check_window(&f, window_pages)
}

/// The checks that depend on the module alone (made once per compiled
/// module); its facts when it passes.
pub(crate) fn check_module(bytes: &[u8]) -> Result<ModuleFacts, RefusedModule> {
    let f = facts(bytes);
    if f.imports_shmrt && has_no_atomics(bytes) {
        return Err(RefusedModule::NoAtomics);
    }
    if f.imports_memory {
        return Err(RefusedModule::ImportsMemory);
    }
    if f.memories > MAX_MEMORIES {
        return Err(RefusedModule::TooManyMemories { count: f.memories });
    }
    if f.tables > MAX_TABLES {
        return Err(RefusedModule::TooManyTables { count: f.tables });
    }
    let Some((is64, initial, maximum)) = f.memory else {
        return Err(RefusedModule::NoMemory);
    };
    if is64 {
        return Err(RefusedModule::Memory64);
    }
    let _ = (initial, maximum);
    Ok(f)
}

/// Whether a window of `window_pages` fits after the module's memory.
pub(crate) fn check_window(f: &ModuleFacts, window_pages: u64) -> Result<(), RefusedModule> {
    let Some((_, initial, maximum)) = f.memory else {
        return Err(RefusedModule::NoMemory);
    };
    if let Some(max) = maximum
        && max < initial + window_pages
    {
        return Err(RefusedModule::NoRoomForWindow {
            maximum: max,
            initial,
            window_pages,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_wat(text: &str, window_pages: u64) -> Result<(), RefusedModule> {
        check(&wat::parse_str(text).expect("valid WAT"), window_pages)
    }

    #[test]
    fn refusals_have_their_reasons() {
        assert_eq!(check_wat("(module)", 1), Err(RefusedModule::NoMemory));
        assert_eq!(
            check_wat(r#"(module (import "shmrt" "ring" (func)) (memory 1))"#, 1),
            Err(RefusedModule::NoAtomics)
        );
        assert_eq!(
            check_wat(r#"(module (import "env" "memory" (memory 1)))"#, 1),
            Err(RefusedModule::ImportsMemory)
        );
        assert_eq!(
            check_wat("(module (memory i64 1))", 1),
            Err(RefusedModule::Memory64)
        );
        assert_eq!(
            check_wat("(module (memory 2 3))", 2),
            Err(RefusedModule::NoRoomForWindow {
                maximum: 3,
                initial: 2,
                window_pages: 2
            })
        );
        assert_eq!(check_wat("(module (memory 2 4))", 2), Ok(()));
        assert!(
            RefusedModule::NoAtomics
                .to_string()
                .contains("+atomics,+bulk-memory")
        );
    }
}
