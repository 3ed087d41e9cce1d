//! Virtual memory above RAM: address ranges are reserved (nothing mapped:
//! any access faults), then pages in them get zeroed frames from the heap
//! and a protection, 4 KiB pages or whole 2 MiB blocks. Linear memories live
//! here (each a 4 GiB reservation whose unmapped pages are its bounds
//! checks), and the page protections make out-of-bounds accesses fault
//! instead of reading zeros.
//!
//! Frames come from the heap, so a job whose memories grow past the guest's
//! RAM ends as any other allocation failure does: "out of memory".

use alloc::alloc::{dealloc, Layout};
use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::{zeroed_frame, SpinLock};
pub use crate::paging::PAGE;
use crate::paging::{self, Access, Lookup, BLOCK};

/// Far above any RAM the VMM gives a guest, in the lower half (PVM runs the
/// guest natively only there), with 127 TiB of room: reservations are never
/// reused, and a job makes few.
const REGION_START: u64 = 1 << 40;
const REGION_END: u64 = 0x7fff_0000_0000;

static NEXT: AtomicU64 = AtomicU64::new(REGION_START);

#[derive(Debug)]
pub enum VmemError {
    /// The range is not page-aligned, or not inside the region.
    BadRange,
    /// No address space left to reserve.
    Exhausted,
}

/// The end of a page-aligned range inside the region.
fn range_end(addr: u64, len: u64) -> Result<u64, VmemError> {
    let end = addr.checked_add(len).ok_or(VmemError::BadRange)?;
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || addr < REGION_START || end > REGION_END {
        return Err(VmemError::BadRange);
    }
    Ok(end)
}

fn pages(addr: u64, len: u64) -> Result<impl Iterator<Item = u64>, VmemError> {
    Ok((addr..range_end(addr, len)?).step_by(PAGE as usize))
}

/// Reserves `len` bytes of address space: nothing is mapped yet.
/// Ranges of a block or more start on a block boundary, so that their
/// memory can be mapped in whole blocks.
pub fn reserve(len: u64) -> Result<u64, VmemError> {
    let len = len.checked_next_multiple_of(PAGE).ok_or(VmemError::BadRange)?;
    let align = if len >= BLOCK { BLOCK } else { PAGE };
    let start = |next: u64| next.checked_next_multiple_of(align);
    let previous = NEXT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            start(next)?.checked_add(len).filter(|end| *end <= REGION_END)
        })
        .map_err(|_| VmemError::Exhausted)?;
    start(previous).ok_or(VmemError::Exhausted)
}

/// Sets the access of every page in the range; a page without a frame gets
/// a zeroed one unless `access` is `None`. A page's contents survive a
/// change of access, as with mprotect. Where the range covers an aligned
/// 2 MiB block with nothing mapped in it yet, the block is mapped whole:
/// under PVM every page the guest touches first costs a fault, and a 2 MiB
/// mapping (over RAM the host backs with huge pages) costs one instead of
/// 512.
pub fn protect(addr: u64, len: u64, access: Access) -> Result<(), VmemError> {
    let end = range_end(addr, len)?;
    let mut flush = false;
    let mut page = addr;
    while page < end {
        let whole_block = page.is_multiple_of(BLOCK) && end - page >= BLOCK;
        match paging::lookup(page) {
            Lookup::Block { frame } if whole_block => {
                flush |= paging::set_block(page, frame, access);
                page += BLOCK;
            }
            Lookup::Block { frame } => split(page, frame),
            Lookup::Unmapped { span } if access == Access::None => page = next_boundary(page, span),
            // A block needs 2 MiB of contiguous, aligned heap; on a heap too
            // fragmented for that, pages do.
            Lookup::Unmapped { .. } if whole_block => match crate::memory::try_alloc_zeroed(frames_layout(BLOCK)) {
                Some(frames) => {
                    paging::set_block(page, frames, access);
                    page += BLOCK;
                }
                None => {
                    paging::set_page(page, zeroed_frame(), access);
                    page += PAGE;
                }
            },
            Lookup::Page { frame: None } if access == Access::None => page += PAGE,
            Lookup::Page { frame: Some(frame) } => {
                flush |= paging::set_page(page, frame, access);
                page += PAGE;
            }
            Lookup::Unmapped { .. } | Lookup::Page { frame: None } => {
                paging::set_page(page, zeroed_frame(), access);
                page += PAGE;
            }
        }
    }
    if flush {
        paging::flush_all();
    }
    Ok(())
}

/// Maps `len` bytes of identity-mapped RAM from `phys` once more, here,
/// with `access`: a view without the identity map's write permission. The
/// frames stay their owner's, so the view must never be released.
pub fn alias(phys: u64, len: u64, access: Access) -> Result<u64, VmemError> {
    if !phys.is_multiple_of(PAGE) {
        return Err(VmemError::BadRange);
    }
    let addr = reserve(len)?;
    for (page, frame) in pages(addr, len.next_multiple_of(PAGE))?.zip((phys..).step_by(PAGE as usize)) {
        paging::set_page(page, frame, access);
    }
    Ok(addr)
}

/// Gives every frame in the range back to the heap; the range stays
/// reserved and faults on any access.
pub fn release(addr: u64, len: u64) -> Result<(), VmemError> {
    let end = range_end(addr, len)?;
    let mut flush = false;
    let mut page = addr;
    while page < end {
        match paging::lookup(page) {
            Lookup::Unmapped { span } => page = next_boundary(page, span),
            Lookup::Block { .. } if page.is_multiple_of(BLOCK) && end - page >= BLOCK => {
                if let Some(frame) = paging::clear_block(page) {
                    free_frames(frame, BLOCK);
                }
                flush = true;
                page += BLOCK;
            }
            Lookup::Block { frame } => split(page, frame),
            Lookup::Page { .. } => {
                if let Some(frame) = paging::clear_page(page) {
                    free_page(frame);
                    flush = true;
                }
                page += PAGE;
            }
        }
    }
    if flush {
        paging::flush_all();
    }
    Ok(())
}

/// The first address past the aligned block of `span` bytes holding `addr`.
fn next_boundary(addr: u64, span: u64) -> u64 {
    (addr | (span - 1)) + 1
}

/// 2 MiB frames split into pages (`paging::split_block`), each with the
/// count of its pages still mapped: the heap gave it as one allocation and
/// takes it back as one, when the last page goes.
static SPLIT: SpinLock<BTreeMap<u64, u32>> = SpinLock::new(BTreeMap::new());

/// Splits the block holding `addr`, whose frame is `frame`, into pages.
fn split(addr: u64, frame: u64) {
    paging::split_block(addr & !(BLOCK - 1));
    SPLIT.with(|blocks| blocks.insert(frame, (BLOCK / PAGE) as u32));
    // The new table maps the same frames with the same access, so no
    // cached translation is wrong: the next operation on a page decides.
}

fn free_page(frame: u64) {
    let block = frame & !(BLOCK - 1);
    // How many pages of its split block are left, if the page has one.
    let left = SPLIT.with(|blocks| {
        let mapped = blocks.get_mut(&block)?;
        *mapped -= 1;
        let left = *mapped;
        if left == 0 {
            blocks.remove(&block);
        }
        Some(left)
    });
    match left {
        None => free_frames(frame, PAGE),
        Some(0) => free_frames(block, BLOCK),
        Some(_) => {}
    }
}

fn frames_layout(size: u64) -> Layout {
    Layout::from_size_align(size as usize, size as usize).expect("a page or a block")
}

fn free_frames(frames: u64, size: u64) {
    // SAFETY: every frame vmem maps came from the heap with this size and
    // alignment (a split block is freed whole, by `free_page`), and nothing
    // maps it any more. `alias` views map frames vmem does not own, and are
    // never released (see `alias`).
    unsafe { dealloc(frames as *mut u8, frames_layout(size)) };
}
