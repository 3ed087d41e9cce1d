//! I/O benchmarks run inside the guest, timed with its own TSC clock, for
//! `scripts/bench-io`:
//!
//! - `mvm.test=blk-seq-read:<disk>:<chunk_kib>`: reads the whole disk in
//!   order, one request per chunk; prints `blkbench seq-read bytes=B ns=T`.
//! - `mvm.test=blk-seq-write:<disk>:<chunk_kib>`: writes the whole disk in
//!   order, then flushes; prints `blkbench seq-write bytes=B ns=T` (flush
//!   included) and `blkbench flush ns=F` (the flush alone).
//! - `mvm.test=blk-rand-read:<disk>:<ops>`: `ops` reads of 4 KiB at random
//!   4 KiB-aligned offsets, one at a time; prints `blkbench rand-read ops=N ns=T`.
//! - `mvm.test=net-send:<address>:<port>:<mib>`: connects over TCP, sends
//!   `mib` MiB and closes; prints `netbench send bytes=B ns=T` (ARP, the
//!   handshake and the acknowledged close included).
//!
//! Each data buffer is one heap allocation: identity-mapped guest memory,
//! so one descriptor however large the chunk.

use alloc::vec;
use alloc::vec::Vec;

use crate::cmdline::{parse_u64, Display};
use crate::console::print;
use crate::netstack::{parse_endpoint, Stack};
use crate::time::monotonic_ns;
use crate::virtio::blk::{Blk, SECTOR};

const RAND_READ_LEN: usize = 4096;
/// How long the network benchmark may take before it gives up.
const NET_TIMEOUT_MS: u64 = 120_000;

/// Runs `blk-seq-read`, `blk-seq-write` or `blk-rand-read`; `open` sets up
/// the disk with the index given first in `arg`.
pub fn blk(name: &[u8], spec: &[u8], arg: Option<&[u8]>, open: impl FnOnce(u64) -> Blk) {
    let mut fields = arg.unwrap_or_default().splitn(2, |b| *b == b':');
    let index = fields.next().and_then(parse_u64);
    let number = fields.next().and_then(parse_u64).filter(|n| *n > 0);
    let (Some(index), Some(number)) = (index, number) else {
        panic!("mvm.test={}: expected <disk>:<number>, the number above 0", Display(spec));
    };
    let blk = open(index);
    match name {
        b"blk-seq-read" => seq_read(blk, chunk_bytes(spec, number)),
        b"blk-seq-write" => seq_write(blk, chunk_bytes(spec, number)),
        b"blk-rand-read" => rand_read(blk, number),
        _ => panic!("mvm.test={}: not a disk benchmark", Display(spec)),
    }
}

fn chunk_bytes(spec: &[u8], kib: u64) -> usize {
    match kib.checked_mul(1024).and_then(|n| u32::try_from(n).ok()) {
        Some(bytes) => bytes as usize,
        None => panic!("mvm.test={}: a chunk must be under 4 GiB", Display(spec)),
    }
}

fn seq_read(mut blk: Blk, chunk: usize) {
    let mut buf = vec![0u8; chunk];
    let total = blk.capacity_sectors * SECTOR as u64;
    let start = monotonic_ns();
    let mut offset = 0;
    while offset < total {
        let len = (total - offset).min(chunk as u64) as usize;
        blk.read(offset / SECTOR as u64, &mut buf[..len]).unwrap_or_else(|e| panic!("read at {offset}: {e:?}"));
        offset += len as u64;
    }
    let ns = monotonic_ns() - start;
    print(format_args!("blkbench seq-read bytes={total} ns={ns}\n"));
}

fn seq_write(mut blk: Blk, chunk: usize) {
    let buf: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let total = blk.capacity_sectors * SECTOR as u64;
    let start = monotonic_ns();
    let mut offset = 0;
    while offset < total {
        let len = (total - offset).min(chunk as u64) as usize;
        blk.write(offset / SECTOR as u64, &buf[..len]).unwrap_or_else(|e| panic!("write at {offset}: {e:?}"));
        offset += len as u64;
    }
    let flush_start = monotonic_ns();
    blk.flush().unwrap_or_else(|e| panic!("flush: {e:?}"));
    let end = monotonic_ns();
    print(format_args!("blkbench seq-write bytes={total} ns={}\n", end - start));
    print(format_args!("blkbench flush ns={}\n", end - flush_start));
}

fn rand_read(mut blk: Blk, ops: u64) {
    let blocks = blk.capacity_sectors * SECTOR as u64 / RAND_READ_LEN as u64;
    if blocks == 0 {
        panic!("blk-rand-read needs a disk of at least {RAND_READ_LEN} bytes");
    }
    let mut buf = vec![0u8; RAND_READ_LEN];
    // xorshift64 (Marsaglia), fixed seed: the same offsets every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = monotonic_ns();
    for _ in 0..ops {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let sector = state % blocks * (RAND_READ_LEN / SECTOR) as u64;
        blk.read(sector, &mut buf).unwrap_or_else(|e| panic!("read at sector {sector}: {e:?}"));
    }
    let ns = monotonic_ns() - start;
    print(format_args!("blkbench rand-read ops={ops} ns={ns}\n"));
}

/// Runs `net-send:<address>:<port>:<mib>` over the stack `network` sets up.
pub fn net_send(spec: &[u8], arg: Option<&[u8]>, network: impl FnOnce() -> Stack) {
    let parsed = arg.and_then(|a| core::str::from_utf8(a).ok()).and_then(|a| {
        let (peer, mib) = a.rsplit_once(':')?;
        Some((parse_endpoint(peer)?, mib.parse::<u64>().ok()?.checked_mul(1 << 20)?))
    });
    let Some((peer, bytes)) = parsed else {
        panic!("mvm.test={}: expected <address>:<port>:<mib>", Display(spec));
    };
    let mut stack = network();
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let start = monotonic_ns();
    if let Err(why) = stack.send_stream(peer, &pattern, bytes, NET_TIMEOUT_MS) {
        panic!("sending {bytes} bytes to {peer} failed: {why}");
    }
    let ns = monotonic_ns() - start;
    print(format_args!("netbench send bytes={bytes} ns={ns}\n"));
}
