//! Where things live in guest-physical memory at boot.
//!
//! Below 1 MiB, as Firecracker and Cloud Hypervisor lay it out: the GDT and an
//! empty IDT, the zero page, the boot stack, the boot page tables and the
//! command line. The kernel loads at or above 1 MiB. RAM beyond 3 GiB
//! continues at 4 GiB, leaving [3 GiB, 4 GiB) for device MMIO.

pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x540;
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack (grows down towards the zero page's end at 0x8000).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
/// Four page directories of 2 MiB pages identity-map the low 4 GiB.
pub const PD_BASE: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
pub const CMDLINE: u64 = 0x20000;
/// Command-line capacity, terminating NUL included.
pub const CMDLINE_CAPACITY: usize = 4096;
/// Start of the Extended BIOS Data Area: usable low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

pub const MIB: u64 = 1 << 20;

/// The guest RAM ranges for a VM of `size` bytes: (start, length).
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

/// End of the RAM below the MMIO gap, where the kernel must fit.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_is_one_range() {
        assert_eq!(ram_ranges(64 * MIB), vec![(0, 64 * MIB)]);
        assert_eq!(low_ram_end(64 * MIB), 64 * MIB);
    }

    #[test]
    fn big_vm_skips_the_mmio_gap() {
        let ranges = ram_ranges(4096 * MIB);
        assert_eq!(ranges, vec![(0, 3072 * MIB), (4096 * MIB, 1024 * MIB)]);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 4096 * MIB);
        assert_eq!(low_ram_end(4096 * MIB), MMIO_GAP_START);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut regions = [
            (BOOT_GDT, BOOT_GDT + 5 * 8),
            (BOOT_IDT, BOOT_IDT + 8),
            (ZERO_PAGE, ZERO_PAGE + 0x1000),
            (BOOT_STACK_TOP - 0x800, BOOT_STACK_TOP),
            (PML4, PML4 + 0x1000),
            (PDPT, PDPT + 0x1000),
            (PD_BASE, PD_BASE + PD_COUNT * 0x1000),
            (CMDLINE, CMDLINE + CMDLINE_CAPACITY as u64),
        ];
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        assert!(regions.last().unwrap().1 <= EBDA_START);
    }
}
