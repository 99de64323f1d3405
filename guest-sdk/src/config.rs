//! The configuration the host gave at spawn (`SandboxOptions::config`,
//! `shmrt run --config key=value`): UTF-8 keys and values, read through
//! the `config-get` import, without WASI.
//!
//! ```no_run
//! let mut buf = [0u8; 64];
//! let greeting = shmrt_guest::config::get("greeting", &mut buf)
//!     .ok()
//!     .flatten()
//!     .unwrap_or("hello");
//! ```

use core::fmt;

use crate::host::{self, import_codes};

/// Why a configuration value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value is longer than the buffer given.
    TooLong {
        /// The value's length in bytes.
        len: usize,
    },
    /// The value is not UTF-8 (a host of the format that is not shmrt).
    NotUtf8,
    /// The host refused the read (an `import_codes` value).
    Refused(i64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooLong { len } => {
                write!(
                    f,
                    "the configuration value is {len} bytes, more than the buffer"
                )
            }
            ConfigError::NotUtf8 => f.write_str("the configuration value is not UTF-8"),
            ConfigError::Refused(code) => {
                write!(f, "the host refused to read the configuration ({code})")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

/// The value of `key` as bytes in `buf`, `None` when the host gave no such
/// key.
pub fn get_bytes<'b>(key: &str, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, ConfigError> {
    let n = host::config_get(key.as_bytes(), buf);
    match n {
        import_codes::NOT_FOUND => Ok(None),
        n if n < 0 => Err(ConfigError::Refused(n)),
        n => {
            let len = n as usize;
            if len > buf.len() {
                return Err(ConfigError::TooLong { len });
            }
            Ok(Some(&buf[..len]))
        }
    }
}

/// The value of `key` as text in `buf`, `None` when the host gave no such
/// key.
pub fn get<'b>(key: &str, buf: &'b mut [u8]) -> Result<Option<&'b str>, ConfigError> {
    match get_bytes(key, buf)? {
        None => Ok(None),
        Some(bytes) => core::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ConfigError::NotUtf8),
    }
}

/// The value of `key`, `None` when the host gave no such key (the `alloc`
/// feature).
#[cfg(feature = "alloc")]
pub fn get_string(key: &str) -> Result<Option<alloc::string::String>, ConfigError> {
    let mut buf = alloc::vec![0u8; 256];
    loop {
        match get(key, &mut buf) {
            Ok(v) => return Ok(v.map(alloc::string::String::from)),
            Err(ConfigError::TooLong { len }) => buf.resize(len, 0),
            Err(e) => return Err(e),
        }
    }
}
