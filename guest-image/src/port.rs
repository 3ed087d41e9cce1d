//! x86 port I/O. Every access is a VM exit (~19 µs under PVM): callers batch.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no guest memory.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no guest memory.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O touches no guest memory.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O touches no guest memory.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags)) };
    value
}
