//! Everything the guest does differently under PVM, in one place.
//!
//! On a PVM host (software virtualization on shadow page tables) the vCPU
//! starts in emulated mode: every instruction goes through KVM's emulator.
//! Writing the guest-physical address of a free page to MSR 0x4b564d10 moves
//! the vCPU to PVM mode, where it runs natively at CPL 3 with our ring-0 view
//! intact. The VMM signals a PVM host by putting `mvm.pvm=1` first on the
//! command line (the early check reads only those 9 bytes, since each
//! instruction before the switch costs an emulation round trip). On ordinary
//! KVM the token is absent and the MSR, which does not exist there, is never
//! touched.

use core::arch::{asm, global_asm};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hardware virtualization (VMX/SVM): ring 0, native speed.
    Native,
    /// PVM host, switched: CPL 3 underneath, native speed.
    Pvm,
    /// PVM host, but the switch did not take: every instruction is emulated.
    Emulated,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Pvm => "pvm",
            Mode::Emulated => "emulated",
        }
    }
}

/// The page handed to the host. It lives outside the BSS, which is cleared
/// after the switch.
#[repr(C, align(4096))]
struct PvmPage([u8; 4096]);

#[used]
#[link_section = ".pvm_page"]
static mut PVM_PAGE: PvmPage = PvmPage([0; 4096]);

// Called from `_start` with R15 = boot params and a stack; clobbers RAX, RCX,
// RDX. The zero page's `cmd_line_ptr` is at offset 0x228.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global pvm_early_switch
pvm_early_switch:
    mov eax, dword ptr [r15 + 0x228]
    mov rdx, qword ptr [rax]
    movabs rcx, 0x3d6d76702e6d766d
    cmp rdx, rcx
    jne 1f
    cmp byte ptr [rax + 8], 0x31
    jne 1f
    lea rax, [rip + {page}]
    xor edx, edx
    mov ecx, 0x4b564d10
    wrmsr
1:
    ret
"#,
    page = sym PVM_PAGE,
);

/// What the early switch achieved, given whether the VMM asked for it: under
/// PVM the code segment's RPL reads 3 once the vCPU runs natively.
pub fn confirm_mode(requested: bool) -> Mode {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let switched = cs & 3 == 3;
    match (requested, switched) {
        (_, true) => Mode::Pvm,
        (true, false) => Mode::Emulated,
        (false, false) => Mode::Native,
    }
}
