//! Powering off through mvm's paravirtual exit port (see README.md).

use core::arch::asm;

use crate::port::outl;

const EXIT_PORT: u16 = 0x600;

#[repr(u32)]
enum Reason {
    Exit = 0,
    Panic = 1,
    Fault = 2,
    OutOfMemory = 3,
    Trap = 4,
}

/// What the VMM reads from the registers at a fault power-off.
pub struct FaultReport {
    pub vector: u8,
    pub rip: u64,
    pub error_code: u64,
    pub cr2: u64,
    pub stack_overflow: bool,
}

pub(crate) fn halt_forever() -> ! {
    // A VMM without the port: stop here rather than run on.
    loop {
        // SAFETY: halting with nothing left to do.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

fn power_off(reason: Reason, status: u8) -> ! {
    outl(EXIT_PORT, (reason as u32) << 8 | u32::from(status));
    halt_forever()
}

pub fn exit(status: u8) -> ! {
    power_off(Reason::Exit, status)
}

pub fn panic(status: u8) -> ! {
    power_off(Reason::Panic, status)
}

pub fn out_of_memory() -> ! {
    power_off(Reason::OutOfMemory, 0)
}

/// Reason "fault", status = the vector; RDI = faulting RIP, RSI = error
/// code, R8 = CR2, R9 bit 0 = stack overflow.
pub fn fault(report: FaultReport) -> ! {
    let value = (Reason::Fault as u32) << 8 | u32::from(report.vector);
    // SAFETY: the write ends the VM; the extra registers are only read by it.
    unsafe {
        asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") value, in("rdi") report.rip, in("rsi") report.error_code,
             in("r8") report.cr2, in("r9") u64::from(report.stack_overflow), options(nomem, nostack));
    }
    halt_forever()
}

/// Reason "trap": the job's WebAssembly module trapped. RDI and RSI give the
/// guest-physical address and length of the message (UTF-8), which the VMM
/// reads (at most 1 KiB of it).
pub fn trap(message: &str) -> ! {
    let value = (Reason::Trap as u32) << 8 | 1;
    // SAFETY: the write ends the VM; the message stays in place while the
    // VMM reads it (the guest never runs again).
    unsafe {
        asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") value, in("rdi") message.as_ptr() as u64,
             in("rsi") message.len() as u64, options(readonly, nostack));
    }
    halt_forever()
}
