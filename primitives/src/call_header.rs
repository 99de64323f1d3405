//! Calls by name: a header at the start of a message's payload, so that a
//! host can call a plugin's exported functions and match each reply to its
//! call, over the plain message channel (the segment format is untouched:
//! to the rings and slots a call is a payload like any other).
//!
//! ```text
//! header, 16 bytes:  magic [0xC5, b'S', b'C'] u8 x 3
//!                    version u8 (1)
//!                    kind u8 (1 call, 2 reply, 3 failure)
//!                    name_len u8 (call: bytes of the name; else 0)
//!                    reserved u16 (0)
//!                    call_id u64 (chosen by the caller, echoed in the reply)
//! call:              name (UTF-8, 1..=255 bytes), zero-padded to a
//!                    multiple of 8, then the input
//! reply:             the output
//! failure:           code i32, then the message (UTF-8)
//! ```
//!
//! The same magic and version open a **packed-lines** message (kind 4),
//! which carries many lines of `shmrt run --framing lines` in one message
//! (see [`packed_lines`]):
//!
//! ```text
//! header, 16 bytes:  magic [0xC5, b'S', b'C'] u8 x 3
//!                    version u8 (1)
//!                    kind u8 (4 packed lines)
//!                    zero u8 x 11
//! body:              lines, each followed by b'\n' (none: an empty body)
//! ```
//!
//! A host packs lines only for a plugin that says it reads them (it
//! exports [`PACKED_LINES_EXPORT`]) and tells the plugin so (the
//! configuration key [`PACKED_LINES_CONFIG_KEY`] set to
//! [`PACKED_LINES_CONFIG_VALUE`]); the plugin answers a packed message with
//! packed messages, each of its answers one line of the body.
//!
//! The magic's first byte, 0xC5, opens a two-byte UTF-8 sequence and the
//! next, `S`, cannot continue it: a payload of text never starts with a
//! call header, so a plugin can tell calls from plain lines. A message
//! without the magic is not a call ([`CallHeader::decode`] gives `None`).
//! The input of a call starts 8-aligned relative to the payload.
//!
//! Failure codes below 0 are the SDK's own ([`CODE_NO_SUCH_EXPORT`] and
//! the others); a plugin's own errors use codes from 1 up.
//!
//! Everything here reads bytes the other side wrote: each field is
//! checked and every error is a [`CallHeaderError`], never a panic.

use core::fmt;

/// Bytes of a call header.
pub const CALL_HEADER_SIZE: usize = 16;
/// The first three bytes of every call header.
pub const CALL_MAGIC: [u8; 3] = [0xC5, b'S', b'C'];
/// The header version this crate writes and reads.
pub const CALL_VERSION: u8 = 1;
/// Longest function name (the header's `name_len` is one byte).
pub const MAX_CALL_NAME: usize = 255;
/// Bytes of a failure's code, before its message.
pub const FAILURE_CODE_SIZE: usize = 4;

/// Failure code: the plugin exports no function of that name.
pub const CODE_NO_SUCH_EXPORT: i32 = -1;
/// Failure code: the input could not be decoded as the function's input
/// type (text that is not UTF-8, JSON that does not parse).
pub const CODE_BAD_INPUT: i32 = -2;
/// Failure code: the output did not fit a message (larger than the
/// segment's largest slot) or could not be encoded.
pub const CODE_BAD_OUTPUT: i32 = -3;
/// Failure code: the message was not a well-formed call (a header of
/// another version, a malformed name).
pub const CODE_MALFORMED_CALL: i32 = -4;

/// The kind byte of a packed-lines message.
pub const KIND_PACKED_LINES: u8 = 4;

/// The 16 bytes that open every packed-lines message.
pub const PACKED_LINES_HEADER: [u8; CALL_HEADER_SIZE] = [
    CALL_MAGIC[0],
    CALL_MAGIC[1],
    CALL_MAGIC[2],
    CALL_VERSION,
    KIND_PACKED_LINES,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// The export (a function, `() -> ()`, never called) by which a plugin
/// says it reads packed-lines messages and answers them packed.
pub const PACKED_LINES_EXPORT: &str = "shmrt_packed_lines_v1";

/// The configuration key by which a host tells a plugin it packs lines.
pub const PACKED_LINES_CONFIG_KEY: &str = "shmrt.lines";

/// The value of [`PACKED_LINES_CONFIG_KEY`] when the host packs lines.
pub const PACKED_LINES_CONFIG_VALUE: &str = "packed-v1";

/// Why a message that opens as a packed-lines message is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedLinesError {
    /// Fewer bytes than the header.
    Truncated {
        /// Bytes there are.
        len: usize,
    },
    /// A byte of the header that must be zero is not: its offset.
    NonZero {
        /// The byte's offset in the header.
        at: usize,
    },
    /// The body is not empty and does not end with a newline.
    NoFinalNewline,
}

impl fmt::Display for PackedLinesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackedLinesError::Truncated { len } => write!(
                f,
                "packed-lines header truncated: {len} bytes where {CALL_HEADER_SIZE} are needed"
            ),
            PackedLinesError::NonZero { at } => {
                write!(f, "packed-lines header byte {at} is not zero")
            }
            PackedLinesError::NoFinalNewline => {
                f.write_str("packed-lines body does not end with a newline")
            }
        }
    }
}

impl core::error::Error for PackedLinesError {}

/// The body of a packed-lines message: `None` when `payload` does not open
/// with the magic, version 1 and kind 4 (it is no packed-lines message),
/// an error when it does but the rest of the header is not zero or the
/// body, not empty, does not end with a newline.
pub fn packed_lines(payload: &[u8]) -> Option<Result<&[u8], PackedLinesError>> {
    if payload.len() < 5 || payload[..5] != PACKED_LINES_HEADER[..5] {
        return None;
    }
    let Some(header) = payload.get(..CALL_HEADER_SIZE) else {
        return Some(Err(PackedLinesError::Truncated { len: payload.len() }));
    };
    if let Some(at) = header[5..].iter().position(|&b| b != 0) {
        return Some(Err(PackedLinesError::NonZero { at: 5 + at }));
    }
    let body = &payload[CALL_HEADER_SIZE..];
    if body.last().is_some_and(|&b| b != b'\n') {
        return Some(Err(PackedLinesError::NoFinalNewline));
    }
    Some(Ok(body))
}

/// What a message with a call header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// A call of the function whose name follows the header.
    Call {
        /// Bytes of the name (1..=255).
        name_len: u8,
    },
    /// The function's output.
    Reply,
    /// The function's error: a code, then a message.
    Failure,
}

/// A decoded call header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallHeader {
    /// Call, reply or failure.
    pub kind: CallKind,
    /// Correlation id: a reply carries its call's.
    pub call_id: u64,
}

/// Why bytes that start with the call magic are not a header this crate
/// can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallHeaderError {
    /// Fewer bytes than a header, or than the header says follow it.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes there are.
        len: usize,
    },
    /// A version this crate does not read.
    Version(u8),
    /// A kind byte that is none of call, reply, failure.
    Kind(u8),
    /// A call with an empty name, or a reply with a name length.
    NameLen(u8),
    /// The reserved bytes are not zero.
    Reserved,
    /// The name is not UTF-8.
    NameNotUtf8,
}

impl fmt::Display for CallHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallHeaderError::Truncated { needed, len } => write!(
                f,
                "call header truncated: {len} bytes where {needed} are needed"
            ),
            CallHeaderError::Version(v) => write!(
                f,
                "call header version {v}, this side reads version {CALL_VERSION}"
            ),
            CallHeaderError::Kind(k) => write!(f, "call header kind {k} is not 1, 2 or 3"),
            CallHeaderError::NameLen(n) => write!(
                f,
                "call header name length {n} (a call names 1..=255 bytes, a reply none)"
            ),
            CallHeaderError::Reserved => f.write_str("call header reserved bytes are not zero"),
            CallHeaderError::NameNotUtf8 => f.write_str("call name is not UTF-8"),
        }
    }
}

impl core::error::Error for CallHeaderError {}

/// Bytes of a call's name, zero-padded to a multiple of 8.
pub const fn padded_name_len(name_len: usize) -> usize {
    (name_len + 7) & !7
}

impl CallHeader {
    /// The 16 bytes of this header.
    pub fn encode(&self) -> [u8; CALL_HEADER_SIZE] {
        let mut b = [0u8; CALL_HEADER_SIZE];
        b[..3].copy_from_slice(&CALL_MAGIC);
        b[3] = CALL_VERSION;
        let (kind, name_len) = match self.kind {
            CallKind::Call { name_len } => (1, name_len),
            CallKind::Reply => (2, 0),
            CallKind::Failure => (3, 0),
        };
        b[4] = kind;
        b[5] = name_len;
        b[8..16].copy_from_slice(&self.call_id.to_le_bytes());
        b
    }

    /// Reads a header from the start of `payload`: `None` when the payload
    /// does not start with the call magic (a plain message), an error when
    /// it does but the rest is not a header of this version, or the
    /// payload is shorter than the header (and a call's name) says.
    pub fn decode(payload: &[u8]) -> Option<Result<CallHeader, CallHeaderError>> {
        if payload.len() < CALL_MAGIC.len() || payload[..3] != CALL_MAGIC {
            return None;
        }
        Some(Self::decode_checked(payload))
    }

    fn decode_checked(payload: &[u8]) -> Result<CallHeader, CallHeaderError> {
        let Some(b) = payload.get(..CALL_HEADER_SIZE) else {
            return Err(CallHeaderError::Truncated {
                needed: CALL_HEADER_SIZE,
                len: payload.len(),
            });
        };
        if b[3] != CALL_VERSION {
            return Err(CallHeaderError::Version(b[3]));
        }
        if b[6] != 0 || b[7] != 0 {
            return Err(CallHeaderError::Reserved);
        }
        let name_len = b[5];
        let kind = match (b[4], name_len) {
            (1, 0) => return Err(CallHeaderError::NameLen(0)),
            (1, n) => CallKind::Call { name_len: n },
            (2, 0) => CallKind::Reply,
            (3, 0) => CallKind::Failure,
            (2 | 3, n) => return Err(CallHeaderError::NameLen(n)),
            (k, _) => return Err(CallHeaderError::Kind(k)),
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        let header = CallHeader {
            kind,
            call_id: u64::from_le_bytes(id),
        };
        let needed = header.body_offset();
        if payload.len() < needed {
            return Err(CallHeaderError::Truncated {
                needed,
                len: payload.len(),
            });
        }
        Ok(header)
    }

    /// Where the body starts: a call's input after its padded name, a
    /// reply's output after the header, a failure's code after the header.
    pub fn body_offset(&self) -> usize {
        match self.kind {
            CallKind::Call { name_len } => CALL_HEADER_SIZE + padded_name_len(name_len as usize),
            CallKind::Reply | CallKind::Failure => CALL_HEADER_SIZE,
        }
    }
}

/// A call of `name` with `input_len` bytes of input: the payload's length.
pub const fn call_len(name_len: usize, input_len: usize) -> usize {
    CALL_HEADER_SIZE + padded_name_len(name_len) + input_len
}

/// Writes the header and name of a call into the start of `payload` (which
/// must hold [`call_len`] bytes) and gives the offset of the input.
/// `name` must be 1..=[`MAX_CALL_NAME`] bytes.
pub fn write_call(payload: &mut [u8], call_id: u64, name: &str) -> Option<usize> {
    let n = name.len();
    if n == 0 || n > MAX_CALL_NAME || payload.len() < call_len(n, 0) {
        return None;
    }
    let header = CallHeader {
        kind: CallKind::Call { name_len: n as u8 },
        call_id,
    };
    payload[..CALL_HEADER_SIZE].copy_from_slice(&header.encode());
    let body = header.body_offset();
    payload[CALL_HEADER_SIZE..CALL_HEADER_SIZE + n].copy_from_slice(name.as_bytes());
    payload[CALL_HEADER_SIZE + n..body].fill(0);
    Some(body)
}

/// Results of the host imports `host-call`, `host-result` and
/// `config-get` (`wit/shmrt.wit`): a length when 0 or more, else one of
/// these.
pub mod import_codes {
    /// No host function, pending result or configuration key of that name.
    pub const NOT_FOUND: i64 = -1;
    /// The host function returned an error: its code (i32, little-endian)
    /// and message are the pending result (`host-result`).
    pub const FAILED: i64 = -2;
    /// The host function panicked; the host logged it and its message is
    /// the pending result.
    pub const PANICKED: i64 = -3;
    /// A pointer or length outside linear memory, or a name that is not
    /// UTF-8: refused, nothing was read or written.
    pub const BAD_ARGUMENT: i64 = -4;
    /// Refused: a host call from inside a host call, or after the sandbox
    /// was told to stop.
    pub const REFUSED: i64 = -5;
}

/// The parts of a call message: its id, its name, its input.
#[derive(Clone, Copy, Debug)]
pub struct CallParts<'a> {
    /// The correlation id to put in the reply.
    pub call_id: u64,
    /// The function's name.
    pub name: &'a str,
    /// The input, after the padded name.
    pub input: &'a [u8],
}

/// Splits a call message: `None` when `payload` is not a call at all (no
/// magic), an error when it is a malformed one or a reply.
pub fn split_call(payload: &[u8]) -> Option<Result<CallParts<'_>, CallHeaderError>> {
    let header = match CallHeader::decode(payload)? {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let CallKind::Call { name_len } = header.kind else {
        return Some(Err(CallHeaderError::Kind(match header.kind {
            CallKind::Reply => 2,
            _ => 3,
        })));
    };
    let name = &payload[CALL_HEADER_SIZE..CALL_HEADER_SIZE + name_len as usize];
    let Ok(name) = core::str::from_utf8(name) else {
        return Some(Err(CallHeaderError::NameNotUtf8));
    };
    Some(Ok(CallParts {
        call_id: header.call_id,
        name,
        input: &payload[header.body_offset()..],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn a_call_round_trips_with_its_name_padded_and_its_input_aligned() {
        let mut buf = [0xAAu8; 64];
        let at = write_call(&mut buf, 0x0102_0304_0506_0708, "count_vowels").unwrap();
        assert_eq!(at, 16 + 16);
        buf[at..at + 5].copy_from_slice(b"hello");
        let parts = split_call(&buf[..at + 5]).unwrap().unwrap();
        assert_eq!(parts.call_id, 0x0102_0304_0506_0708);
        assert_eq!(parts.name, "count_vowels");
        assert_eq!(parts.input, b"hello");
        assert!(buf[16 + 12..at].iter().all(|&b| b == 0), "padding is zero");
    }

    #[test]
    fn text_never_reads_as_a_call() {
        assert!(CallHeader::decode(b"hello world, a plain line").is_none());
        assert!(CallHeader::decode("\u{0153}SC text".as_bytes()).is_none());
        assert!(CallHeader::decode(b"").is_none());
        let magic: &[u8] = &CALL_MAGIC;
        assert!(core::str::from_utf8(core::hint::black_box(magic)).is_err());
    }

    #[test]
    fn replies_and_failures_decode_and_lies_are_errors() {
        let reply = CallHeader {
            kind: CallKind::Reply,
            call_id: 7,
        };
        assert_eq!(CallHeader::decode(&reply.encode()), Some(Ok(reply)));
        let mut lie = reply.encode();
        lie[5] = 3;
        assert_eq!(
            CallHeader::decode(&lie),
            Some(Err(CallHeaderError::NameLen(3)))
        );
        let mut call = [0u8; 24];
        write_call(&mut call, 1, "f").unwrap();
        call[5] = 200; // a name longer than the payload
        assert!(matches!(
            CallHeader::decode(&call),
            Some(Err(CallHeaderError::Truncated { needed: 216, .. }))
        ));
        let mut version = reply.encode();
        version[3] = 9;
        assert_eq!(
            CallHeader::decode(&version),
            Some(Err(CallHeaderError::Version(9)))
        );
        assert!(matches!(
            split_call(&reply.encode()),
            Some(Err(CallHeaderError::Kind(2)))
        ));
        assert!(matches!(
            CallHeader::decode(&CALL_MAGIC),
            Some(Err(CallHeaderError::Truncated { needed: 16, len: 3 }))
        ));
    }

    #[test]
    fn names_out_of_range_are_refused() {
        let mut buf = [0u8; 512];
        assert_eq!(write_call(&mut buf, 1, ""), None);
        let long = core::str::from_utf8(&[b'a'; 256]).unwrap();
        assert_eq!(write_call(&mut buf, 1, long), None);
        assert_eq!(write_call(&mut buf[..20], 1, "abcdefgh_ij"), None);
    }

    #[test]
    fn packed_lines_decode_and_lies_are_errors() {
        let mut msg = PACKED_LINES_HEADER.to_vec();
        assert_eq!(packed_lines(&msg), Some(Ok(&b""[..])));
        msg.extend_from_slice(b"one\n\ntwo\r\n");
        assert_eq!(packed_lines(&msg), Some(Ok(&b"one\n\ntwo\r\n"[..])));
        // Not one: plain text, a call, a reply.
        assert_eq!(packed_lines(b"one\ntwo\n"), None);
        let reply = CallHeader {
            kind: CallKind::Reply,
            call_id: 0,
        };
        assert_eq!(packed_lines(&reply.encode()), None);
        // A call header reader does not take it for a call.
        assert_eq!(
            CallHeader::decode(&msg),
            Some(Err(CallHeaderError::Kind(KIND_PACKED_LINES)))
        );
        let mut cut = msg.clone();
        cut.pop();
        assert_eq!(
            packed_lines(&cut),
            Some(Err(PackedLinesError::NoFinalNewline))
        );
        assert_eq!(
            packed_lines(&PACKED_LINES_HEADER[..9]),
            Some(Err(PackedLinesError::Truncated { len: 9 }))
        );
        let mut dirty = msg.clone();
        dirty[12] = 1;
        assert_eq!(
            packed_lines(&dirty),
            Some(Err(PackedLinesError::NonZero { at: 12 }))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 512 },
            ..proptest::prelude::ProptestConfig::default()
        })]
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut with_magic = CALL_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            for payload in [&bytes[..], &with_magic[..]] {
                if let Some(Ok(h)) = CallHeader::decode(payload) {
                    proptest::prop_assert!(h.body_offset() <= payload.len());
                }
                let _ = split_call(payload);
            }
        }

        /// Any lines packed come back as the same lines, and any bytes
        /// after the header decode without panicking.
        #[test]
        fn packed_lines_round_trip(
            lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..12),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut msg = PACKED_LINES_HEADER.to_vec();
            let lines: Vec<Vec<u8>> = lines
                .into_iter()
                .map(|l| l.into_iter().filter(|&b| b != b'\n').collect())
                .collect();
            for l in &lines {
                msg.extend_from_slice(l);
                msg.push(b'\n');
            }
            let body = packed_lines(&msg).unwrap().unwrap();
            let got: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
            proptest::prop_assert_eq!(got.len(), lines.len() + 1);
            for (g, l) in got.iter().zip(&lines) {
                proptest::prop_assert_eq!(*g, &l[..]);
            }
            let mut any = PACKED_LINES_HEADER[..5].to_vec();
            any.extend_from_slice(&tail);
            if let Some(Ok(body)) = packed_lines(&any) {
                proptest::prop_assert!(body.is_empty() || body.ends_with(b"\n"));
            }
        }
    }
}
