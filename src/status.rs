//! mvm's exit statuses, and how the end of a VM run by `mvm boot` maps to
//! one (a job's ending is mapped in up.rs, with these same statuses).

use mvm_vmm::power::ExitReason;
use mvm_vmm::VmEnd;

pub const TRAP: u8 = 121;
pub const OUT_OF_MEMORY: u8 = 122;
pub const GUEST_CRASHED: u8 = 123;
pub const TIMEOUT: u8 = 124;
pub const MVM_ERROR: u8 = 125;

/// Says on stderr why the VM ended, unless the guest simply exited, and
/// gives mvm's exit status.
pub fn boot_report(end: &VmEnd) -> u8 {
    match end {
        VmEnd::PowerOff(exit) => {
            match exit.reason {
                ExitReason::Exit | ExitReason::Fault | ExitReason::OutOfMemory | ExitReason::Trap => {}
                ExitReason::Panic => eprintln!("mvm: guest panicked (status {})", exit.status),
                ExitReason::Unknown(code) => {
                    eprintln!("mvm: guest powered off with unknown reason {code} (status {})", exit.status)
                }
            }
            exit.status
        }
        VmEnd::Trap { message } => {
            eprintln!("mvm: trap: {message}");
            TRAP
        }
        VmEnd::OutOfMemory { ram_mib } => {
            eprintln!("mvm: guest out of memory (guest RAM {ram_mib} MiB)");
            OUT_OF_MEMORY
        }
        VmEnd::Reset => {
            eprintln!("mvm: guest asked for a reset; the VM was stopped");
            0
        }
        VmEnd::Crashed(crash) => {
            eprintln!("mvm: {crash}");
            if let Some(registers) = crash.registers() {
                eprintln!("mvm: {registers}");
            }
            GUEST_CRASHED
        }
        VmEnd::TimedOut(limit) => {
            eprintln!("mvm: timeout after {} s: the VM was stopped", limit.as_secs_f64());
            TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mvm_vmm::power::GuestExit;
    use mvm_vmm::{Crash, CrashKind};

    use super::*;

    /// README's table of `mvm boot` statuses, for every way a VM ends.
    #[test]
    fn every_vm_end_has_its_boot_status() {
        let exit = |reason, status| VmEnd::PowerOff(GuestExit { reason, status });
        let cases = [
            (exit(ExitReason::Exit, 42), 42),
            (exit(ExitReason::Panic, 101), 101),
            (exit(ExitReason::Fault, 7), 7),
            (exit(ExitReason::Unknown(9), 3), 3),
            (VmEnd::Trap { message: "unreachable".into() }, 121),
            (VmEnd::OutOfMemory { ram_mib: 16 }, 122),
            (VmEnd::Reset, 0),
            (VmEnd::Crashed(Crash { kind: CrashKind::TripleFault, vcpu: 0, state: None }), 123),
            (VmEnd::TimedOut(Duration::from_millis(1500)), 124),
        ];
        for (end, expected) in cases {
            assert_eq!(boot_report(&end), expected, "{end:?}");
        }
        assert_eq!(MVM_ERROR, 125);
    }
}
