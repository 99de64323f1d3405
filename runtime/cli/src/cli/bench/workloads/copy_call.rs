//! The copy-call baseline of the payload and host-thread workloads: the
//! bench guest in plain wasmtime, handed each payload as Extism and
//! proxy-wasm do, copied into guest memory before an export is called.

use shmrt::SandboxError;

/// The baseline of the payload workloads: the bench guest in plain
/// wasmtime (no shmrt segment; epoch checks on, as Extism runs plugins),
/// handed each payload the way Extism and proxy-wasm do it: copied into
/// guest memory, then an export called on it.
pub(super) struct CopyCallGuest {
    store: wasmtime::Store<()>,
    memory: wasmtime::Memory,
    buffer: u32,
    checksum: wasmtime::TypedFunc<(u32, u32), u64>,
}

impl std::fmt::Debug for CopyCallGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyCallGuest")
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl CopyCallGuest {
    /// Instantiates the bench guest `guest` (its wasm bytes).
    pub(super) fn new(guest: &[u8]) -> Result<Self, SandboxError> {
        use wasmtime::{Config, Engine, Linker, Module, Store};
        let mut config = Config::new();
        config.wasm_threads(true);
        // Extism turns epoch interruption on for every plugin (it is how it
        // enforces timeouts), as shmrt does: both sides run the same
        // compiled checksum.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(baseline_error)?;
        let module = Module::new(&engine, guest).map_err(baseline_error)?;
        let mut linker = Linker::<()>::new(&engine);
        // Plain wasmtime: the module's imports (read from its own import
        // table) exist but are never called.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(baseline_error)?;
        let mut store = Store::new(&engine, ());
        // Nothing advances this engine's epoch: the checks never fire.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(baseline_error)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| baseline_error(wasmtime::Error::msg("no memory export")))?;
        let buffer = instance
            .get_typed_func::<(), u32>(&mut store, "bench_buffer")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(baseline_error)?;
        let checksum = instance
            .get_typed_func::<(u32, u32), u64>(&mut store, "bench_checksum")
            .map_err(baseline_error)?;
        Ok(CopyCallGuest {
            store,
            memory,
            buffer,
            checksum,
        })
    }

    /// A request and its reply the copying way: `data` copied into the
    /// guest's buffer, the export called on it, and `out.len()` bytes of
    /// the buffer copied back out as the reply.
    pub(super) fn round_trip(&mut self, data: &[u8], out: &mut [u8]) -> Result<u64, SandboxError> {
        let sum = self.checksum(0, data)?;
        self.memory
            .read(&self.store, self.buffer as usize, out)
            .map_err(|e| baseline_error(wasmtime::Error::msg(e.to_string())))?;
        Ok(sum)
    }

    /// Copies `data` into the guest's buffer, `offset` bytes in, and
    /// returns the word sum the guest computes of it there.
    pub(super) fn checksum(&mut self, offset: usize, data: &[u8]) -> Result<u64, SandboxError> {
        let at = self.buffer as usize + offset;
        let fits = offset + data.len() <= BENCH_BUFFER;
        if !fits {
            return Err(baseline_error(wasmtime::Error::msg(format!(
                "{} bytes at offset {offset} do not fit the bench guest's buffer",
                data.len()
            ))));
        }
        self.memory
            .write(&mut self.store, at, data)
            .map_err(|e| baseline_error(wasmtime::Error::msg(e.to_string())))?;
        self.checksum
            .call(&mut self.store, (at as u32, data.len() as u32))
            .map_err(baseline_error)
    }
}

/// Bytes of the bench guest's buffer (`bench_buffer`).
const BENCH_BUFFER: usize = (1 << 20) + 64;

/// A failure of plain wasmtime, the baselines' runtime, as the bench
/// reports errors.
pub(super) fn baseline_error(e: wasmtime::Error) -> SandboxError {
    SandboxError::Instantiate {
        sandbox: "copy-call".into(),
        message: format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use shmrt_primitives::checksum::sum64;

    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The bench guest's checksum, called the way the copy-call baseline
    /// calls it, at every offset from a 16-byte boundary: words on 8-byte
    /// boundaries are read from the next 16-byte boundary, others as they
    /// come, and each must give `sum64`.
    #[test]
    fn bench_guest_checksum_export_matches_sum64_at_every_offset() {
        let mut baseline = CopyCallGuest::new(crate::cli::bench::BENCH_GUEST).unwrap();
        for offset in 0..16 {
            for (i, len) in [0, 3, 8, 12, 20, 1027, 1040, 2048, 2071, 3100, 8200, 70_001]
                .into_iter()
                .enumerate()
            {
                let data = bytes((offset * 100 + i) as u64, len);
                assert_eq!(
                    baseline.checksum(offset, &data).unwrap(),
                    sum64(&data),
                    "{len} bytes at offset {offset}"
                );
            }
        }
        let too_long = vec![0u8; BENCH_BUFFER];
        let e = baseline.checksum(1, &too_long).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
