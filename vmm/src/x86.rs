//! Putting the boot vCPU straight into 64-bit long mode, as Firecracker and
//! Cloud Hypervisor do for the Linux 64-bit boot protocol: a GDT with
//! __BOOT_CS (0x10) and __BOOT_DS (0x18), an empty IDT (so any early fault
//! ends in a triple fault the VMM reports), identity-mapped page tables, and
//! the long-mode control registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK_TOP, PDPT, PD_BASE, PD_COUNT, PML4, ZERO_PAGE};

#[derive(Debug, thiserror::Error)]
pub enum X86Error {
    #[error("cannot write the boot {0} to guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error("cannot set vCPU {index} {what}")]
    Vcpu {
        index: u64,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A segment descriptor's access byte and flags nibble (G, D/B, L, AVL).
#[derive(Clone, Copy)]
struct Descriptor {
    access: u8,
    flags: u8,
}

const CODE64: Descriptor = Descriptor { access: 0x9b, flags: 0xa }; // present, DPL 0, code RX accessed; G, L
const DATA: Descriptor = Descriptor { access: 0x93, flags: 0xc }; // present, DPL 0, data RW accessed; G, D/B
const TSS64: Descriptor = Descriptor { access: 0x8b, flags: 0x8 }; // present, busy 64-bit TSS; G

/// Selector index of each GDT entry (0 and 1 are null, as in Linux's boot GDT).
const CODE_INDEX: u16 = 2;
const DATA_INDEX: u16 = 3;
const TSS_INDEX: u16 = 4;
const GDT_ENTRIES: usize = 5;

impl Descriptor {
    /// The 8-byte GDT entry for base 0 and the 4 GiB limit.
    fn encode(self) -> u64 {
        let limit: u64 = 0xfffff;
        (limit & 0xffff) | (u64::from(self.access) << 40) | ((limit >> 16) << 48) | (u64::from(self.flags) << 52)
    }

    /// The same segment as KVM wants it in the hidden segment registers.
    fn segment(self, index: u16) -> kvm_segment {
        let present = self.access >> 7;
        kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: index * 8,
            type_: self.access & 0xf,
            present,
            dpl: (self.access >> 5) & 3,
            db: (self.flags >> 2) & 1,
            s: (self.access >> 4) & 1,
            l: (self.flags >> 1) & 1,
            g: (self.flags >> 3) & 1,
            avl: self.flags & 1,
            unusable: u8::from(present == 0),
            padding: 0,
        }
    }
}

fn gdt() -> [u64; GDT_ENTRIES] {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[usize::from(CODE_INDEX)] = CODE64.encode();
    gdt[usize::from(DATA_INDEX)] = DATA.encode();
    gdt[usize::from(TSS_INDEX)] = TSS64.encode();
    gdt
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_HUGE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;

/// The boot page tables: the low 4 GiB identity-mapped with 2 MiB pages.
/// `extra` is ORed into every entry (the PVM seam's U/S bit).
fn page_tables(extra: u64) -> Vec<(u64, u64)> {
    let flags = PTE_PRESENT | PTE_WRITABLE | extra;
    let mut entries = vec![(PML4, PDPT | flags)];
    for pd in 0..PD_COUNT {
        let pd_addr = PD_BASE + pd * 0x1000;
        entries.push((PDPT + pd * 8, pd_addr | flags));
        for i in 0..512 {
            entries.push((pd_addr + i * 8, ((pd * 512 + i) * PAGE_2M) | flags | PDE_HUGE));
        }
    }
    entries
}

/// Writes the GDT, the (empty) IDT and the page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap, page_table_extra: u64) -> Result<(), X86Error> {
    for (i, entry) in gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT + i as u64 * 8)).map_err(|e| X86Error::GuestWrite("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT)).map_err(|e| X86Error::GuestWrite("IDT", e))?;
    for (addr, entry) in page_tables(page_table_extra) {
        mem.write_obj(entry, GuestAddress(addr)).map_err(|e| X86Error::GuestWrite("page tables", e))?;
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Long mode with SSE usable (the compiler emits it freely).
fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = CODE64.segment(CODE_INDEX);
    let data = DATA.segment(DATA_INDEX);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = TSS64.segment(TSS_INDEX);
    sregs.ldt = kvm_segment::default();
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cr0 = CR0_PG | CR0_AM | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE;
    sregs.cr3 = PML4;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_NXE | EFER_LMA | EFER_LME | EFER_SCE;
    sregs
}

/// RFLAGS bit 1 is reserved and always set; interrupts start disabled.
const RFLAGS_BOOT: u64 = 0x2;

/// Sets the boot vCPU's registers for the 64-bit entry at `entry`, RSI
/// pointing at the zero page.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, index: u64, entry: GuestAddress) -> Result<(), X86Error> {
    let err = |what| move |source| X86Error::Vcpu { index, what, source };
    let sregs = vcpu.get_sregs().map_err(err("special registers"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs)).map_err(err("special registers"))?;
    let regs = kvm_regs {
        rip: entry.0,
        rsi: ZERO_PAGE,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rflags: RFLAGS_BOOT,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("registers"))?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(err("FPU state"))
}

/// Gives each vCPU the host's supported CPUID with its own APIC ID.
pub fn setup_cpuid(vcpu: &VcpuFd, index: u64, supported: &CpuId) -> Result<(), X86Error> {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | ((index as u32) << 24),
            0xb | 0x1f => entry.edx = index as u32,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|source| X86Error::Vcpu { index, what: "CPUID", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_linux_boot_gdt() {
        let gdt = gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0);
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[4], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_for_kvm() {
        let cs = CODE64.segment(CODE_INDEX);
        assert_eq!((cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.present, cs.dpl, cs.s), (0x10, 0xb, 1, 0, 1, 1, 0, 1));
        let ds = DATA.segment(DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.l, ds.db, ds.g), (0x18, 3, 0, 1, 1));
        let tr = TSS64.segment(TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (0x20, 0xb, 0, 1));
    }

    #[test]
    fn long_mode_control_registers_match_the_pvm_recipe() {
        let sregs = long_mode_sregs(kvm_sregs::default());
        assert_eq!(sregs.cr0, 0x8005_0033);
        assert_eq!(sregs.cr4, 0x620);
        assert_eq!(sregs.efer, 0xd01);
        assert_eq!(sregs.cr3, PML4);
    }

    #[test]
    fn page_tables_identity_map_4gib_with_extra_bits() {
        let tables = page_tables(4);
        let lookup = |addr: u64| tables.iter().find(|(a, _)| *a == addr).unwrap().1;
        assert_eq!(lookup(PML4), PDPT | 0x7);
        assert_eq!(lookup(PDPT + 3 * 8), (PD_BASE + 0x3000) | 0x7);
        // 0x20_0000 (the tiny guest) is the second 2 MiB page of the first PD.
        assert_eq!(lookup(PD_BASE + 8), 0x20_0000 | 0x87);
        // The last 2 MiB page below 4 GiB.
        assert_eq!(lookup(PD_BASE + 3 * 0x1000 + 511 * 8), 0xffe0_0000 | 0x87);
        assert_eq!(page_tables(0)[0].1 & 4, 0);
    }
}
