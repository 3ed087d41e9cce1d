//! The job's filesystem in the guest: the image the host built (fsimage.rs)
//! loaded from its disk, its inodes and directories kept in RAM, file data
//! on the disk behind a bounded write-back cache (data.rs), paths resolved
//! beneath a directory (path.rs), and the metadata written back by `save`.
//!
//! Every operation has the POSIX meaning WASI preview 1 gives it and fails
//! with a WASI errno. The mount rules: an inode whose mount is read-only or
//! [`NO_MOUNT`] cannot change (EROFS); a mount's root cannot be removed or
//! renamed (EBUSY, as on Linux); renames and links stay within one mount
//! (EXDEV).
//!
//! What the guest expects of the image beyond what `Metadata::decode`
//! checks: no block belongs to two files (refused at load), the bytes of a
//! file's last block past its size are zero (a file extended later reads
//! them), and a free run of blocks can hold the metadata (refused at load
//! otherwise; the blocks of the metadata loaded are free once it is read).
//!
//! Memory: per inode a [`Node`] (names up to 30 bytes and files in one
//! extent need nothing more), the cache's blocks (its budget, and an eighth
//! of it for blocks read past short files) and one request's staging buffer.

mod compact;
mod data;
mod path;
mod space;

#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use crate::errno::{self, Errno};
use crate::fsimage::{self, Extent, FormatError, Kind, Metadata, Mount, Superblock, BLOCK, NO_MOUNT, ROOT, TARGET_MAX};
use crate::{BlockDevice, SECTOR};
use compact::Extents;
pub use compact::Name;
use data::Cache;
pub use path::Parent;
use space::{blocks_for, Space};

/// The most one disk request carries: each request is a VM exit, so fewer
/// and larger is faster, up to what the virtio-blk device takes in one.
pub const REQUEST_MAX: usize = 1 << 20;
const REQUEST_BLOCKS: u64 = (REQUEST_MAX / BLOCK) as u64;

/// How many symlinks one path may pass through (Linux's limit).
const SYMLINKS_MAX: u32 = 40;

/// What an image may hold before the guest refuses to load it: bounds on
/// what decoding allocates (the host built the image, but a broken one
/// should fail clearly rather than exhaust the guest's memory).
/// Entries as many as inodes: the host's images hold 1,000,000 of each.
const LIMITS: fsimage::Limits = fsimage::Limits { max_inodes: 1 << 24, max_entries: 1 << 24, max_extents: 1 << 26 };

/// Encoded sizes in the metadata (fsimage.rs's layout), kept up to date so
/// that the room for it can be reserved before any change that grows it.
const META_HEADER: u64 = 8 + 4;
const META_MOUNT: u64 = 8 + 1;
const META_INODE: u64 = 8 + 4 + 2 + 4 * 8 + 1;
const META_COUNT: u64 = 4;
const META_EXTENT: u64 = 8 + 8 + 4;
const fn meta_entry(name: &str) -> u64 {
    2 + name.len() as u64 + 8
}

pub const FILE_PERM: u16 = 0o644;
pub const DIR_PERM: u16 = 0o755;
pub const SYMLINK_PERM: u16 = 0o777;

pub enum Body {
    File(Extents),
    Dir {
        entries: BTreeMap<Name, u64>,
        /// The directory whose entry names this one (the root: itself).
        parent: u64,
        subdirs: u32,
    },
    Symlink(String),
}

pub struct Node {
    pub mount: u32,
    pub perm: u16,
    pub size: u64,
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
    /// Directory entries naming this inode.
    pub links: u32,
    /// Open fds on it: an unlinked file lives until the last one closes.
    pub open: u32,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub kind: FileType,
    pub nlink: u64,
    pub size: u64,
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
}

/// A time to set: left alone, the current time, or a given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Keep,
    Now,
    At(u64),
}

#[derive(Debug)]
pub enum LoadError<E> {
    Disk(E),
    Format(FormatError),
    /// Two files claim the same image block.
    SharedBlock(u64),
    /// No free run of blocks can hold the metadata.
    Full,
}

impl<E: core::fmt::Debug> core::fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Disk(e) => write!(f, "disk error {e:?}"),
            LoadError::Format(e) => write!(f, "{e}"),
            LoadError::SharedBlock(b) => write!(f, "block {b} belongs to two files"),
            LoadError::Full => write!(f, "no room left in the image for its own metadata"),
        }
    }
}

pub struct Fs<D: BlockDevice> {
    disk: D,
    total_blocks: u64,
    mounts: Vec<Mount>,
    mount_roots: BTreeSet<u64>,
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    space: Space,
    /// The metadata's encoded size if saved now, unreachable inodes included.
    meta_bytes: u64,
    cache: Cache,
}

impl Node {
    fn new(mount: u32, perm: u16, now: u64, body: Body) -> Node {
        Node { mount, perm, size: 0, atim: now, mtim: now, ctim: now, links: 0, open: 0, body }
    }

    pub fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::File,
            Body::Dir { .. } => FileType::Dir,
            Body::Symlink(_) => FileType::Symlink,
        }
    }

    fn meta_size(&self) -> u64 {
        META_INODE
            + match &self.body {
                Body::File(extents) => META_COUNT + META_EXTENT * extents.len() as u64,
                Body::Dir { entries, .. } => META_COUNT + entries.keys().map(|n| meta_entry(n.as_str())).sum::<u64>(),
                Body::Symlink(target) => 2 + target.len() as u64,
            }
    }
}

fn sectors(block: u64) -> u64 {
    block * (BLOCK / SECTOR) as u64
}

/// Reads `buf` (whole blocks) from image block `block` on, in requests of
/// at most [`REQUEST_MAX`].
fn read_blocks<D: BlockDevice>(disk: &mut D, block: u64, buf: &mut [u8]) -> Result<(), D::Error> {
    for (i, chunk) in buf.chunks_mut(REQUEST_MAX).enumerate() {
        disk.read(sectors(block + (i * REQUEST_MAX / BLOCK) as u64), chunk)?;
    }
    Ok(())
}

fn write_blocks<D: BlockDevice>(disk: &mut D, block: u64, buf: &[u8]) -> Result<(), D::Error> {
    for (i, chunk) in buf.chunks(REQUEST_MAX).enumerate() {
        disk.write(sectors(block + (i * REQUEST_MAX / BLOCK) as u64), chunk)?;
    }
    Ok(())
}

impl<D: BlockDevice> Fs<D> {
    /// Loads the image on `disk`, with a write-back cache of at most
    /// `cache_bytes` (rounded down to whole blocks; at least a request's worth).
    pub fn load(mut disk: D, cache_bytes: usize) -> Result<Fs<D>, LoadError<D::Error>> {
        let disk_blocks = disk.capacity_sectors() / (BLOCK / SECTOR) as u64;
        let mut block = alloc::vec![0u8; BLOCK];
        if disk_blocks == 0 {
            return Err(LoadError::Format(FormatError::NotAnImage));
        }
        disk.read(0, &mut block).map_err(LoadError::Disk)?;
        let sb = Superblock::decode(&block, disk_blocks).map_err(LoadError::Format)?;
        let mut bytes = alloc::vec![0u8; (sb.meta_len as usize).next_multiple_of(BLOCK)];
        read_blocks(&mut disk, sb.meta_start, &mut bytes).map_err(LoadError::Disk)?;
        bytes.truncate(sb.meta_len as usize);
        let meta = Metadata::decode(&bytes, sb.total_blocks, LIMITS).map_err(LoadError::Format)?;
        drop(bytes);

        let mut space = Space::new(sb.total_blocks);
        let mut links: BTreeMap<u64, u32> = BTreeMap::new();
        let mut parents: BTreeMap<u64, u64> = BTreeMap::new();
        for inode in &meta.inodes {
            if let Kind::Dir(entries) = &inode.kind {
                for (_, ino) in entries {
                    *links.entry(*ino).or_default() += 1;
                    parents.insert(*ino, inode.ino);
                }
            }
        }
        let mut nodes = BTreeMap::new();
        let mut next_ino = ROOT + 1;
        let mut meta_bytes = META_HEADER + META_MOUNT * meta.mounts.len() as u64;
        let kinds: BTreeMap<u64, bool> = meta.inodes.iter().map(|i| (i.ino, matches!(i.kind, Kind::Dir(_)))).collect();
        for inode in meta.inodes {
            next_ino = next_ino.max(inode.ino + 1);
            let body = match inode.kind {
                Kind::File(extents) => {
                    let mut map = Extents::default();
                    for e in extents {
                        if !space.mark(e.start, u64::from(e.count)) {
                            return Err(LoadError::SharedBlock(e.start));
                        }
                        map.insert(e.logical, e.start, e.count);
                    }
                    Body::File(map)
                }
                Kind::Dir(entries) => {
                    let subdirs = entries.iter().filter(|(_, ino)| kinds[ino]).count() as u32;
                    let parent = if inode.ino == ROOT { ROOT } else { parents[&inode.ino] };
                    let entries = entries.into_iter().map(|(name, ino)| (Name::new(&name), ino)).collect();
                    Body::Dir { entries, parent, subdirs }
                }
                Kind::Symlink(target) => Body::Symlink(target),
            };
            let node = Node {
                mount: inode.mount,
                perm: inode.perm,
                size: inode.size,
                atim: inode.atim,
                mtim: inode.mtim,
                ctim: inode.ctim,
                links: links.get(&inode.ino).copied().unwrap_or(0),
                open: 0,
                body,
            };
            meta_bytes += node.meta_size();
            nodes.insert(inode.ino, node);
        }
        // The old metadata's blocks were never marked: it is written afresh.
        if !space.reserve(blocks_for(meta_bytes), 0) {
            return Err(LoadError::Full);
        }
        let mount_roots = meta.mounts.iter().map(|m| m.root).collect();
        Ok(Fs {
            disk,
            total_blocks: sb.total_blocks,
            mounts: meta.mounts,
            mount_roots,
            nodes,
            next_ino,
            space,
            meta_bytes,
            cache: Cache::new(cache_bytes),
        })
    }

    pub fn node(&self, ino: u64) -> &Node {
        &self.nodes[&ino]
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        self.nodes.get_mut(&ino).expect("a live inode")
    }

    pub fn exists(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }

    /// May the inode change: it belongs to a mount that is not read-only.
    pub fn writable(&self, ino: u64) -> bool {
        let mount = self.nodes[&ino].mount;
        mount != NO_MOUNT && !self.mounts[mount as usize].read_only
    }

    fn check_writable(&self, ino: u64) -> Result<(), Errno> {
        if self.writable(ino) {
            Ok(())
        } else {
            Err(errno::ROFS)
        }
    }

    pub fn stat(&self, ino: u64) -> Stat {
        let node = &self.nodes[&ino];
        let nlink = match node.body {
            // "." and the entry naming it, and each subdirectory's "..".
            Body::Dir { subdirs, .. } => 2 + u64::from(subdirs),
            _ => u64::from(node.links),
        };
        Stat { ino, kind: node.kind(), nlink, size: node.size, atim: node.atim, mtim: node.mtim, ctim: node.ctim }
    }

    pub fn entries(&self, dir: u64) -> Result<&BTreeMap<Name, u64>, Errno> {
        match &self.nodes[&dir].body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(errno::NOTDIR),
        }
    }

    pub fn parent(&self, dir: u64) -> u64 {
        match &self.nodes[&dir].body {
            Body::Dir { parent, .. } => *parent,
            _ => dir,
        }
    }

    pub fn readlink(&self, ino: u64) -> Result<&str, Errno> {
        match &self.nodes[&ino].body {
            Body::Symlink(target) => Ok(target),
            _ => Err(errno::INVAL),
        }
    }

    pub fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, Errno> {
        Ok(self.entries(dir)?.get(name).copied())
    }

    /// Makes sure the metadata could grow by `more` bytes and data take
    /// `blocks` more blocks, reserving the room for it.
    fn room(&mut self, more: u64, blocks: u64) -> Result<(), Errno> {
        let keep = self.cache.pending_blocks() + blocks;
        let meta = self.meta_bytes + self.cache.pending_blocks() * META_EXTENT + more;
        if self.space.reserve(blocks_for(meta), keep) {
            Ok(())
        } else {
            Err(errno::NOSPC)
        }
    }

    fn add_entry(&mut self, dir: u64, name: &str, ino: u64, now: u64) {
        let is_dir = matches!(self.nodes[&ino].body, Body::Dir { .. });
        if let Body::Dir { parent, .. } = &mut self.node_mut(ino).body {
            *parent = dir;
        }
        let node = self.node_mut(dir);
        let Body::Dir { entries, subdirs, .. } = &mut node.body else { unreachable!("entries go into directories") };
        entries.insert(Name::new(name), ino);
        *subdirs += u32::from(is_dir);
        node.mtim = now;
        node.ctim = now;
        self.node_mut(ino).links += 1;
        self.meta_bytes += meta_entry(name);
    }

    /// Takes `name` out of `dir`; the inode goes when nothing names or holds it.
    fn remove_entry(&mut self, dir: u64, name: &str, now: u64) -> Result<(), Errno> {
        let node = self.node_mut(dir);
        let Body::Dir { entries, .. } = &mut node.body else { unreachable!("entries live in directories") };
        let ino = entries.remove(name).expect("a present entry");
        node.mtim = now;
        node.ctim = now;
        self.meta_bytes -= meta_entry(name);
        let child = self.node_mut(ino);
        child.links -= 1;
        child.ctim = now;
        if let Body::Dir { .. } = child.body {
            if let Body::Dir { subdirs, .. } = &mut self.node_mut(dir).body {
                *subdirs -= 1;
            }
        }
        self.forget_if_unused(ino)
    }

    /// A directory that was removed (while an fd held it) takes no new entries.
    fn check_alive(&self, dir: u64) -> Result<(), Errno> {
        if dir != ROOT && self.nodes[&dir].links == 0 {
            return Err(errno::NOENT);
        }
        Ok(())
    }

    fn forget_if_unused(&mut self, ino: u64) -> Result<(), Errno> {
        let node = &self.nodes[&ino];
        if node.links > 0 || node.open > 0 {
            return Ok(());
        }
        self.truncate_data(ino, 0)?;
        let node = self.nodes.remove(&ino).expect("a live inode");
        self.meta_bytes -= node.meta_size();
        Ok(())
    }

    fn new_node(&mut self, dir: u64, name: &str, perm: u16, body: Body, now: u64) -> Result<u64, Errno> {
        self.check_writable(dir)?;
        self.check_alive(dir)?;
        if self.lookup(dir, name)?.is_some() {
            return Err(errno::EXIST);
        }
        if name.len() > fsimage::NAME_MAX {
            return Err(errno::NAMETOOLONG);
        }
        let node = Node::new(self.nodes[&dir].mount, perm, now, body);
        self.room(node.meta_size() + meta_entry(name), 0)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.meta_bytes += node.meta_size();
        self.nodes.insert(ino, node);
        self.add_entry(dir, name, ino, now);
        Ok(ino)
    }

    pub fn create_file(&mut self, dir: u64, name: &str, now: u64) -> Result<u64, Errno> {
        self.new_node(dir, name, FILE_PERM, Body::File(Extents::default()), now)
    }

    pub fn mkdir(&mut self, dir: u64, name: &str, now: u64) -> Result<u64, Errno> {
        let body = Body::Dir { entries: BTreeMap::new(), parent: dir, subdirs: 0 };
        self.new_node(dir, name, DIR_PERM, body, now)
    }

    pub fn symlink(&mut self, dir: u64, name: &str, target: &str, now: u64) -> Result<u64, Errno> {
        if target.is_empty() {
            return Err(errno::NOENT);
        }
        if target.len() > TARGET_MAX {
            return Err(errno::NAMETOOLONG);
        }
        if target.contains('\0') {
            return Err(errno::INVAL);
        }
        let ino = self.new_node(dir, name, SYMLINK_PERM, Body::Symlink(String::from(target)), now)?;
        self.node_mut(ino).size = target.len() as u64;
        Ok(ino)
    }

    /// A second name for a file (POSIX `link`). Directories cannot have
    /// one (EPERM, as POSIX says); nor can symlinks here, which Linux
    /// allows, because the image format names each symlink once (EPERM too:
    /// linking with SYMLINK_FOLLOW links the file it leads to).
    pub fn link(&mut self, ino: u64, dir: u64, name: &str, now: u64) -> Result<(), Errno> {
        if let Body::Dir { .. } | Body::Symlink(_) = self.nodes[&ino].body {
            return Err(errno::PERM);
        }
        self.check_writable(dir)?;
        self.check_alive(dir)?;
        if self.lookup(dir, name)?.is_some() {
            return Err(errno::EXIST);
        }
        if self.nodes[&ino].mount != self.nodes[&dir].mount {
            return Err(errno::XDEV);
        }
        if self.nodes[&ino].links == u32::MAX {
            return Err(errno::MLINK);
        }
        self.room(meta_entry(name), 0)?;
        self.add_entry(dir, name, ino, now);
        self.node_mut(ino).ctim = now;
        Ok(())
    }

    /// Removes a name that is not a directory (POSIX `unlink`).
    pub fn unlink(&mut self, dir: u64, name: &str, now: u64) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?.ok_or(errno::NOENT)?;
        if self.mount_roots.contains(&ino) {
            return Err(errno::BUSY);
        }
        if let Body::Dir { .. } = self.nodes[&ino].body {
            return Err(errno::ISDIR);
        }
        self.check_writable(dir)?;
        self.remove_entry(dir, name, now)
    }

    /// Removes an empty directory (POSIX `rmdir`).
    pub fn rmdir(&mut self, dir: u64, name: &str, now: u64) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?.ok_or(errno::NOENT)?;
        if self.mount_roots.contains(&ino) {
            return Err(errno::BUSY);
        }
        match &self.nodes[&ino].body {
            Body::Dir { entries, .. } if !entries.is_empty() => return Err(errno::NOTEMPTY),
            Body::Dir { .. } => {}
            _ => return Err(errno::NOTDIR),
        }
        self.check_writable(dir)?;
        self.remove_entry(dir, name, now)
    }

    /// Is `dir` `ancestor` or beneath it.
    fn within(&self, mut dir: u64, ancestor: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            let parent = self.parent(dir);
            if parent == dir {
                return false;
            }
            dir = parent;
        }
    }

    /// POSIX `rename`: `dir_to/to` becomes what `dir_from/from` was,
    /// replacing a file by a file or an empty directory by a directory.
    pub fn rename(&mut self, dir_from: u64, from: &str, dir_to: u64, to: &str, now: u64) -> Result<(), Errno> {
        let ino = self.lookup(dir_from, from)?.ok_or(errno::NOENT)?;
        let target = self.lookup(dir_to, to)?;
        if self.mount_roots.contains(&ino) || target.is_some_and(|t| self.mount_roots.contains(&t)) {
            return Err(errno::BUSY);
        }
        self.check_writable(dir_from)?;
        self.check_writable(dir_to)?;
        self.check_alive(dir_to)?;
        if self.nodes[&ino].mount != self.nodes[&dir_to].mount {
            return Err(errno::XDEV);
        }
        let moving_dir = matches!(self.nodes[&ino].body, Body::Dir { .. });
        if moving_dir && self.within(dir_to, ino) {
            return Err(errno::INVAL);
        }
        if let Some(target) = target {
            // Two names of one file: POSIX says do nothing.
            if target == ino {
                return Ok(());
            }
            match (&self.nodes[&target].body, moving_dir) {
                (Body::Dir { entries, .. }, true) if !entries.is_empty() => return Err(errno::NOTEMPTY),
                (Body::Dir { .. }, true) => {}
                (Body::Dir { .. }, false) => return Err(errno::ISDIR),
                (_, true) => return Err(errno::NOTDIR),
                (_, false) => {}
            }
        }
        let grows = meta_entry(to).saturating_sub(meta_entry(from));
        self.room(grows, 0)?;
        // The moved inode stays alive while its entry changes: counted as
        // open for the moment, so that removing its old name keeps it.
        self.node_mut(ino).open += 1;
        if target.is_some() {
            self.remove_entry(dir_to, to, now)?;
        }
        self.remove_entry(dir_from, from, now)?;
        self.add_entry(dir_to, to, ino, now);
        let node = self.node_mut(ino);
        node.open -= 1;
        node.ctim = now;
        Ok(())
    }

    /// Counts an fd on the inode.
    pub fn open(&mut self, ino: u64) {
        self.node_mut(ino).open += 1;
    }

    /// An fd on the inode is closed: an unlinked one goes with its last fd.
    pub fn close(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino).open -= 1;
        self.forget_if_unused(ino)
    }

    pub fn set_times(&mut self, ino: u64, atim: SetTime, mtim: SetTime, now: u64) -> Result<(), Errno> {
        self.check_writable(ino)?;
        let node = self.node_mut(ino);
        for (field, time) in [(&mut node.atim, atim), (&mut node.mtim, mtim)] {
            match time {
                SetTime::Keep => {}
                SetTime::Now => *field = now,
                SetTime::At(t) => *field = t,
            }
        }
        node.ctim = now;
        Ok(())
    }

    /// Finds a directory by absolute path from the root (the host's names
    /// of the preopened directories), following no symlinks.
    pub fn find_dir(&self, path: &str) -> Option<u64> {
        let mut dir = ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            dir = self.lookup(dir, name).ok()??;
        }
        matches!(self.nodes[&dir].body, Body::Dir { .. }).then_some(dir)
    }

    /// Writes everything back: the cached data, then the metadata of every
    /// inode reachable from the root into the reserved run, then the
    /// superblock. Fails only when the disk does (EIO): the room for the
    /// metadata was kept all along. No flush: the host reads the image right
    /// after the VM ends, on the same machine (through the same page cache),
    /// so durability would only cost an fsync, tens of milliseconds per job.
    pub fn save(&mut self) -> Result<(), Errno> {
        self.flush_all()?;
        let mut inodes = Vec::new();
        let mut seen = BTreeSet::from([ROOT]);
        let mut todo = alloc::vec![ROOT];
        while let Some(ino) = todo.pop() {
            let node = &self.nodes[&ino];
            if let Body::Dir { entries, .. } = &node.body {
                for child in entries.values() {
                    if seen.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
            let kind = match &node.body {
                Body::File(extents) => {
                    Kind::File(extents.iter().map(|(logical, start, count)| Extent { logical, start, count }).collect())
                }
                Body::Dir { entries, .. } => {
                    Kind::Dir(entries.iter().map(|(n, i)| (String::from(n.as_str()), *i)).collect())
                }
                Body::Symlink(target) => Kind::Symlink(target.clone()),
            };
            inodes.push(fsimage::Inode {
                ino,
                mount: node.mount,
                perm: node.perm,
                size: node.size,
                atim: node.atim,
                mtim: node.mtim,
                ctim: node.ctim,
                kind,
            });
        }
        inodes.sort_unstable_by_key(|i| i.ino);
        let mut bytes = Metadata { mounts: self.mounts.clone(), inodes }.encode();
        let reserved = self.space.reserved();
        let len = bytes.len() as u64;
        assert!(blocks_for(len) <= reserved.end - reserved.start, "the metadata outgrew the room kept for it");
        bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
        write_blocks(&mut self.disk, reserved.start, &bytes).map_err(|_| errno::IO)?;
        let sb = Superblock { total_blocks: self.total_blocks, meta_start: reserved.start, meta_len: len };
        self.disk.write(0, &sb.encode()).map_err(|_| errno::IO)
    }
}
