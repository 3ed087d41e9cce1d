//! The guest's own page tables: all RAM identity-mapped with 2 MiB pages,
//! except the first 2 MiB and the 2 MiB around the boot stack, which get
//! 4 KiB pages so that the page at 0 (null) and the page below the stack (a
//! guard) can stay unmapped. Above RAM, 4 KiB pages and 2 MiB blocks mapped
//! one by one with their own access (see vmem.rs). Under PVM every entry
//! carries the U/S bit, as the VMM's boot tables do (see pvm.rs).

use core::arch::asm;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::Frames;

/// The root table and the entry flags, for mappings added after boot.
static PML4: AtomicU64 = AtomicU64::new(0);
static FLAGS: AtomicU64 = AtomicU64::new(0);

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
/// Honoured because the VMM sets EFER.NXE.
const NO_EXECUTE: u64 = 1 << 63;
pub const PAGE: u64 = 4096;
const HUGE_PAGE: u64 = 2 << 20;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

extern "C" {
    static __stack_guard: u8;
    static __boot_stack_bottom: u8;
    static __boot_stack_top: u8;
}

fn guard_page() -> u64 {
    addr_of!(__stack_guard) as u64
}

/// Whether `addr` falls in the unmapped page below the boot stack.
pub fn is_stack_guard(addr: u64) -> bool {
    (guard_page()..guard_page() + PAGE).contains(&addr)
}

/// Whether `len` bytes at `addr` lie inside the boot stack or the
/// double-fault stack.
pub fn on_a_stack(addr: u64, len: u64) -> bool {
    let boot = (addr_of!(__boot_stack_bottom) as u64, addr_of!(__boot_stack_top) as u64);
    let double_fault = crate::gdt::double_fault_stack();
    let end = addr.saturating_add(len);
    [boot, double_fault].iter().any(|&(bottom, top)| addr >= bottom && end <= top)
}

/// # Safety
/// `table` must be an identity-mapped page-table frame.
unsafe fn entry(table: u64, index: u64) -> *mut u64 {
    (table + index * 8) as *mut u64
}

/// The table an entry points to, made (zeroed, from `new_table`) if the
/// entry is empty.
///
/// # Safety
/// `table` must be an identity-mapped page-table frame, and `new_table` must
/// return zeroed, identity-mapped frames for this use alone.
unsafe fn next_table(new_table: &mut dyn FnMut() -> u64, table: u64, index: u64, flags: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    let slot = unsafe { entry(table, index) };
    // SAFETY: `slot` is inside the table frame.
    let current = unsafe { *slot };
    if current & PRESENT != 0 {
        return current & ADDR_MASK;
    }
    let frame = new_table();
    // SAFETY: as above.
    unsafe { *slot = frame | flags };
    frame
}

pub fn init(frames: &mut Frames, ram_top: u64, pvm: bool) {
    let flags = PRESENT | WRITABLE | if pvm { USER } else { 0 };
    let new_table = &mut || frames.alloc_zeroed().expect("no memory left for page tables");
    let pml4 = new_table();
    // Left unmapped: the page below the boot stack, and the page at 0, so
    // that a null pointer (plus a small offset) faults. wasmtime's compiled
    // code relies on that: a call through a null funcref, or through a table
    // slot its bounds check replaced with null, must fault, not read RAM.
    let holes = [guard_page(), 0];
    let mut addr = 0;
    while addr < ram_top {
        // SAFETY: every table comes from `frames`, identity-mapped RAM the
        // allocator handed out for this use alone.
        unsafe {
            let pdpt = next_table(new_table, pml4, (addr >> 39) & 511, flags);
            let pd = next_table(new_table, pdpt, (addr >> 30) & 511, flags);
            if holes.iter().any(|hole| hole & !(HUGE_PAGE - 1) == addr) {
                let pt = next_table(new_table, pd, (addr >> 21) & 511, flags);
                for i in 0..512 {
                    let page = addr + i * PAGE;
                    *entry(pt, i) = if holes.contains(&page) { 0 } else { page | flags };
                }
            } else {
                *entry(pd, (addr >> 21) & 511) = addr | flags | HUGE;
            }
        }
        addr += HUGE_PAGE;
    }
    PML4.store(pml4, Ordering::Relaxed);
    FLAGS.store(flags, Ordering::Relaxed);
    // SAFETY: the new tables map all RAM, this code and the stack in use at
    // the same addresses as the boot tables, so execution continues.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// A zeroed page-table frame from the heap, for tables made after boot;
/// it lives as long as the mapping.
fn heap_table() -> u64 {
    crate::memory::zeroed_frame()
}

/// Identity-maps a device's MMIO window (2 MiB pages, tables from the heap).
pub fn map_device(base: u64, size: u64) {
    let (pml4, flags) = (PML4.load(Ordering::Relaxed), FLAGS.load(Ordering::Relaxed));
    let mut addr = base & !(HUGE_PAGE - 1);
    while addr < base.saturating_add(size) {
        // SAFETY: the tables are the live ones or new heap pages, all
        // identity-mapped; a 2 MiB entry is written only where none is.
        unsafe {
            let pdpt = next_table(&mut heap_table, pml4, (addr >> 39) & 511, flags);
            let pd = next_table(&mut heap_table, pdpt, (addr >> 30) & 511, flags);
            let slot = entry(pd, (addr >> 21) & 511);
            if *slot & PRESENT == 0 {
                *slot = addr | flags | HUGE;
            }
        }
        addr += HUGE_PAGE;
    }
    flush_all();
}

/// Drops every cached translation. One reload of CR3 is one exit under
/// PVM, where each `invlpg` would be one too: callers batch their changes.
pub fn flush_all() {
    let pml4 = PML4.load(Ordering::Relaxed);
    // SAFETY: reloading the live root changes no mapping.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// How a page or block above RAM may be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Not at all: any access faults, the frame (if any) is kept.
    None,
    Read,
    ReadWrite,
    ReadExecute,
}

/// What maps an address above RAM, where the boot tables map nothing and
/// vmem.rs maps 4 KiB pages and 2 MiB blocks.
pub enum Lookup {
    /// No page tables at all for the aligned block of `span` bytes (512 GiB,
    /// 1 GiB or 2 MiB) around the address.
    Unmapped { span: u64 },
    /// A 4 KiB page, with its frame if it has one.
    Page { frame: Option<u64> },
    /// A 2 MiB block and its frame (kept while its access is `None`).
    Block { frame: u64 },
}

pub const BLOCK: u64 = HUGE_PAGE;

/// The page-directory entry (2 MiB) for `addr`, made with its tables when
/// `create`; None when a table on the way is missing and not `create`.
fn directory_entry(addr: u64, create: bool) -> Option<*mut u64> {
    let (mut table, flags) = (PML4.load(Ordering::Relaxed), FLAGS.load(Ordering::Relaxed));
    for shift in [39, 30] {
        let index = (addr >> shift) & 511;
        // SAFETY: `table` is a live identity-mapped table; above RAM, only
        // directory entries are ever blocks.
        table = unsafe {
            if *entry(table, index) & PRESENT == 0 && !create {
                return None;
            }
            next_table(&mut heap_table, table, index, flags)
        };
    }
    // SAFETY: `table` is a live page directory.
    Some(unsafe { entry(table, (addr >> 21) & 511) })
}

/// The last-level entry for `addr`, made with its tables when `create`.
/// Never inside a block: those are split first.
fn leaf(addr: u64, create: bool) -> Option<*mut u64> {
    let directory = directory_entry(addr, create)?;
    // SAFETY: a live directory entry: a table, nothing, or (never here, see
    // above) a block.
    unsafe {
        // A block's frame taken for a table would be written as one.
        assert!(*directory & HUGE == 0, "a 4 KiB page inside a 2 MiB block");
        if *directory & PRESENT == 0 {
            if !create {
                return None;
            }
            *directory = heap_table() | FLAGS.load(Ordering::Relaxed);
        }
        Some(entry(*directory & ADDR_MASK, (addr >> 12) & 511))
    }
}

pub fn lookup(addr: u64) -> Lookup {
    let mut table = PML4.load(Ordering::Relaxed);
    for shift in [39, 30, 21] {
        // SAFETY: `table` is a live identity-mapped table.
        let pte = unsafe { *entry(table, (addr >> shift) & 511) };
        if shift == 21 && pte & HUGE != 0 {
            return Lookup::Block { frame: pte & ADDR_MASK };
        }
        if pte & PRESENT == 0 {
            return Lookup::Unmapped { span: 1 << shift };
        }
        table = pte & ADDR_MASK;
    }
    // SAFETY: `table` is a live last-level table.
    let pte = unsafe { *entry(table, (addr >> 12) & 511) };
    Lookup::Page { frame: (pte & ADDR_MASK != 0).then_some(pte & ADDR_MASK) }
}

fn access_bits(access: Access) -> u64 {
    let flags = FLAGS.load(Ordering::Relaxed) & !WRITABLE;
    match access {
        Access::None => 0,
        Access::Read => flags | NO_EXECUTE,
        Access::ReadWrite => flags | WRITABLE | NO_EXECUTE,
        Access::ReadExecute => flags,
    }
}

/// Writes `value` to `slot` and says whether the old entry was present, so
/// that a translation the CPU may have cached changed (then `flush_all` is
/// due).
///
/// # Safety
/// `slot` must be a live entry for an address above RAM, which nothing but
/// vmem.rs maps.
unsafe fn replace(slot: *mut u64, value: u64) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::replace(slot, value) & PRESENT != 0 }
}

/// Points the page at `addr` to `frame` with `access`; true when a
/// flush is due.
pub fn set_page(addr: u64, frame: u64, access: Access) -> bool {
    let slot = leaf(addr, true).expect("tables are made on demand");
    // SAFETY: a last-level entry above RAM.
    unsafe { replace(slot, (frame & ADDR_MASK) | access_bits(access)) }
}

/// Points the 2 MiB block at `addr` (aligned, with no table under it) to
/// the 2 MiB frame `frame` with `access`; true when a flush is due. The
/// block keeps its HUGE bit while not present, so that `lookup` still
/// knows it for one.
pub fn set_block(addr: u64, frame: u64, access: Access) -> bool {
    let slot = directory_entry(addr, true).expect("tables are made on demand");
    // SAFETY: a live directory entry.
    let current = unsafe { *slot };
    // A table there (pages, or a split block) would be lost with its frames.
    assert!(current & PRESENT == 0 || current & HUGE != 0, "a 2 MiB block over a page table");
    // SAFETY: a directory entry above RAM: empty or a block, never a table
    // (vmem.rs maps a block only where `lookup` found none).
    unsafe { replace(slot, (frame & ADDR_MASK) | access_bits(access) | HUGE) }
}

/// Unmaps the page at `addr` and returns its frame, if it had one.
pub fn clear_page(addr: u64) -> Option<u64> {
    let slot = leaf(addr, false)?;
    // SAFETY: as in `set_page`.
    let pte = unsafe { core::ptr::replace(slot, 0) };
    (pte & ADDR_MASK != 0).then_some(pte & ADDR_MASK)
}

/// Unmaps the block at `addr` and returns its frame.
pub fn clear_block(addr: u64) -> Option<u64> {
    let slot = directory_entry(addr, false)?;
    // SAFETY: as in `set_block`.
    let pde = unsafe { core::ptr::replace(slot, 0) };
    (pde & HUGE != 0).then_some(pde & ADDR_MASK)
}

/// Turns the block at `addr` into 512 pages with the same frames and
/// access, so that part of it can change.
pub fn split_block(addr: u64) {
    let slot = directory_entry(addr, false).expect("a block to split");
    // SAFETY: a directory entry above RAM holding a block; the new table
    // maps the same frames with the same bits before it replaces the block.
    unsafe {
        let block = *slot;
        debug_assert!(block & HUGE != 0);
        let table = heap_table();
        for i in 0..512 {
            *entry(table, i) = ((block & ADDR_MASK) + i * PAGE) | (block & !(ADDR_MASK | HUGE));
        }
        let flags = FLAGS.load(Ordering::Relaxed);
        *slot = table | flags;
    }
}
