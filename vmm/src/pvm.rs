//! Everything PVM-specific on the host side, behind one seam.
//!
//! On a kvm-pvm host a guest runs natively only after it writes a page's
//! address to MSR 0x4b564d10, and only if every level of its page tables has
//! the U/S bit set (shared/pvm-notes.md has the measurements). The VMM
//! detects such a host, builds its boot page tables with U/S, and tells the
//! guest by putting [`CMDLINE_TOKEN`] first on its command line, where the
//! tiny guest's entry code checks 9 bytes before doing anything else (every
//! instruction before the switch is emulated). On VMX/SVM nothing changes.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::host::HostKind;

/// Read-only PVM MSR that returns "PVM" (0x4d5650) on a PVM host.
const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
const PVM_SIGNATURE: u64 = 0x4d_5650;

/// First word of the guest command line on a PVM host.
pub const CMDLINE_TOKEN: &str = "mvm.pvm=1";

/// Page-table entry bit that PVM needs at every level.
const PTE_USER: u64 = 1 << 2;

/// Reads the PVM signature MSR through `vcpu`; any other KVM refuses the
/// unknown MSR (KVM_GET_MSRS returns 0 entries) or returns something else.
pub fn detect(vcpu: &VcpuFd) -> HostKind {
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry { index: MSR_PVM_SIGNATURE, ..Default::default() }]) else {
        return HostKind::Hardware;
    };
    match vcpu.get_msrs(&mut msrs) {
        Ok(1) if msrs.as_slice()[0].data == PVM_SIGNATURE => HostKind::Pvm,
        _ => HostKind::Hardware,
    }
}

/// Extra bits for every entry of the boot page tables.
pub fn page_table_flags(kind: HostKind) -> u64 {
    match kind {
        HostKind::Pvm => PTE_USER,
        HostKind::Hardware => 0,
    }
}

/// The command line the guest sees: the token first on a PVM host.
pub fn guest_cmdline(kind: HostKind, cmdline: &str) -> String {
    match (kind, cmdline.is_empty()) {
        (HostKind::Hardware, _) => cmdline.to_string(),
        (HostKind::Pvm, true) => CMDLINE_TOKEN.to_string(),
        (HostKind::Pvm, false) => format!("{CMDLINE_TOKEN} {cmdline}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_first_only_on_pvm() {
        assert_eq!(guest_cmdline(HostKind::Pvm, "mvm.exit=3"), "mvm.pvm=1 mvm.exit=3");
        assert_eq!(guest_cmdline(HostKind::Pvm, ""), "mvm.pvm=1");
        assert_eq!(guest_cmdline(HostKind::Hardware, "mvm.exit=3"), "mvm.exit=3");
        assert_eq!(page_table_flags(HostKind::Hardware), 0);
        assert_eq!(page_table_flags(HostKind::Pvm), 4);
    }
}
