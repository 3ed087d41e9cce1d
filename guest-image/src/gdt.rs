//! The guest's own GDT and TSS. The selectors stay those of the VMM's boot
//! GDT (code 0x10, data 0x18), so no segment reload is needed; the TSS adds
//! an interrupt stack (IST1) on which a double fault runs even when the
//! kernel stack is gone (a stack overflow into the guard page).

use core::arch::asm;
use core::mem::size_of;
use core::ptr::addr_of;

pub const KERNEL_CS: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x20;
/// The interrupt stack table slot of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 1;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // No I/O permission bitmap.
    iomap_base: size_of::<Tss>() as u16,
};
static mut GDT: [u64; 6] = [0; 6];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// The double-fault stack's bounds, for the backtrace's sanity checks.
pub fn double_fault_stack() -> (u64, u64) {
    let bottom = addr_of!(DOUBLE_FAULT_STACK) as u64;
    (bottom, bottom + IST_STACK_SIZE as u64)
}

pub fn init() {
    let tss = addr_of!(TSS) as u64;
    let limit = size_of::<Tss>() as u64 - 1;
    // SAFETY: single-threaded boot code: nothing else touches these statics,
    // and the GDT and TSS live for the guest's lifetime as the CPU requires.
    unsafe {
        TSS.ist[usize::from(DOUBLE_FAULT_IST) - 1] = double_fault_stack().1;
        GDT[2] = 0x00af_9b00_0000_ffff; // 64-bit code, DPL 0
        GDT[3] = 0x00cf_9300_0000_ffff; // data, DPL 0
                                        // A 64-bit available TSS takes two slots.
        GDT[4] = (limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss >> 24) & 0xff) << 56);
        GDT[5] = tss >> 32;
        let pointer = Pointer { limit: (size_of::<[u64; 6]>() - 1) as u16, base: addr_of!(GDT) as u64 };
        asm!("lgdt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags));
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nomem, nostack, preserves_flags));
    }
}
