//! Calling the host's functions (registered by the embedder, e.g. a
//! key-value store): synchronous, in every execution mode, through the
//! `host-call` import. The input is read by the host in place in our
//! memory; an output that fits the buffer given is written there in place.
//!
//! ```no_run
//! let mut out = [0u8; 256];
//! match shmrt_guest::host_fn::call("kv_get", b"user:42", &mut out) {
//!     Ok(value) => shmrt_guest::info!("got {} bytes", value.len()),
//!     Err(e) => shmrt_guest::warn!("kv_get: {}", e),
//! }
//! ```

use core::fmt;

use crate::host::{self, import_codes};

/// Bytes of a host function's failure message kept by [`HostCallError`];
/// the rest is cut.
pub const MAX_HOST_MESSAGE: usize = 256;

/// Why a host call gave no output.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostCallError {
    /// The host has no function of that name.
    NoSuchFunction,
    /// The function returned an error.
    Failed {
        /// Its code.
        code: i32,
        /// Its message.
        message: HostMessage,
    },
    /// The function panicked (the host logged it).
    Panicked {
        /// The panic's message.
        message: HostMessage,
    },
    /// The output is longer than the buffer given: it is kept by the host
    /// until the next host call; read it with [`take_output`].
    OutputTooLarge {
        /// The output's length in bytes.
        len: usize,
    },
    /// The host refused the call (a host call from inside a host call,
    /// a sandbox being stopped, a bad argument): an `import_codes` value.
    Refused(i64),
}

/// A host function's message, cut at [`MAX_HOST_MESSAGE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct HostMessage {
    buf: [u8; MAX_HOST_MESSAGE],
    len: usize,
}

impl HostMessage {
    /// The message as text (what is not UTF-8 of it is left out).
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..self.len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    fn pending() -> (i32, HostMessage) {
        let mut buf = [0u8; MAX_HOST_MESSAGE + 4];
        let n = host::host_result(&mut buf);
        // The host writes what fits and gives the whole length.
        let got = usize::try_from(n).unwrap_or(0).min(buf.len());
        let mut message = HostMessage {
            buf: [0; MAX_HOST_MESSAGE],
            len: 0,
        };
        let code = buf
            .get(..4)
            .map_or(0, |b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
        let text = buf.get(4..got).unwrap_or(&[]);
        message.len = text.len().min(MAX_HOST_MESSAGE);
        message.buf[..message.len].copy_from_slice(&text[..message.len]);
        (code, message)
    }
}

impl fmt::Debug for HostMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HostMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for HostCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostCallError::NoSuchFunction => f.write_str("the host has no function of that name"),
            HostCallError::Failed { code, message } => {
                write!(f, "the host function failed ({code}): {message}")
            }
            HostCallError::Panicked { message } => {
                write!(f, "the host function panicked: {message}")
            }
            HostCallError::OutputTooLarge { len } => write!(
                f,
                "the host function's output is {len} bytes, more than the buffer given"
            ),
            HostCallError::Refused(code) => write!(f, "the host refused the call ({code})"),
        }
    }
}

impl core::error::Error for HostCallError {}

/// Calls the host function `name` with `input` (read by the host in place)
/// and gives its output, written into `out` in place.
#[allow(
    clippy::result_large_err,
    reason = "no allocator: the host's message travels on the stack"
)]
pub fn call<'o>(name: &str, input: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], HostCallError> {
    let n = host::host_call(name.as_bytes(), input, out);
    match n {
        import_codes::NOT_FOUND => Err(HostCallError::NoSuchFunction),
        import_codes::FAILED => {
            let (code, message) = HostMessage::pending();
            Err(HostCallError::Failed { code, message })
        }
        import_codes::PANICKED => {
            let (_, message) = HostMessage::pending();
            Err(HostCallError::Panicked { message })
        }
        n if n < 0 => Err(HostCallError::Refused(n)),
        n => {
            let len = n as usize;
            match out.get(..len) {
                Some(output) => Ok(output),
                None => Err(HostCallError::OutputTooLarge { len }),
            }
        }
    }
}

/// Takes the output a [`call`] kept because it did not fit
/// ([`HostCallError::OutputTooLarge`]): `None` when `out` is still too
/// short (it stays kept) or nothing is kept.
pub fn take_output(out: &mut [u8]) -> Option<&[u8]> {
    let n = host::host_result(out);
    let len = usize::try_from(n).ok()?;
    out.get(..len)
}

/// Calls the host function `name` and gives its output, however long (the
/// `alloc` feature).
#[cfg(feature = "alloc")]
#[allow(
    clippy::result_large_err,
    reason = "no allocator: the host's message travels on the stack"
)]
pub fn call_vec(name: &str, input: &[u8]) -> Result<alloc::vec::Vec<u8>, HostCallError> {
    let mut out = alloc::vec![0u8; 256];
    match call(name, input, &mut out) {
        Ok(output) => {
            let len = output.len();
            out.truncate(len);
            Ok(out)
        }
        Err(HostCallError::OutputTooLarge { len }) => {
            out.resize(len, 0);
            let n = take_output(&mut out).map(<[u8]>::len);
            match n {
                Some(n) => {
                    out.truncate(n);
                    Ok(out)
                }
                None => Err(HostCallError::OutputTooLarge { len }),
            }
        }
        Err(e) => Err(e),
    }
}
