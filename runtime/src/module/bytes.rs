//! A module's bytes: read from a file (bounded), and told apart as a
//! binary or WAT text.

use std::io;
use std::path::Path;

use crate::error::SandboxError;

/// The most bytes read as a module: a larger file (or `/dev/zero`) is
/// refused before it fills the host's memory.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Reads a module file, at most [`MAX_MODULE_BYTES`].
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, SandboxError> {
    use std::io::Read;
    let read_err = |source| SandboxError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is larger than {} MiB, the most shmrt reads as a module",
                MAX_MODULE_BYTES >> 20
            ),
        )));
    }
    Ok(bytes)
}

/// The binary of a module given as a binary (by its magic) or as WAT
/// text; anything else is said to be neither, not parsed as WAT.
pub(crate) fn module_bytes(wasm: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if wasm.starts_with(b"\0asm") {
        return Ok(std::borrow::Cow::Borrowed(wasm));
    }
    let Ok(text) = std::str::from_utf8(wasm) else {
        return Err(
            "not a WebAssembly module: it starts with neither the binary magic \\0asm nor is it WAT text"
                .into(),
        );
    };
    if !text.trim_start().starts_with('(') && !text.trim_start().starts_with(";;") {
        return Err(
            "not a WebAssembly module: it starts with neither the binary magic \\0asm nor `(` of WAT text"
                .into(),
        );
    }
    wat::parse_str(text)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| format!("invalid WAT text: {e}"))
}
