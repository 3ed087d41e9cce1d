//! Which blocks of the image are free, and the room kept for the metadata.
//!
//! The metadata is written at save into one contiguous run of blocks (the
//! superblock names its start and length), so that run is kept free from
//! the start: the reservation, a run of free blocks that data never goes
//! into, always at least as long as the metadata's encoded size could be
//! (the caller says how many bytes that is before each change that grows
//! it). When the metadata outgrows it, the reservation extends over free
//! neighbours or moves to another free run; when neither is possible the
//! change is refused (ENOSPC), so saving can never fail for lack of space.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use crate::fsimage::BLOCK;

pub struct Space {
    /// One bit per block, set when in use; block 0 (the superblock) always is.
    used: Vec<u64>,
    total: u64,
    /// Free blocks, those of the reservation included.
    free: u64,
    /// Where the next data allocation starts looking: allocating onwards
    /// from the last one keeps a file written in pieces contiguous.
    cursor: u64,
    reserved: Range<u64>,
}

/// More than the metadata needs right now, so that it can grow a little
/// without moving the reservation.
fn with_slack(blocks: u64) -> u64 {
    blocks + (blocks / 8).max(4)
}

pub fn blocks_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK as u64).max(1)
}

impl Space {
    /// All blocks but the superblock free, nothing reserved yet.
    pub fn new(total: u64) -> Space {
        let mut space =
            Space { used: vec![0; total.div_ceil(64) as usize], total, free: total, cursor: 1, reserved: 0..0 };
        space.mark(0, 1);
        space
    }

    pub fn is_used(&self, block: u64) -> bool {
        self.used[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn set(&mut self, block: u64, used: bool) {
        let (word, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if used {
            self.used[word] |= bit;
        } else {
            self.used[word] &= !bit;
        }
    }

    /// Marks `start..start + count` used; false if one of them already was.
    pub fn mark(&mut self, start: u64, count: u64) -> bool {
        for block in start..start + count {
            if self.is_used(block) {
                return false;
            }
            self.set(block, true);
        }
        self.free -= count;
        true
    }

    pub fn release(&mut self, start: u64, count: u64) {
        for block in start..start + count {
            debug_assert!(self.is_used(block), "block {block} freed twice");
            self.set(block, false);
        }
        self.free += count;
    }

    /// Free blocks data may still take.
    pub fn available(&self) -> u64 {
        self.free - (self.reserved.end - self.reserved.start)
    }

    pub fn reserved(&self) -> Range<u64> {
        self.reserved.clone()
    }

    /// Makes the reservation hold at least `blocks` blocks while leaving
    /// `keep` free blocks to data; false (nothing changed) if it cannot.
    pub fn reserve(&mut self, blocks: u64, keep: u64) -> bool {
        let have = self.reserved.end - self.reserved.start;
        if have >= blocks {
            return self.available() >= keep;
        }
        if self.free < blocks.saturating_add(keep) {
            return false;
        }
        let mut grown = self.reserved.clone();
        if grown.is_empty() {
            grown = self.total..self.total;
        }
        let goal = with_slack(blocks).min(self.free - keep);
        while grown.end - grown.start < goal && grown.start > 1 && !self.is_used(grown.start - 1) {
            grown.start -= 1;
        }
        while grown.end - grown.start < goal && grown.end < self.total && !self.is_used(grown.end) {
            grown.end += 1;
        }
        if grown.end - grown.start >= blocks {
            self.reserved = grown;
            return true;
        }
        match self.highest_free_run(blocks, goal) {
            Some(run) => {
                self.reserved = run;
                true
            }
            None => false,
        }
    }

    /// The free run nearest the end of the image that holds at least
    /// `least` blocks, cut to `most` (the blocks of the reservation count
    /// as free: they are what is being moved).
    fn highest_free_run(&self, least: u64, most: u64) -> Option<Range<u64>> {
        let mut end = self.total;
        while end > 1 {
            // Skip used blocks down to the end of a free run.
            while end > 1 && self.is_used(end - 1) {
                end -= 1;
            }
            let mut start = end;
            while start > 1 && !self.is_used(start - 1) && end - start < most {
                start -= 1;
            }
            if end - start >= least {
                return Some(start..end);
            }
            end = start;
            while end > 1 && !self.is_used(end - 1) {
                end -= 1;
            }
        }
        None
    }

    /// Takes up to `want` contiguous free blocks outside the reservation:
    /// the first free run from the cursor on, wrapping round once. None if
    /// there is no free block at all.
    pub fn allocate(&mut self, want: u64) -> Option<(u64, u64)> {
        if self.available() == 0 || want == 0 {
            return None;
        }
        let start = self.find_free(self.cursor, self.total).or_else(|| self.find_free(1, self.cursor))?;
        let mut count = 1;
        while count < want && start + count < self.total && self.allowed(start + count) {
            count += 1;
        }
        self.mark(start, count);
        self.cursor = start + count;
        Some((start, count))
    }

    fn allowed(&self, block: u64) -> bool {
        !self.is_used(block) && !self.reserved.contains(&block)
    }

    fn find_free(&self, from: u64, to: u64) -> Option<u64> {
        let mut block = from.max(1);
        while block < to {
            // Whole words in use are skipped a word at a time.
            if block % 64 == 0 && self.used[(block / 64) as usize] == u64::MAX {
                block += 64;
                continue;
            }
            if self.reserved.contains(&block) {
                block = self.reserved.end;
                continue;
            }
            if !self.is_used(block) {
                return Some(block);
            }
            block += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_goes_on_from_the_last_and_skips_the_reservation() {
        let mut space = Space::new(100);
        assert!(space.reserve(10, 0));
        let reserved = space.reserved();
        assert_eq!(reserved.end, 100, "at the end of the image");
        assert!(reserved.end - reserved.start >= 10);
        assert_eq!(space.available(), 99 - (reserved.end - reserved.start));
        assert_eq!(space.allocate(5), Some((1, 5)));
        assert_eq!(space.allocate(5), Some((6, 5)));
        space.release(1, 5);
        // Onwards first, then round to the start.
        assert_eq!(space.allocate(1000), Some((11, reserved.start - 11)));
        assert_eq!(space.allocate(1000), Some((1, 5)));
        assert_eq!(space.allocate(1), None);
        assert!(!space.mark(3, 1), "already in use");
    }

    #[test]
    fn the_reservation_grows_over_free_neighbours_or_moves_or_refuses() {
        let mut space = Space::new(64);
        assert!(space.reserve(2, 0));
        let first = space.reserved();
        // Data right below it: it can only grow by moving.
        assert!(space.mark(first.start - 1, 1));
        assert!(space.mark(1, 10));
        assert!(space.reserve(first.end - first.start + 1, 0));
        let moved = space.reserved();
        assert!(moved.end - moved.start > first.end - first.start);
        assert!((moved.start..moved.end).all(|b| !space.is_used(b)));
        // Refused when the data's blocks would not be left.
        let available = space.available();
        assert!(!space.reserve(64, 0));
        assert!(!space.reserve(moved.end - moved.start, available + 1));
        assert_eq!(space.reserved(), moved, "nothing changed");
        assert!(space.reserve(moved.end - moved.start, available));
    }

    #[test]
    fn a_reservation_needs_one_free_run() {
        let mut space = Space::new(20);
        // Every other block in use: 9 free blocks, no two together.
        for b in (2..20).step_by(2) {
            assert!(space.mark(b, 1));
        }
        assert!(space.reserve(1, 0));
        assert!(!space.reserve(2, 0));
    }
}
