//! Powering off through mvm's paravirtual exit port (see README.md).

use core::arch::asm;

const EXIT_PORT: u16 = 0x600;

#[repr(u32)]
pub enum Reason {
    Exit = 0,
    Panic = 1,
}

fn power_off(reason: Reason, status: u8) -> ! {
    let value = (reason as u32) << 8 | u32::from(status);
    // SAFETY: the write ends the VM; nothing in the guest depends on it.
    unsafe { asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") value, options(nomem, nostack)) };
    // A VMM without the port: stop here rather than run on.
    loop {
        // SAFETY: halting with nothing left to do.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

pub fn exit(status: u8) -> ! {
    power_off(Reason::Exit, status)
}

pub fn panic(status: u8) -> ! {
    power_off(Reason::Panic, status)
}
