//! How standard input and output are cut into messages ([`Framing`]):
//! the raw framing's message size, checked against the segment before the
//! guest starts, and the len32 records read from stdin. The lines framing
//! is cut where it is read, in `feed`; each framing's output is written
//! by `output`.

use std::io::{self, BufRead, Read};

use clap::ValueEnum;
use shmrt::primitives::layout::{SegmentConfig, SegmentLayout};

use crate::cli::Failure;

/// How standard input and output are cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Framing {
    /// One message per input line (newline removed); each guest message is
    /// written followed by a newline.
    Lines,
    /// Input cut into messages of `--chunk` bytes, read straight into
    /// ring or slot memory; guest messages written as they are.
    Raw,
    /// u32 little-endian length-prefixed records, both ways.
    Len32,
}

/// The largest message `segment` carries (a slot's payload, or inline).
pub(super) fn max_message(segment: &SegmentConfig) -> usize {
    SegmentLayout::compute(segment)
        .map(|l| l.max_slot_payload().max(l.max_inline_payload()) as usize)
        .unwrap_or(usize::MAX)
}

/// The size of a raw message, `--chunk` (default 64 KiB) checked against
/// `segment`; 0 for the other framings, which `--chunk` does not apply to.
pub(super) fn raw_chunk(
    framing: Framing,
    chunk: Option<u64>,
    segment: &SegmentConfig,
) -> Result<usize, Failure> {
    match (framing, chunk) {
        (Framing::Raw, chunk) => {
            let chunk = chunk.unwrap_or(64 << 10);
            check_chunk(chunk, segment).map_err(Failure::usage)?;
            Ok(usize::try_from(chunk).unwrap_or(usize::MAX))
        }
        (_, Some(_)) => Err(Failure::usage(anyhow::anyhow!(
            "--chunk applies to --framing raw only (lines and len32 records are cut by their framing)"
        ))),
        (_, None) => Ok(0),
    }
}

/// `--chunk` must fit one message of the segment: said before the guest
/// starts, not at the first message.
fn check_chunk(chunk: u64, segment: &SegmentConfig) -> anyhow::Result<()> {
    if chunk == 0 {
        anyhow::bail!("--chunk 0: a raw message needs at least 1 byte");
    }
    // A configuration the layout refuses is reported when the sandbox starts.
    let Ok(layout) = SegmentLayout::compute(segment) else {
        return Ok(());
    };
    let largest = layout.max_slot_payload().max(layout.max_inline_payload());
    if chunk > u64::from(largest) {
        anyhow::bail!(
            "--chunk {chunk} is larger than the largest message the segment carries ({largest} bytes): \
             lower --chunk, or give --slot-classes a class of at least {chunk} bytes"
        );
    }
    Ok(())
}

/// Reads the next len32 record of `input` into `buf`: a u32 little-endian
/// length, then that many bytes, at most `max_message`. False when
/// `input` ends before a record.
pub(super) fn read_len32(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max_message: usize,
) -> anyhow::Result<bool> {
    buf.clear();
    let mut len = [0u8; 4];
    match read_full(input, &mut len)? {
        0 => return Ok(false),
        4 => {}
        n => anyhow::bail!("stdin ends inside a len32 length prefix: {n} of its 4 bytes are there"),
    }
    let n = u32::from_le_bytes(len) as u64;
    if n > max_message as u64 {
        anyhow::bail!(
            "a len32 record announces {n} bytes, more than the largest message the \
             segment carries ({max_message} bytes): give --slot-classes a larger class"
        );
    }
    input.take(n).read_to_end(buf)?;
    if (buf.len() as u64) < n {
        anyhow::bail!(
            "a len32 record announces {n} bytes but stdin ends after {}",
            buf.len()
        );
    }
    Ok(true)
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
