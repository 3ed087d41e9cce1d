//! Test implementations of the platform traits: a disk in memory that
//! refuses transfers past its end or not in whole sectors (as virtio-blk
//! does), outputs that record what they got, a clock that moves only when
//! told to or slept on, and entropy that counts.

use std::string::ToString;
use std::vec::Vec;

use crate::fsimage::{Extent, Inode, Kind, Limits, Metadata, Mount, Superblock, BLOCK, NO_MOUNT, ROOT};
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
    /// The writes alone, as (sector, bytes).
    pub writes: Vec<(u64, usize)>,
}

impl MemDisk {
    /// A disk holding `data`, padded with zeros to whole sectors.
    pub fn new(mut data: Vec<u8>) -> MemDisk {
        data.resize(data.len().next_multiple_of(SECTOR), 0);
        MemDisk { data, transfers: Vec::new(), writes: Vec::new() }
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
        self.writes.push((sector, buf.len()));
        self.data[span].copy_from_slice(buf);
        Ok(())
    }
}

/// Stdin from bytes given up front, handed out at most `chunk` at a time
/// (as a stream delivers them).
pub struct Script {
    pub data: Vec<u8>,
    pub chunk: usize,
    /// How many more times `would_wait` says the bytes have not come yet.
    pub waits: usize,
}

impl Input for Script {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        n
    }

    fn would_wait(&mut self) -> bool {
        self.waits = self.waits.saturating_sub(1);
        self.waits > 0
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

/// Builds a job filesystem image the way the host does: the root and the
/// directories leading to mounts are [`NO_MOUNT`], each mount a directory
/// tree of its own, file data in contiguous blocks from block 1, the
/// metadata after the data, then `free` blocks of room.
pub struct ImageBuilder {
    pub inodes: Vec<Inode>,
    pub mounts: Vec<Mount>,
    data: Vec<u8>,
}

impl Default for ImageBuilder {
    fn default() -> ImageBuilder {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        let root = Inode {
            ino: ROOT,
            mount: NO_MOUNT,
            perm: 0o755,
            size: 0,
            atim: 1,
            mtim: 2,
            ctim: 3,
            kind: Kind::Dir(Vec::new()),
        };
        ImageBuilder { inodes: vec![root], mounts: Vec::new(), data: Vec::new() }
    }

    fn add(&mut self, parent: u64, name: &str, mount: u32, perm: u16, size: u64, kind: Kind) -> u64 {
        let ino = self.inodes.len() as u64 + 1;
        self.inodes.push(Inode { ino, mount, perm, size, atim: 10, mtim: 20, ctim: 30, kind });
        let Kind::Dir(entries) = &mut self.inodes[parent as usize - 1].kind else {
            panic!("parent is not a directory")
        };
        entries.push((name.to_string(), ino));
        entries.sort();
        ino
    }

    fn mount_of(&self, ino: u64) -> u32 {
        self.inodes[ino as usize - 1].mount
    }

    /// The directory at an absolute path, made (NO_MOUNT) where missing.
    pub fn leading_dir(&mut self, path: &str) -> u64 {
        let mut dir = ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            let Kind::Dir(entries) = &self.inodes[dir as usize - 1].kind else { panic!() };
            dir = match entries.iter().find(|(n, _)| n == name) {
                Some((_, ino)) => *ino,
                None => self.add(dir, name, NO_MOUNT, 0o755, 0, Kind::Dir(Vec::new())),
            };
        }
        dir
    }

    /// A mounted directory at `path` (not "/"): its root inode.
    pub fn mount(&mut self, path: &str, read_only: bool) -> u64 {
        let (parent, name) = path.rsplit_once('/').expect("an absolute path");
        let parent = self.leading_dir(parent);
        let index = self.mounts.len() as u32;
        let root = self.add(parent, name, index, 0o755, 0, Kind::Dir(Vec::new()));
        self.mounts.push(Mount { root, read_only });
        root
    }

    pub fn dir(&mut self, parent: u64, name: &str) -> u64 {
        let mount = self.mount_of(parent);
        self.add(parent, name, mount, 0o755, 0, Kind::Dir(Vec::new()))
    }

    pub fn file(&mut self, parent: u64, name: &str, content: &[u8]) -> u64 {
        let mount = self.mount_of(parent);
        let blocks = content.len().div_ceil(BLOCK) as u64;
        let start = 1 + (self.data.len() / BLOCK) as u64;
        self.data.extend_from_slice(content);
        self.data.resize(self.data.len().next_multiple_of(BLOCK), 0);
        let extents = if blocks == 0 { Vec::new() } else { vec![Extent { logical: 0, start, count: blocks as u32 }] };
        self.add(parent, name, mount, 0o640, content.len() as u64, Kind::File(extents))
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> u64 {
        let mount = self.mount_of(parent);
        self.add(parent, name, mount, 0o777, target.len() as u64, Kind::Symlink(target.to_string()))
    }

    pub fn build(self, free: u64) -> MemDisk {
        let meta = Metadata { mounts: self.mounts, inodes: self.inodes }.encode();
        let meta_start = 1 + (self.data.len() / BLOCK) as u64;
        let total = meta_start + meta.len().div_ceil(BLOCK) as u64 + free;
        let mut image = vec![0u8; total as usize * BLOCK];
        let sb = Superblock { total_blocks: total, meta_start, meta_len: meta.len() as u64 };
        image[..BLOCK].copy_from_slice(&sb.encode());
        image[BLOCK..BLOCK + self.data.len()].copy_from_slice(&self.data);
        let at = meta_start as usize * BLOCK;
        image[at..at + meta.len()].copy_from_slice(&meta);
        MemDisk::new(image)
    }
}

/// The image of a job without mounts: `/in` read-only with `inputs`, `/out`
/// writable and empty, the root read-only, and `free` blocks of room.
pub fn standard_image(inputs: &[(&str, &[u8])], free: u64) -> MemDisk {
    let mut image = ImageBuilder::new();
    let input = image.mount("/in", true);
    for (name, content) in inputs {
        image.file(input, name, content);
    }
    image.mount("/out", false);
    image.build(free)
}

/// The metadata an image holds now, as the host would read it back.
pub fn read_back(disk: &MemDisk) -> Metadata {
    let blocks = (disk.data.len() / BLOCK) as u64;
    let sb = Superblock::decode(&disk.data[..BLOCK], blocks).expect("a superblock");
    let start = sb.meta_start as usize * BLOCK;
    let limits = Limits { max_inodes: 1 << 20, max_entries: 1 << 20, max_extents: 1 << 20 };
    Metadata::decode(&disk.data[start..start + sb.meta_len as usize], sb.total_blocks, limits).expect("metadata")
}
