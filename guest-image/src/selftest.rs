//! Guest behaviours the integration tests ask for with `mvm.test=<name>`, to
//! check that the VMM reports each way a guest can end.

use core::arch::asm;

pub fn run(name: &[u8]) {
    match name {
        b"panic" => panic!("self-test panic requested on the command line"),
        // The VMM's boot IDT is empty, so #UD escalates to a triple fault.
        // SAFETY: deliberately faulting; nothing runs after it.
        b"triple-fault" => unsafe { asm!("ud2", options(nomem, nostack, noreturn)) },
        b"spin" => loop {
            core::hint::spin_loop();
        },
        other => panic!("mvm.test={}: unknown self-test", crate::cmdline::Display(other)),
    }
}
