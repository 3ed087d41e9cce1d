//! The job filesystem's on-disk format: one disk that holds everything the
//! job sees under `/` (its mounts, read-only and read-write, and the
//! directories that lead to them) and the room it may write into.
//!
//! Why a format of its own: the host and the guest must agree on it, and the
//! host must read what the guest left as hostile input, so one small no_std
//! module serves both, and its decoder checks the whole tree before anything
//! uses it. FAT (the `fatfs` crate) has no symlinks, hard links, permission
//! bits or case-sensitive names; ext2/4 has no well-kept no_std crate that
//! writes it, and its block groups, bitmaps, indirect blocks and journal are
//! a far larger surface for a parser of hostile images. The guest keeps the
//! metadata in RAM and writes it once, when the job ends, so there is no
//! allocation bitmap or journal on disk: a job that does not end by `exit`
//! or `trap` brings nothing back anyway.
//!
//! The host builds the image before the VM starts; the guest loads its
//! metadata into RAM, keeps file data on the disk, and writes the metadata
//! back when the job ends; the host then reads it as hostile input. Both
//! sides use this module, so there is one encoder and one validating decoder.
//!
//! Layout, in blocks of [`BLOCK`] bytes:
//! - block 0: the superblock ([`Superblock`]): magic, version, the image's
//!   size in blocks, and where the metadata lies (first block, byte length);
//! - any other block: file data (each file a list of [`Extent`]s) or the
//!   metadata, a contiguous run of blocks ([`Metadata::encode`]).
//!
//! The metadata is little-endian throughout:
//! `inode_count u64, mount_count u32`, then per mount
//! `root u64, read_only u8`, then per inode
//! `ino u64, mount u32, perm u16, size u64, atim u64, mtim u64, ctim u64, kind u8` and
//! by kind: a file `extent_count u32` and per extent
//! `logical u64, start u64, count u32`; a directory `entry_count u32` and per
//! entry `name_len u16, name, ino u64`; a symlink `len u16, target`.
//! Inode [`ROOT`] is the directory `/`. Directories form a tree: each one
//! but the root is named by exactly one entry; files may be named by several
//! (hard links); symlinks by one. An inode's `mount` is the index of the
//! mount it belongs to, or [`NO_MOUNT`] for the read-only directories that
//! only lead to mounts.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const BLOCK: usize = 4096;
pub const MAGIC: [u8; 8] = *b"MVMFS\0\0\0";
pub const VERSION: u32 = 1;
/// The inode of `/`.
pub const ROOT: u64 = 1;
/// The mount of the directories above all mounts: read-only, never copied back.
pub const NO_MOUNT: u32 = u32::MAX;
/// The longest name in a directory, in bytes (as Linux's NAME_MAX).
pub const NAME_MAX: usize = 255;
/// The longest symlink target, in bytes (as Linux's PATH_MAX less its NUL).
pub const TARGET_MAX: usize = 4095;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub total_blocks: u64,
    pub meta_start: u64,
    pub meta_len: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        block[..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        block[16..24].copy_from_slice(&self.total_blocks.to_le_bytes());
        block[24..32].copy_from_slice(&self.meta_start.to_le_bytes());
        block[32..40].copy_from_slice(&self.meta_len.to_le_bytes());
        block
    }

    /// Reads a superblock, checking that its metadata lies inside an image
    /// of `disk_blocks` blocks (the disk the superblock was read from).
    pub fn decode(block: &[u8], disk_blocks: u64) -> Result<Superblock, FormatError> {
        if block.len() < 40 || block[..8] != MAGIC {
            return Err(FormatError::NotAnImage);
        }
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
        if u32_at(8) != VERSION || u32_at(12) != BLOCK as u32 {
            return Err(FormatError::Version(u32_at(8)));
        }
        let sb = Superblock { total_blocks: u64_at(16), meta_start: u64_at(24), meta_len: u64_at(32) };
        if sb.total_blocks == 0 || sb.total_blocks > disk_blocks {
            return Err(FormatError::Size { total_blocks: sb.total_blocks, disk_blocks });
        }
        let meta_blocks = sb.meta_len.div_ceil(BLOCK as u64);
        if sb.meta_start == 0 || sb.meta_start.checked_add(meta_blocks).is_none_or(|end| end > sb.total_blocks) {
            return Err(FormatError::MetadataOutside);
        }
        Ok(sb)
    }
}

/// A run of blocks holding part of a file: file blocks `logical..logical +
/// count` are image blocks `start..start + count`. Blocks of a file that no
/// extent covers read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub start: u64,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Extents sorted by `logical`, not overlapping.
    File(Vec<Extent>),
    /// Entries sorted by name.
    Dir(Vec<(String, u64)>),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub mount: u32,
    /// Unix permission bits (0o7777 at most): WASI has none, so the guest
    /// keeps them as they came and gives new files 0o644, new directories
    /// 0o755; the host restores them when it copies a tree back.
    pub perm: u16,
    /// A file's length in bytes (its data may end before it: the rest reads
    /// as zeros); a symlink's target length; 0 for a directory.
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    /// The directory (or file) the mount shows at its guest path.
    pub root: u64,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub mounts: Vec<Mount>,
    /// Sorted by `ino`.
    pub inodes: Vec<Inode>,
}

/// What a reader accepts, beyond the format's own rules.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_inodes: u64,
    /// Entries of all directories together: each costs far more decoded
    /// than its few encoded bytes.
    pub max_entries: u64,
    /// Extents of all files together.
    pub max_extents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    NotAnImage,
    Version(u32),
    Size {
        total_blocks: u64,
        disk_blocks: u64,
    },
    MetadataOutside,
    /// The metadata ends inside a record.
    Truncated,
    /// Bytes follow the last inode.
    TrailingBytes,
    TooManyInodes(u64),
    TooManyEntries,
    TooManyExtents,
    BadKind {
        ino: u64,
        kind: u8,
    },
    BadIno(u64),
    DuplicateIno(u64),
    NoRoot,
    BadMount {
        ino: u64,
        mount: u32,
    },
    BadMountRoot(u64),
    BadName {
        dir: u64,
        name: String,
    },
    NotUtf8 {
        ino: u64,
    },
    DuplicateName {
        dir: u64,
        name: String,
    },
    UnknownEntry {
        dir: u64,
        ino: u64,
    },
    /// A directory named by no entry or by several, the root named at all,
    /// or a symlink named by several.
    BadLinks(u64),
    /// Directories that cannot be reached from the root (a cycle).
    Unreachable(u64),
    BadExtent {
        ino: u64,
    },
    BadSymlink(u64),
    BadPerm(u64),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::NotAnImage => write!(f, "not a job filesystem image (bad magic)"),
            FormatError::Version(v) => write!(f, "image version {v} (expected {VERSION} with {BLOCK}-byte blocks)"),
            FormatError::Size { total_blocks, disk_blocks } => {
                write!(f, "image claims {total_blocks} blocks on a disk of {disk_blocks}")
            }
            FormatError::MetadataOutside => write!(f, "metadata lies outside the image"),
            FormatError::Truncated => write!(f, "metadata ends inside a record"),
            FormatError::TrailingBytes => write!(f, "bytes after the last inode"),
            FormatError::TooManyInodes(n) => write!(f, "{n} inodes, more than allowed"),
            FormatError::TooManyEntries => write!(f, "more directory entries than allowed"),
            FormatError::TooManyExtents => write!(f, "more extents than allowed"),
            FormatError::BadKind { ino, kind } => write!(f, "inode {ino}: unknown kind {kind}"),
            FormatError::BadIno(ino) => write!(f, "inode number {ino} is not allowed"),
            FormatError::DuplicateIno(ino) => write!(f, "inode {ino} appears twice"),
            FormatError::NoRoot => write!(f, "no root directory"),
            FormatError::BadMount { ino, mount } => write!(f, "inode {ino}: no mount {mount}"),
            FormatError::BadMountRoot(ino) => write!(f, "mount root {ino} is not an inode of its mount"),
            FormatError::BadName { dir, name } => write!(f, "directory {dir}: bad name {name:?}"),
            FormatError::NotUtf8 { ino } => write!(f, "inode {ino}: a name or target is not UTF-8"),
            FormatError::DuplicateName { dir, name } => write!(f, "directory {dir}: {name:?} appears twice"),
            FormatError::UnknownEntry { dir, ino } => write!(f, "directory {dir}: entry for missing inode {ino}"),
            FormatError::BadLinks(ino) => write!(f, "inode {ino}: named by the wrong number of entries"),
            FormatError::Unreachable(ino) => write!(f, "directory {ino} cannot be reached from the root"),
            FormatError::BadExtent { ino } => write!(f, "inode {ino}: an extent is empty, overlaps or lies outside"),
            FormatError::BadPerm(ino) => write!(f, "inode {ino}: permission bits above 0o7777"),
            FormatError::BadSymlink(ino) => write!(f, "inode {ino}: symlink target empty, too long or with NUL"),
        }
    }
}

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;

/// A name a directory may hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_MAX && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl Metadata {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.inodes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.mounts.len() as u32).to_le_bytes());
        for mount in &self.mounts {
            out.extend_from_slice(&mount.root.to_le_bytes());
            out.push(u8::from(mount.read_only));
        }
        for inode in &self.inodes {
            out.extend_from_slice(&inode.ino.to_le_bytes());
            out.extend_from_slice(&inode.mount.to_le_bytes());
            out.extend_from_slice(&inode.perm.to_le_bytes());
            for n in [inode.size, inode.atim, inode.mtim, inode.ctim] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            match &inode.kind {
                Kind::File(extents) => {
                    out.push(KIND_FILE);
                    out.extend_from_slice(&(extents.len() as u32).to_le_bytes());
                    for e in extents {
                        out.extend_from_slice(&e.logical.to_le_bytes());
                        out.extend_from_slice(&e.start.to_le_bytes());
                        out.extend_from_slice(&e.count.to_le_bytes());
                    }
                }
                Kind::Dir(entries) => {
                    out.push(KIND_DIR);
                    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                    for (name, ino) in entries {
                        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                        out.extend_from_slice(name.as_bytes());
                        out.extend_from_slice(&ino.to_le_bytes());
                    }
                }
                Kind::Symlink(target) => {
                    out.push(KIND_SYMLINK);
                    out.extend_from_slice(&(target.len() as u16).to_le_bytes());
                    out.extend_from_slice(target.as_bytes());
                }
            }
        }
        out
    }

    /// Reads and checks metadata from an image of `total_blocks` blocks:
    /// every rule in this module's description, so that a caller may walk
    /// the tree from [`ROOT`] without meeting a cycle, a dangling entry or
    /// a block outside the image.
    pub fn decode(bytes: &[u8], total_blocks: u64, limits: Limits) -> Result<Metadata, FormatError> {
        let mut r = Reader(bytes);
        let inode_count = r.u64()?;
        if inode_count > limits.max_inodes {
            return Err(FormatError::TooManyInodes(inode_count));
        }
        let mount_count = r.u32()?;
        let mut mounts = Vec::new();
        for _ in 0..mount_count {
            let root = r.u64()?;
            let read_only = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(FormatError::BadMountRoot(root)),
            };
            mounts.push(Mount { root, read_only });
        }
        let mut inodes: Vec<Inode> = Vec::new();
        let mut extents_left = limits.max_extents;
        let mut entries_left = limits.max_entries;
        for _ in 0..inode_count {
            let ino = r.u64()?;
            let mount = r.u32()?;
            let perm = r.u16()?;
            if perm > 0o7777 {
                return Err(FormatError::BadPerm(ino));
            }
            let (size, atim, mtim, ctim) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let kind = match r.u8()? {
                KIND_FILE => {
                    let count = u64::from(r.u32()?);
                    extents_left = extents_left.checked_sub(count).ok_or(FormatError::TooManyExtents)?;
                    let mut extents = Vec::new();
                    for _ in 0..count {
                        extents.push(Extent { logical: r.u64()?, start: r.u64()?, count: r.u32()? });
                    }
                    Kind::File(extents)
                }
                KIND_DIR => {
                    let count = r.u32()?;
                    entries_left = entries_left.checked_sub(u64::from(count)).ok_or(FormatError::TooManyEntries)?;
                    let mut entries = Vec::new();
                    for _ in 0..count {
                        let len = usize::from(r.u16()?);
                        let name = r.string(len, ino)?;
                        entries.push((name, r.u64()?));
                    }
                    Kind::Dir(entries)
                }
                KIND_SYMLINK => {
                    let len = usize::from(r.u16()?);
                    Kind::Symlink(r.string(len, ino)?)
                }
                kind => return Err(FormatError::BadKind { ino, kind }),
            };
            inodes.push(Inode { ino, mount, perm, size, atim, mtim, ctim, kind });
        }
        if !r.0.is_empty() {
            return Err(FormatError::TrailingBytes);
        }
        let meta = Metadata { mounts, inodes };
        meta.check(total_blocks)?;
        Ok(meta)
    }

    fn check(&self, total_blocks: u64) -> Result<(), FormatError> {
        let mut by_ino = BTreeMap::new();
        for inode in &self.inodes {
            if inode.ino == 0 {
                return Err(FormatError::BadIno(0));
            }
            if by_ino.insert(inode.ino, inode).is_some() {
                return Err(FormatError::DuplicateIno(inode.ino));
            }
            if inode.mount != NO_MOUNT && inode.mount as usize >= self.mounts.len() {
                return Err(FormatError::BadMount { ino: inode.ino, mount: inode.mount });
            }
            match &inode.kind {
                Kind::File(extents) => check_extents(inode.ino, extents, total_blocks)?,
                Kind::Symlink(target) => {
                    if target.is_empty() || target.len() > TARGET_MAX || target.contains('\0') {
                        return Err(FormatError::BadSymlink(inode.ino));
                    }
                }
                Kind::Dir(_) => {}
            }
        }
        match by_ino.get(&ROOT) {
            Some(Inode { kind: Kind::Dir(_), .. }) => {}
            _ => return Err(FormatError::NoRoot),
        }
        for (index, mount) in self.mounts.iter().enumerate() {
            match by_ino.get(&mount.root) {
                Some(inode) if inode.mount as usize == index => {}
                _ => return Err(FormatError::BadMountRoot(mount.root)),
            }
        }
        // How many entries name each inode.
        let mut links: BTreeMap<u64, u64> = BTreeMap::new();
        for inode in &self.inodes {
            if let Kind::Dir(entries) = &inode.kind {
                let mut names = BTreeSet::new();
                for (name, ino) in entries {
                    if !valid_name(name) {
                        return Err(FormatError::BadName { dir: inode.ino, name: name.clone() });
                    }
                    if !names.insert(name.as_str()) {
                        return Err(FormatError::DuplicateName { dir: inode.ino, name: name.clone() });
                    }
                    if !by_ino.contains_key(ino) {
                        return Err(FormatError::UnknownEntry { dir: inode.ino, ino: *ino });
                    }
                    *links.entry(*ino).or_default() += 1;
                }
            }
        }
        for inode in &self.inodes {
            let n = links.get(&inode.ino).copied().unwrap_or(0);
            let ok = match inode.kind {
                Kind::Dir(_) if inode.ino == ROOT => n == 0,
                Kind::Dir(_) | Kind::Symlink(_) => n == 1,
                Kind::File(_) => n >= 1,
            };
            if !ok {
                return Err(FormatError::BadLinks(inode.ino));
            }
        }
        // Each directory has one parent, so walking down from the root meets
        // each directory at most once; one it never meets is on a cycle.
        let mut reached = BTreeSet::from([ROOT]);
        let mut todo = alloc::vec![ROOT];
        while let Some(dir) = todo.pop() {
            if let Some(Inode { kind: Kind::Dir(entries), .. }) = by_ino.get(&dir) {
                for (_, ino) in entries {
                    if matches!(by_ino[ino].kind, Kind::Dir(_)) && reached.insert(*ino) {
                        todo.push(*ino);
                    }
                }
            }
        }
        if let Some(lost) = self.inodes.iter().find(|i| matches!(i.kind, Kind::Dir(_)) && !reached.contains(&i.ino)) {
            return Err(FormatError::Unreachable(lost.ino));
        }
        Ok(())
    }
}

fn check_extents(ino: u64, extents: &[Extent], total_blocks: u64) -> Result<(), FormatError> {
    let bad = FormatError::BadExtent { ino };
    let mut next_logical = 0u64;
    for e in extents {
        let count = u64::from(e.count);
        let inside = e.start >= 1 && e.start.checked_add(count).is_some_and(|end| end <= total_blocks);
        if count == 0 || !inside || e.logical < next_logical {
            return Err(bad);
        }
        next_logical = e.logical.checked_add(count).ok_or(bad.clone())?;
        // A file longer than u64 bytes cannot be addressed.
        next_logical.checked_mul(BLOCK as u64).ok_or(bad.clone())?;
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn string(&mut self, len: usize, ino: u64) -> Result<String, FormatError> {
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes).map(String::from).map_err(|_| FormatError::NotUtf8 { ino })
    }
}

#[cfg(test)]
mod tests;
