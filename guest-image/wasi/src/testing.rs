//! Test implementations of the platform traits: a disk in memory that
//! refuses transfers past its end or not in whole sectors (as virtio-blk
//! does), outputs that record what they got, a clock that moves only when
//! told to or slept on, and entropy that counts.

use std::vec::Vec;

use crate::{BlockDevice, Clock, Entropy, Input, Output, Platform, SECTOR};

#[derive(Debug, PartialEq, Eq)]
pub enum DiskError {
    PastTheEnd,
    NotWholeSectors,
}

pub struct MemDisk {
    pub data: Vec<u8>,
    /// Every transfer as (sector, bytes), reads and writes.
    pub transfers: Vec<(u64, usize)>,
}

impl MemDisk {
    /// A disk holding `data`, padded with zeros to whole sectors.
    pub fn new(mut data: Vec<u8>) -> MemDisk {
        data.resize(data.len().next_multiple_of(SECTOR), 0);
        MemDisk { data, transfers: Vec::new() }
    }

    pub fn zeroed(sectors: usize) -> MemDisk {
        MemDisk::new(vec![0; sectors * SECTOR])
    }

    fn span(&mut self, sector: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        if len % SECTOR != 0 {
            return Err(DiskError::NotWholeSectors);
        }
        self.transfers.push((sector, len));
        let start = usize::try_from(sector).ok().and_then(|s| s.checked_mul(SECTOR)).ok_or(DiskError::PastTheEnd)?;
        let end = start.checked_add(len).filter(|e| *e <= self.data.len()).ok_or(DiskError::PastTheEnd)?;
        Ok(start..end)
    }
}

impl BlockDevice for MemDisk {
    type Error = DiskError;

    fn capacity_sectors(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let span = self.span(sector, buf.len())?;
        buf.copy_from_slice(&self.data[span]);
        Ok(())
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let span = self.span(sector, buf.len())?;
        self.data[span].copy_from_slice(buf);
        Ok(())
    }
}

/// Stdin from bytes given up front, handed out at most `chunk` at a time
/// (as a stream delivers them).
pub struct Script {
    pub data: Vec<u8>,
    pub chunk: usize,
}

impl Input for Script {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        n
    }
}

#[derive(Default)]
pub struct Recorder {
    pub data: Vec<u8>,
    pub flushes: usize,
}

impl Output for Recorder {
    fn write(&mut self, data: &[u8]) {
        self.data.extend_from_slice(data);
    }

    fn flush(&mut self) {
        self.flushes += 1;
    }
}

/// Monotonic time starts at `monotonic`, wall time is `wall_at_zero` ahead.
pub struct FakeClock {
    pub monotonic: u64,
    pub wall_at_zero: u64,
    /// The deadline of every sleep.
    pub sleeps: Vec<u64>,
}

impl Clock for FakeClock {
    fn wall_ns(&mut self) -> u64 {
        self.wall_at_zero + self.monotonic
    }

    fn monotonic_ns(&mut self) -> u64 {
        self.monotonic
    }

    fn sleep_until(&mut self, deadline_ns: u64) {
        self.sleeps.push(deadline_ns);
        self.monotonic = self.monotonic.max(deadline_ns);
    }
}

/// 1, 2, 3, ... (wrapping), so that each byte shows it was written.
pub struct Counter(pub u8);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

pub struct Test;

impl Platform for Test {
    type Disk = MemDisk;
    type Input = Script;
    type Output = Recorder;
    type Clock = FakeClock;
    type Entropy = Counter;
}
