//! Virtual memory above RAM, page by page: address ranges are reserved
//! (nothing mapped: any access faults), then pages in them get zeroed frames
//! from the heap and a protection. Linear memories live here (each a 4 GiB
//! reservation whose unmapped pages are its bounds checks), and the page
//! protections make out-of-bounds accesses fault instead of reading zeros.
//!
//! Frames come from the heap, so a job whose memories grow past the guest's
//! RAM ends as any other allocation failure does: "out of memory".

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::paging::{self, Access};

pub const PAGE: u64 = 4096;

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

fn frame_layout() -> Layout {
    Layout::from_size_align(PAGE as usize, PAGE as usize).expect("page layout")
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
pub fn reserve(len: u64) -> Result<u64, VmemError> {
    let len = len.checked_next_multiple_of(PAGE).ok_or(VmemError::BadRange)?;
    let addr = NEXT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            next.checked_add(len).filter(|end| *end <= REGION_END)
        })
        .map_err(|_| VmemError::Exhausted)?;
    Ok(addr)
}

/// The pages of the range that may have a frame: blocks with no page
/// tables at all are skipped whole.
fn maybe_mapped(addr: u64, len: u64) -> Result<impl Iterator<Item = u64>, VmemError> {
    let end = range_end(addr, len)?;
    let mut next = addr;
    Ok(core::iter::from_fn(move || {
        while next < end {
            let page = next;
            match paging::unmapped_span(page) {
                0 => {
                    next += PAGE;
                    return Some(page);
                }
                span => next = (page | (span - 1)) + 1,
            }
        }
        None
    }))
}

/// Sets the access of every page in the range; a page without a frame gets
/// a zeroed one unless `access` is `None`. A page's contents survive a
/// change of access, as with mprotect.
pub fn protect(addr: u64, len: u64, access: Access) -> Result<(), VmemError> {
    let mut flush = false;
    if access == Access::None {
        for page in maybe_mapped(addr, len)? {
            if let Some(frame) = paging::frame(page) {
                flush |= paging::set_page(page, frame, access);
            }
        }
    } else {
        for page in pages(addr, len)? {
            let frame = paging::frame(page).unwrap_or_else(new_frame);
            flush |= paging::set_page(page, frame, access);
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

/// Gives every page in the range back to the heap; the range stays
/// reserved and faults on any access.
pub fn release(addr: u64, len: u64) -> Result<(), VmemError> {
    let mut flush = false;
    for page in maybe_mapped(addr, len)? {
        if let Some(frame) = paging::clear_page(page) {
            // SAFETY: every frame in these tables came from `new_frame`, and
            // its page no longer maps it.
            unsafe { dealloc(frame as *mut u8, frame_layout()) };
            flush = true;
        }
    }
    if flush {
        paging::flush_all();
    }
    Ok(())
}

/// A zeroed frame from the heap. The heap's own failure path ends the job
/// as out of memory, so this never returns without one.
fn new_frame() -> u64 {
    // SAFETY: a non-zero layout.
    let frame = unsafe { alloc_zeroed(frame_layout()) };
    if frame.is_null() {
        alloc::alloc::handle_alloc_error(frame_layout());
    }
    frame as u64
}
