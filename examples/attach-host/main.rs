//! A native host in one process, a sandboxed plugin in another, sharing one
//! segment file with zero copies on either side: this program creates the
//! segment, starts `shmrt run --attach` on a plugin, streams large payloads
//! written in place into slots, and reads the replies in place.
//!
//! Run (with the checksum plugin, which answers `<len> <checksum>` lines):
//!
//! ```sh
//! cargo build --release --locked -p shmrt-cli -p shmrt --bin shmrt --examples
//! target/release/examples/attach-host target/release/shmrt $(target/release/shmrt build examples/checksum)
//! ```
//!
//! With `--wait SEGMENT` it starts no plugin: it creates the segment at
//! SEGMENT and waits for one that someone else starts attached to it as
//! peer 1, e.g. in another container of the same pod sharing the directory
//! (scripts/test-containerd.sh, docs/run-on-kubernetes.md).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use shmrt::HostSegment;
use shmrt::SpinBudget;
use shmrt::primitives::SegmentConfig;
use shmrt::primitives::checksum::checksum64;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: attach-host SHMRT_BINARY PLUGIN.wasm, or attach-host --wait SEGMENT";
    let (Some(first), Some(second)) = (args.next(), args.next()) else {
        bail!("{usage}");
    };
    let path = if first == "--wait" {
        std::path::PathBuf::from(&second)
    } else {
        std::env::temp_dir().join(format!("shmrt-attach-host-{}.seg", std::process::id()))
    };
    let segment = HostSegment::create(&path, &SegmentConfig::single_guest(), false)?;
    let (mut tx, mut rx) = segment.reserve(1, SpinBudget::default())?;
    println!("segment {} reserved for peer 1", path.display());

    let mut child = if first == "--wait" {
        println!("waiting for a plugin attached to it as peer 1");
        None
    } else {
        let (shmrt, plugin) = (first, second);
        Some(
            Command::new(&shmrt)
                .args(["run", "--attach"])
                .arg(&path)
                .args(["--peer", "1"])
                .arg(&plugin)
                .spawn()
                .with_context(|| format!("starting {shmrt}"))?,
        )
    };

    const N: usize = 32;
    const LEN: usize = 256 * 1024;
    let mut expected = Vec::new();
    let mut verified = 0;
    // The first payload waits for the plugin process to start, compile the
    // module and attach; it is timed apart from the stream that follows.
    let start = Instant::now();
    send_payload(&mut tx, LEN, 0, &mut expected)?;
    check(&rx.recv()?.to_vec(), &expected[0])?;
    verified += 1;
    let startup = start.elapsed();

    let start = Instant::now();
    for i in 1..=N {
        send_payload(&mut tx, LEN, i, &mut expected)?;
        // Read whatever replies are there, in place.
        while let Some(reply) = rx.try_recv()? {
            check(&reply.to_vec(), &expected[verified])?;
            verified += 1;
        }
    }
    while verified <= N {
        let reply = rx.recv()?;
        check(&reply.to_vec(), &expected[verified])?;
        verified += 1;
    }
    let elapsed = start.elapsed();
    segment.goodbye();
    let status = child.as_mut().map(|c| c.wait()).transpose()?;
    println!(
        "plugin started, attached and answered the first payload in {startup:.1?}; then \
         {N} payloads of {} KiB, each written and checksummed by this process and \
         checksummed in place by the plugin, in {elapsed:.1?} ({:.0} MiB/s){}",
        LEN / 1024,
        (N * LEN) as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
        status.map_or(String::new(), |s| format!("; plugin {s}"))
    );
    if let Some(status) = status
        && !status.success()
    {
        bail!("the plugin process failed: {status}");
    }
    Ok(())
}

/// Writes payload `i` in place into a slot inside the plugin's window and
/// records the reply it must get.
fn send_payload(
    tx: &mut shmrt::HostSender,
    len: usize,
    i: usize,
    expected: &mut Vec<String>,
) -> anyhow::Result<()> {
    // The payload is written into the slot with one copy from where this
    // producer makes it; the plugin reads it where it lands.
    let payload: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
    let sum = checksum64(&payload);
    tx.send_with(len, |mut buf| buf.copy_from(&payload))?;
    expected.push(format!("{len} {sum:016x}\n"));
    Ok(())
}

fn check(reply: &[u8], want: &str) -> anyhow::Result<()> {
    if reply != want.as_bytes() {
        bail!(
            "reply {:?}, expected {want:?}",
            String::from_utf8_lossy(reply)
        );
    }
    Ok(())
}
