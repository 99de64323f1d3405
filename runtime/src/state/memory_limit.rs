//! The store limiter: one budget for the linear memories and tables a
//! guest makes the host allocate, the segment window excepted.

use std::sync::Arc;

use super::shared::SandboxShared;

/// The store limiter: one budget for everything the guest makes the host
/// allocate, across every linear memory and table of the instance (the
/// segment window does not count). A refused `memory.grow` returns -1 to
/// the guest, as wasm says; the refusal is remembered to explain a trap
/// that follows.
pub(crate) struct MemoryLimit {
    pub max: Option<usize>,
    /// Raised by the runtime around its own growth that maps the window.
    pub window_growth: bool,
    /// Bytes granted so far: memories' pages and tables' elements.
    used: usize,
    /// The last grant, taken back if the growth then failed.
    last_grant: usize,
    /// Told when a request goes over the budget.
    shared: Arc<SandboxShared>,
}

/// What a table element costs the host (wasmtime keeps a pointer each).
const TABLE_ELEMENT_BYTES: usize = 8;
/// Elements a table may have whatever the budget (without a budget, the
/// only bound on tables).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Linear memories an instance may have: each reserves 4 GiB of address
/// space; shmrt's window needs one.
pub(crate) const MAX_MEMORIES: usize = 4;
/// Tables an instance may have.
pub(crate) const MAX_TABLES: usize = 16;

impl MemoryLimit {
    pub(crate) fn new(max: Option<usize>, shared: Arc<SandboxShared>) -> Self {
        MemoryLimit {
            max,
            window_growth: false,
            used: 0,
            last_grant: 0,
            shared,
        }
    }

    /// Grants `bytes` more if the budget has them.
    fn grant(&mut self, bytes: usize) -> bool {
        let total = self.used.saturating_add(bytes);
        if self.max.is_some_and(|max| total > max) {
            self.shared.refuse_memory();
            self.last_grant = 0;
            return false;
        }
        self.used = total;
        self.last_grant = bytes;
        true
    }

    fn take_back(&mut self) {
        self.used -= std::mem::take(&mut self.last_grant);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The runtime's own growth that maps the window is never refused
        // and never counted.
        if self.window_growth {
            self.last_grant = 0;
            return Ok(true);
        }
        // Everything else counts: each memory's initial size (its creation
        // is a growth from 0), growth by a start function, and the guest's
        // `memory.grow` calls, on every memory the module has.
        Ok(self.grant(desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let added = desired.saturating_sub(current);
        Ok(self.grant(added.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        1
    }
}
