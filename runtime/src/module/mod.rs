//! A module before it runs: its bytes (`bytes.rs`), the checks it must
//! pass and the facts they find (`check.rs`), and the disk cache of
//! compiled modules (`cache.rs`). Above the state (its limits) and the
//! imports (their module name); below the runtime that prepares plugins.

pub(crate) mod bytes;
pub(crate) mod cache;
pub(crate) mod check;
