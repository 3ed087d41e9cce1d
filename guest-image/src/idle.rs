//! Sleeping without interrupts: announce a deadline to the VMM, then `hlt`.
//!
//! Writing N to the wake-timer port 0x604 (32 bits) asks the VMM to resume
//! the vCPU N microseconds after the write if it halts; 0xffffffff cancels.
//! A halted vCPU costs the host no CPU: its thread blocks until the deadline,
//! a device completion, or the VM's end. Since the guest may be woken early,
//! it checks the clock and halts again until its own deadline has passed.

use core::arch::asm;

use crate::port::outl;
use crate::time::monotonic_ns;

pub(crate) const WAKE_TIMER_PORT: u16 = 0x604;
pub(crate) const WAKE_TIMER_CANCEL: u32 = u32::MAX;
const MAX_WAIT_US: u64 = u32::MAX as u64 - 1;

/// Halts once, until `deadline_ns` or an earlier wake-up (a device that
/// used buffers), whichever comes first.
pub fn halt_until(deadline_ns: u64) {
    let now = monotonic_ns();
    if now >= deadline_ns {
        return;
    }
    // Rounded up, so the vCPU never wakes before the deadline and spins.
    let wait_us = (deadline_ns - now).div_ceil(1000).min(MAX_WAIT_US);
    outl(WAKE_TIMER_PORT, wait_us as u32);
    // SAFETY: halting until the VMM resumes the vCPU.
    unsafe { asm!("hlt", options(nomem, nostack)) };
}

/// Sleeps until `deadline_ns`; returns how many halts it took (one, unless
/// something woke the vCPU early).
pub fn sleep_until(deadline_ns: u64) -> u64 {
    let mut halts = 0;
    while monotonic_ns() < deadline_ns {
        halt_until(deadline_ns);
        halts += 1;
    }
    halts
}

pub fn sleep_ns(ns: u64) -> u64 {
    sleep_until(monotonic_ns() + ns)
}
