//! File data: on the disk in extents, behind a write-back cache of whole
//! blocks with a fixed budget.
//!
//! Writes land in the cache; image blocks are chosen only when dirty blocks
//! are flushed (the least recently used, a request's worth at once, when the
//! cache needs room; all of them at save), so data written in many small
//! pieces still lands contiguous, and many small files go out together, in
//! requests of up to [`super::REQUEST_MAX`] (less in a cache under 4 MiB).
//! A file created, written and removed while cached never reaches the
//! disk. Reads of data not cached fetch the rest of its extent (up to a
//! request) in one go, the read-ahead that keeps sequential reading to one
//! request per mebibyte; a large file's data is read through the staging
//! buffer rather than the cache. Every disk transfer goes through the heap
//! (frames and one staging buffer), never the caller's buffer.
//!
//! Space: a dirty block with no image block yet is counted as pending, and
//! one is made dirty only while a free block (and the metadata's room for
//! its extent) remains for every pending one, so a flush never runs out.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::{sectors, Body, Fs, META_EXTENT, REQUEST_BLOCKS};
use crate::errno::{self, Errno};
use crate::fsimage::BLOCK;
use crate::BlockDevice;

type Frame = Box<[u8; BLOCK]>;

/// Where a written block goes in the stream (see [`Cache::stream`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Already in it, at this byte of the staging buffer.
    Inside(usize),
    /// Onto its end.
    Onto,
    /// The first of a new one.
    New,
}

/// What a block about to be written holds first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// What the file has there (read from the disk if need be).
    Keep,
    /// Zeros: nothing of the file is there (past its end).
    Zeros,
    /// Anything: the write covers the whole block.
    Overwrite,
}

struct Slot {
    data: Frame,
    stamp: u64,
    dirty: bool,
    /// Dirty with no image block yet: one is allocated when it is flushed.
    unmapped: bool,
}

pub struct Cache {
    /// By (inode, block of the file).
    slots: BTreeMap<(u64, u64), Slot>,
    /// Least recently used first.
    lru: BTreeMap<u64, (u64, u64)>,
    stamp: u64,
    capacity: usize,
    spare: Vec<Frame>,
    pending: u64,
    /// Where whole requests are gathered; allocated at first use.
    staging: Vec<u8>,
    /// What the staging buffer holds of a file since a read put it there:
    /// (inode, first block, blocks). Gone when the buffer is used for
    /// anything else or the file is cut short.
    window: Option<(u64, u64, u64)>,
    /// A large file being written on: its next blocks, gathered in the
    /// staging buffer until a request's worth, then written in one:
    /// (inode, first block, blocks). They have no image block yet (they
    /// count as pending) and are in no slot.
    stream: Option<(u64, u64, u64)>,
    /// The largest request, in blocks: read-ahead, flushes and reads that
    /// skip the cache; a quarter of the cache at most.
    request: u64,
    /// Image blocks read past the end of a short file, by image block,
    /// and the order they came in (the oldest go first).
    near: BTreeMap<u64, Frame>,
    near_order: VecDeque<u64>,
    near_max: usize,
}

/// Reads of at least this many blocks of a file go through the staging
/// buffer, fewer through the cache.
const WINDOW_MIN: u64 = 16;

/// How many image blocks past a short file one read also fetches: enough
/// for dozens of small files, little enough to cost nothing beside the exit.
const NEAR_AHEAD: u64 = 32;

/// The smallest cache, in blocks: requests of 16 blocks at least.
const CAPACITY_MIN: usize = 64;

impl Cache {
    pub fn new(bytes: usize) -> Cache {
        let capacity = (bytes / BLOCK).max(CAPACITY_MIN);
        Cache {
            slots: BTreeMap::new(),
            lru: BTreeMap::new(),
            stamp: 0,
            capacity,
            spare: Vec::new(),
            pending: 0,
            staging: Vec::new(),
            window: None,
            stream: None,
            request: REQUEST_BLOCKS.min(capacity as u64 / 4),
            near: BTreeMap::new(),
            near_order: VecDeque::new(),
            near_max: capacity / 8,
        }
    }

    pub fn pending_blocks(&self) -> u64 {
        self.pending
    }

    /// Blocks held now (each a frame of the budget).
    #[cfg(test)]
    pub fn blocks(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(test)]
    pub fn holds_near(&self, block: u64) -> bool {
        self.near.contains_key(&block)
    }

    fn touch(&mut self, key: (u64, u64)) {
        let slot = self.slots.get_mut(&key).expect("a cached block");
        self.lru.remove(&slot.stamp);
        self.stamp += 1;
        slot.stamp = self.stamp;
        self.lru.insert(self.stamp, key);
    }

    fn remove(&mut self, key: (u64, u64)) {
        let slot = self.slots.remove(&key).expect("a cached block");
        self.lru.remove(&slot.stamp);
        if slot.dirty && slot.unmapped {
            self.pending -= 1;
        }
        self.spare.push(slot.data);
    }

    /// A block's frame, zeroed unless the caller fills all of it.
    fn frame(&mut self, zeroed: bool) -> Frame {
        match self.spare.pop() {
            Some(mut frame) => {
                if zeroed {
                    frame.fill(0);
                }
                frame
            }
            None => Box::new([0; BLOCK]),
        }
    }

    fn keep_near(&mut self, block: u64, frame: Frame) {
        if self.near.contains_key(&block) {
            self.spare.push(frame);
            return;
        }
        while self.near.len() >= self.near_max {
            let oldest = self.near_order.pop_front().expect("kept blocks are in the order");
            if let Some(frame) = self.near.remove(&oldest) {
                self.spare.push(frame);
            }
        }
        self.near.insert(block, frame);
        self.near_order.push_back(block);
        // Blocks taken out of `near` since leave stale places in the order.
        if self.near_order.len() > 2 * self.near_max {
            let near = &self.near;
            self.near_order.retain(|b| near.contains_key(b));
        }
    }

    /// An image block is written: what was read of it before is stale.
    fn forget_near(&mut self, block: u64) {
        if let Some(frame) = self.near.remove(&block) {
            self.spare.push(frame);
        }
    }

    /// Where in the staging buffer a file's block is, if it is in the stream.
    fn stream_at(&self, ino: u64, block: u64) -> Option<usize> {
        let (i, first, count) = self.stream?;
        (i == ino && (first..first + count).contains(&block)).then(|| (block - first) as usize * BLOCK)
    }

    /// Where in the staging buffer a file's block is, if a read left it there.
    fn window_at(&self, ino: u64, block: u64) -> Option<usize> {
        let (i, first, count) = self.window?;
        (i == ino && (first..first + count).contains(&block)).then(|| (block - first) as usize * BLOCK)
    }

    /// The staging buffer for a transfer of `len` bytes: what a read left
    /// there is gone; the stream must have been written out first.
    fn staging(&mut self, len: usize) -> &mut [u8] {
        debug_assert!(self.stream.is_none() || len == 0, "the stream is in the staging buffer");
        self.window = None;
        if self.staging.is_empty() {
            self.staging = alloc::vec![0; self.request as usize * BLOCK];
        }
        &mut self.staging[..len]
    }
}

impl<D: BlockDevice> Fs<D> {
    /// The image block of a file's block, and how many blocks of the
    /// extent follow from it (itself included).
    pub(super) fn mapping(&self, ino: u64, block: u64) -> Option<(u64, u64)> {
        let Body::File(extents) = &self.nodes[&ino].body else { return None };
        let (logical, start, count) = extents.before(block, true)?;
        let end = logical + u64::from(count);
        (block < end).then(|| (start + (block - logical), end - block))
    }

    fn add_extent(&mut self, ino: u64, logical: u64, start: u64, count: u64) {
        let Body::File(extents) = &mut self.nodes.get_mut(&ino).expect("a live inode").body else {
            unreachable!("extents belong to files")
        };
        let mut added = 1i64;
        let (mut logical, mut start, mut count) = (logical, start, count);
        if let Some((l, s, c)) = extents.before(logical, false) {
            let c = u64::from(c);
            if l + c == logical && s + c == start && c + count <= u64::from(u32::MAX) {
                extents.remove(l);
                (logical, start, count) = (l, s, c + count);
                added -= 1;
            }
        }
        if let Some((_, s, c)) = extents.starting_at(logical + count) {
            let c = u64::from(c);
            if s == start + count && c + count <= u64::from(u32::MAX) {
                extents.remove(logical + count);
                count += c;
                added -= 1;
            }
        }
        extents.insert(logical, start, count as u32);
        self.meta_bytes = self.meta_bytes.wrapping_add_signed(added * META_EXTENT as i64);
    }

    /// Makes room for `blocks` more blocks in the cache, flushing dirty
    /// blocks when the least recently used one is dirty.
    pub(super) fn make_room_for(&mut self, blocks: usize) -> Result<(), Errno> {
        while self.cache.slots.len() + blocks > self.cache.capacity {
            let (_, &key) = self.cache.lru.first_key_value().expect("a full cache holds blocks");
            if self.cache.slots[&key].dirty {
                self.flush_oldest()?;
            }
            self.cache.remove(key);
        }
        Ok(())
    }

    fn insert(&mut self, key: (u64, u64), data: Frame) {
        self.cache.stamp += 1;
        let stamp = self.cache.stamp;
        self.cache.lru.insert(stamp, key);
        self.cache.slots.insert(key, Slot { data, stamp, dirty: false, unmapped: false });
    }

    /// Brings a mapped block into the cache, with what follows it in its
    /// extent (up to the read-ahead, the file's end or a block already
    /// cached). A file that ends first has the image blocks after it read
    /// too, kept aside by image block: files written together lie together,
    /// so the next one read is often among them, and many small files are
    /// read in one request.
    fn fetch(&mut self, ino: u64, block: u64, start: u64, run: u64) -> Result<(), Errno> {
        let file_blocks = self.nodes[&ino].size.div_ceil(BLOCK as u64);
        let mut count = run.min(self.cache.request).min(file_blocks.saturating_sub(block)).max(1);
        if let Some((&(_, cached), _)) = self.cache.slots.range((ino, block)..(ino, block + count)).next() {
            count = cached - block;
        }
        // Room first: making it may flush, and a flush uses the staging buffer.
        self.make_room_for(count as usize)?;
        if self.cache.near.contains_key(&start) {
            for i in 0..count {
                let Some(frame) = self.cache.near.remove(&(start + i)) else { break };
                self.insert((ino, block + i), frame);
            }
            return Ok(());
        }
        let extra = if block + count >= file_blocks {
            NEAR_AHEAD.min(self.total_blocks - (start + count)).min(self.cache.request - count)
        } else {
            0
        };
        let len = (count + extra) as usize * BLOCK;
        self.end_stream()?;
        let disk = &mut self.disk;
        disk.read(sectors(start), self.cache.staging(len)).map_err(|_| errno::IO)?;
        for i in 0..count + extra {
            let mut frame = self.cache.frame(false);
            let at = i as usize * BLOCK;
            frame.copy_from_slice(&self.cache.staging[at..at + BLOCK]);
            if i < count {
                self.insert((ino, block + i), frame);
            } else {
                self.cache.keep_near(start + i, frame);
            }
        }
        Ok(())
    }

    /// Reads from byte `offset` of a file; returns how many bytes (0 at or
    /// past its end). Holes read as zeros.
    pub fn read(&mut self, ino: u64, offset: u64, buf: &mut [u8], now: u64) -> Result<usize, Errno> {
        let size = self.nodes[&ino].size;
        if offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK as u64, (at % BLOCK as u64) as usize);
            let n = (BLOCK - within).min(len - done);
            if self.cache.slots.contains_key(&(ino, block)) {
                self.cache.touch((ino, block));
                buf[done..done + n].copy_from_slice(&self.cache.slots[&(ino, block)].data[within..within + n]);
            } else if let Some(at) = self.cache.stream_at(ino, block) {
                buf[done..done + n].copy_from_slice(&self.cache.staging[at + within..at + within + n]);
            } else if let Some(at) = self.cache.window_at(ino, block) {
                buf[done..done + n].copy_from_slice(&self.cache.staging[at + within..at + within + n]);
            } else if let Some((start, run)) = self.mapping(ino, block) {
                let file_blocks = size.div_ceil(BLOCK as u64);
                let mut count = run.min(self.cache.request).min(file_blocks - block);
                if let Some((&(_, cached), _)) = self.cache.slots.range((ino, block)..(ino, block + count)).next() {
                    count = cached - block;
                }
                if count < WINDOW_MIN {
                    self.fetch(ino, block, start, run)?;
                    continue;
                }
                // A large file read on: a request's worth into the staging
                // buffer, read from there, never into the cache (it would
                // push out what is worth keeping) nor straight into the
                // caller's buffer (that is the module's memory, which a
                // device cannot address: the guest's virtio buffers must be
                // identity-mapped heap).
                self.end_stream()?;
                let disk = &mut self.disk;
                disk.read(sectors(start), self.cache.staging(count as usize * BLOCK)).map_err(|_| errno::IO)?;
                self.cache.window = Some((ino, block, count));
                continue;
            } else {
                buf[done..done + n].fill(0);
            }
            done += n;
        }
        self.nodes.get_mut(&ino).expect("a live inode").atim = now;
        Ok(len)
    }

    /// The cached block, made dirty: fetched first when `fill` is
    /// [`Fill::Keep`] and the disk holds it; counted as pending when it has
    /// no image block (ENOSPC, with nothing changed, when none could be
    /// found for it at flush).
    fn dirty_block(&mut self, ino: u64, block: u64, fill: Fill) -> Result<&mut [u8; BLOCK], Errno> {
        let key = (ino, block);
        let mapping = self.mapping(ino, block);
        let cached = self.cache.slots.get(&key).map(|slot| slot.dirty);
        // The room first: a block must not be cached with what the caller
        // was about to write over it left unwritten.
        if mapping.is_none() && cached != Some(true) {
            self.room(META_EXTENT, 1)?;
        }
        if cached.is_none() {
            match (mapping, fill) {
                (Some((start, run)), Fill::Keep) => self.fetch(ino, block, start, run)?,
                _ => {
                    self.make_room_for(1)?;
                    let frame = self.cache.frame(fill != Fill::Overwrite);
                    self.insert(key, frame);
                }
            }
        }
        self.cache.touch(key);
        let slot = self.cache.slots.get_mut(&key).expect("just cached");
        if !slot.dirty {
            slot.dirty = true;
            slot.unmapped = mapping.is_none();
            self.cache.pending += u64::from(mapping.is_none());
        }
        Ok(&mut self.cache.slots.get_mut(&key).expect("just cached").data)
    }

    /// Where a write to a file's block goes in the stream: into it, onto
    /// its end, or into a new one (for a write of at least [`WINDOW_MIN`]
    /// blocks from here to a block with no data yet); `None` for the cache.
    fn stream_place(&self, ino: u64, block: u64, left: usize) -> Option<Stream> {
        if let Some((i, first, count)) = self.cache.stream {
            if i == ino && (first..first + count).contains(&block) {
                return Some(Stream::Inside((block - first) as usize * BLOCK));
            }
        }
        let fresh = !self.cache.slots.contains_key(&(ino, block)) && self.mapping(ino, block).is_none();
        match self.cache.stream {
            Some((i, first, count)) if fresh && i == ino && block == first + count => Some(Stream::Onto),
            _ if fresh && left >= WINDOW_MIN as usize * BLOCK => Some(Stream::New),
            _ => None,
        }
    }

    /// Adds a block to the stream (a new one for [`Stream::New`]), with the
    /// room for it taken first, and writes the stream out when it holds a
    /// request's worth.
    fn stream_write(&mut self, ino: u64, block: u64, place: Stream, within: usize, chunk: &[u8]) -> Result<(), Errno> {
        self.room(META_EXTENT, 1)?;
        if place == Stream::New {
            self.end_stream()?;
            self.cache.window = None;
            self.cache.staging(0);
            self.cache.stream = Some((ino, block, 0));
        }
        let (_, first, count) = self.cache.stream.expect("a stream to add to");
        let at = count as usize * BLOCK;
        let staged = &mut self.cache.staging[at..at + BLOCK];
        if chunk.len() < BLOCK {
            staged.fill(0);
        }
        staged[within..within + chunk.len()].copy_from_slice(chunk);
        self.cache.stream = Some((ino, first, count + 1));
        self.cache.pending += 1;
        if count + 1 == self.cache.request {
            self.end_stream()?;
        }
        Ok(())
    }

    /// Gives the stream's blocks image blocks, as few runs as the free space
    /// allows, and writes them out, a request per run.
    pub(super) fn end_stream(&mut self) -> Result<(), Errno> {
        let Some((ino, first, count)) = self.cache.stream.take() else { return Ok(()) };
        let mut done = 0;
        while done < count {
            let (start, n) = self.space.allocate(count - done).expect("pending blocks always have room");
            self.add_extent(ino, first + done, start, n);
            for block in start..start + n {
                self.cache.forget_near(block);
            }
            let staged = &self.cache.staging[done as usize * BLOCK..(done + n) as usize * BLOCK];
            self.disk.write(sectors(start), staged).map_err(|_| errno::IO)?;
            done += n;
        }
        self.cache.pending -= count;
        Ok(())
    }

    /// Writes at byte `offset` of a file, extending it; returns how many
    /// bytes were written: fewer than given when the disk filled up part way
    /// (ENOSPC when not even one could be).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8], now: u64) -> Result<usize, Errno> {
        self.check_writable(ino)?;
        let end = offset.checked_add(data.len() as u64).filter(|e| *e <= i64::MAX as u64).ok_or(errno::FBIG)?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK as u64, (at % BLOCK as u64) as usize);
            let n = (BLOCK - within).min(data.len() - done);
            // A block written whole, or past the file's end, needs no read.
            let fill = if n == BLOCK {
                Fill::Overwrite
            } else if at - within as u64 >= self.nodes[&ino].size {
                Fill::Zeros
            } else {
                Fill::Keep
            };
            let chunk = &data[done..done + n];
            let written = match self.stream_place(ino, block, data.len() - done) {
                Some(Stream::Inside(at)) => {
                    self.cache.staging[at + within..at + within + n].copy_from_slice(chunk);
                    Ok(())
                }
                Some(place) => self.stream_write(ino, block, place, within, chunk),
                None => {
                    self.dirty_block(ino, block, fill).map(|frame| frame[within..within + n].copy_from_slice(chunk))
                }
            };
            match written {
                Ok(()) => {}
                Err(errno::NOSPC) if done > 0 => break,
                Err(e) => return Err(e),
            }
            done += n;
        }
        let node = self.nodes.get_mut(&ino).expect("a live inode");
        // POSIX: only a write of some bytes changes the size and times.
        if done > 0 {
            node.size = node.size.max(offset + done as u64);
            node.mtim = now;
            node.ctim = now;
        }
        debug_assert!(done as u64 <= end - offset);
        Ok(done)
    }

    /// Sets a file's length: data past it goes (POSIX `ftruncate`); a longer
    /// file reads zeros past its old end.
    pub fn set_size(&mut self, ino: u64, size: u64, now: u64) -> Result<(), Errno> {
        self.check_writable(ino)?;
        if size > i64::MAX as u64 {
            return Err(errno::FBIG);
        }
        if size < self.nodes[&ino].size {
            self.truncate_data(ino, size)?;
        }
        let node = self.nodes.get_mut(&ino).expect("a live inode");
        node.size = size;
        node.mtim = now;
        node.ctim = now;
        Ok(())
    }

    /// Drops a file's data past `size` bytes, cached and on disk; the rest
    /// of a block cut in two is zeroed, so that extending reads zeros.
    pub(super) fn truncate_data(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let keep = size.div_ceil(BLOCK as u64);
        if self.cache.window.is_some_and(|(i, ..)| i == ino) {
            self.cache.window = None;
        }
        match self.cache.stream {
            // All of it cut off: never written.
            Some((i, first, count)) if i == ino && keep <= first => {
                self.cache.stream = None;
                self.cache.pending -= count;
            }
            Some((i, ..)) if i == ino => self.end_stream()?,
            _ => {}
        }
        let tail = (size % BLOCK as u64) as usize;
        if tail != 0 {
            if self.mapping(ino, keep - 1).is_some() {
                self.dirty_block(ino, keep - 1, Fill::Keep)?[tail..].fill(0);
            } else if let Some(slot) = self.cache.slots.get_mut(&(ino, keep - 1)) {
                // A block with no image block is only ever in the cache.
                slot.data[tail..].fill(0);
            }
        }
        // After the tail, whose fetch may bring blocks past it. Taken one
        // at a time, without allocating: removing a file is common.
        while let Some((&key, _)) = self.cache.slots.range((ino, keep)..=(ino, u64::MAX)).next() {
            self.cache.remove(key);
        }
        let Body::File(extents) = &mut self.nodes.get_mut(&ino).expect("a live inode").body else { return Ok(()) };
        while let Some((logical, start, count)) = extents.last() {
            let count = u64::from(count);
            if logical + count <= keep {
                break;
            }
            if logical >= keep {
                extents.remove(logical);
                self.space.release(start, count);
                self.meta_bytes -= META_EXTENT;
            } else {
                let kept = keep - logical;
                extents.insert(logical, start, kept as u32);
                self.space.release(start + kept, count - kept);
            }
        }
        Ok(())
    }

    /// Writes out the least recently used dirty blocks, a request's worth,
    /// whichever files they belong to: many small files go out together.
    fn flush_oldest(&mut self) -> Result<(), Errno> {
        let cache = &self.cache;
        let mut keys: Vec<(u64, u64)> =
            cache.lru.values().filter(|key| cache.slots[*key].dirty).take(cache.request as usize).copied().collect();
        keys.sort_unstable();
        self.flush_blocks(&keys)
    }

    /// Gives dirty blocks (sorted by file and block) image blocks where they
    /// have none, consecutive blocks of a file a contiguous run, then writes
    /// them in requests as large as their image blocks are contiguous.
    fn flush_blocks(&mut self, keys: &[(u64, u64)]) -> Result<(), Errno> {
        self.end_stream()?;
        let mut i = 0;
        while i < keys.len() {
            if !self.cache.slots[&keys[i]].unmapped {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < keys.len() && keys[j] == (keys[j - 1].0, keys[j - 1].1 + 1) && self.cache.slots[&keys[j]].unmapped
            {
                j += 1;
            }
            let (ino, end) = (keys[i].0, keys[j - 1].1 + 1);
            let mut block = keys[i].1;
            while block < end {
                let (start, count) = self.space.allocate(end - block).expect("pending blocks always have room");
                self.add_extent(ino, block, start, count);
                block += count;
            }
            for key in &keys[i..j] {
                self.cache.slots.get_mut(key).expect("a dirty block").unmapped = false;
            }
            self.cache.pending -= (j - i) as u64;
            i = j;
        }
        let mut placed: Vec<(u64, (u64, u64))> =
            keys.iter().map(|key| (self.mapping(key.0, key.1).expect("mapped just now").0, *key)).collect();
        placed.sort_unstable();
        self.cache.staging(0);
        let mut i = 0;
        while i < placed.len() {
            let first = placed[i].0;
            let mut j = i + 1;
            while j < placed.len() && j - i < self.cache.request as usize && placed[j].0 == first + (j - i) as u64 {
                j += 1;
            }
            let cache = &mut self.cache;
            for (k, (image_block, key)) in placed[i..j].iter().enumerate() {
                cache.forget_near(*image_block);
                let slot = cache.slots.get_mut(key).expect("a dirty block");
                cache.staging[k * BLOCK..(k + 1) * BLOCK].copy_from_slice(&slot.data[..]);
                slot.dirty = false;
            }
            self.disk.write(sectors(first), &self.cache.staging[..(j - i) * BLOCK]).map_err(|_| errno::IO)?;
            i = j;
        }
        Ok(())
    }

    pub(super) fn flush_all(&mut self) -> Result<(), Errno> {
        let keys: Vec<(u64, u64)> = self.cache.slots.iter().filter(|(_, s)| s.dirty).map(|(k, _)| *k).collect();
        self.flush_blocks(&keys)
    }
}
