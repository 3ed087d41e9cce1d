//! The parts of the Linux zero page (`struct boot_params`) the guest reads.
//! Offsets are those of Documentation/arch/x86/zero-page.rst.

const E820_ENTRIES: usize = 0x1e8;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const CMD_LINE_PTR: usize = 0x228;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const E820_ENTRY_SIZE: usize = 20;
const E820_RAM: u32 = 1;
/// Linux's COMMAND_LINE_SIZE is 2048; the VMM allows more, so read at most this.
const CMDLINE_MAX: usize = 4096;

pub struct BootInfo {
    /// Bytes of usable RAM in the e820 map.
    ram_bytes: u64,
    pub cmdline: &'static [u8],
}

impl BootInfo {
    /// # Safety
    /// `zero_page` must point to a boot_params page the VMM filled in, and the
    /// command line it points to must stay untouched for the guest's lifetime.
    pub unsafe fn read(zero_page: *const u8) -> BootInfo {
        // SAFETY: the caller guarantees a readable zero page (4 KiB), and every
        // offset below lies inside it.
        let (entries, cmdline_addr) = unsafe {
            let entries = read::<u8>(zero_page, E820_ENTRIES) as usize;
            let low = read::<u32>(zero_page, CMD_LINE_PTR) as u64;
            let high = read::<u32>(zero_page, EXT_CMD_LINE_PTR) as u64;
            (entries.min(E820_MAX), low | high << 32)
        };
        let mut ram_bytes = 0u64;
        for i in 0..entries {
            let at = E820_TABLE + i * E820_ENTRY_SIZE;
            // SAFETY: `entries` is capped at the table's 128 slots, all inside
            // the zero page.
            let (len, kind) = unsafe { (read::<u64>(zero_page, at + 8), read::<u32>(zero_page, at + 16)) };
            if kind == E820_RAM {
                ram_bytes = ram_bytes.saturating_add(len);
            }
        }
        let cmdline = if cmdline_addr == 0 {
            &[][..]
        } else {
            // SAFETY: the VMM wrote a NUL-terminated command line at this
            // identity-mapped address; the scan stops at CMDLINE_MAX.
            unsafe {
                let base = cmdline_addr as *const u8;
                let mut len = 0;
                while len < CMDLINE_MAX && *base.add(len) != 0 {
                    len += 1;
                }
                core::slice::from_raw_parts(base, len)
            }
        };
        BootInfo { ram_bytes, cmdline }
    }

    /// Usable RAM to the nearest MiB: the legacy hole below 1 MiB that the
    /// map leaves out is less than half a MiB, so this is the size the VMM
    /// was given.
    pub fn ram_mib(&self) -> u64 {
        (self.ram_bytes + (1 << 19)) >> 20
    }
}

/// # Safety
/// `base + offset` must be readable for `size_of::<T>()` bytes.
unsafe fn read<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: guaranteed by the caller; the zero page has no alignment promises.
    unsafe { core::ptr::read_unaligned(base.add(offset) as *const T) }
}
