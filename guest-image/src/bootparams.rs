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

/// More RAM ranges than the VMM ever makes; extra ones are ignored.
const RAM_RANGES_MAX: usize = 32;

#[derive(Clone, Copy)]
pub struct MemoryRange {
    pub start: u64,
    pub len: u64,
}

pub struct BootInfo {
    ram: [MemoryRange; RAM_RANGES_MAX],
    ram_count: usize,
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
        let mut ram = [MemoryRange { start: 0, len: 0 }; RAM_RANGES_MAX];
        let mut ram_count = 0;
        for i in 0..entries {
            let at = E820_TABLE + i * E820_ENTRY_SIZE;
            // SAFETY: `entries` is capped at the table's 128 slots, all inside
            // the zero page.
            let (start, len, kind) = unsafe {
                (read::<u64>(zero_page, at), read::<u64>(zero_page, at + 8), read::<u32>(zero_page, at + 16))
            };
            if kind == E820_RAM && ram_count < RAM_RANGES_MAX && start.checked_add(len).is_some() {
                ram[ram_count] = MemoryRange { start, len };
                ram_count += 1;
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
        BootInfo { ram, ram_count, cmdline }
    }

    pub fn ram(&self) -> &[MemoryRange] {
        &self.ram[..self.ram_count]
    }

    /// The end of the highest RAM range.
    pub fn ram_top(&self) -> u64 {
        self.ram().iter().map(|r| r.start + r.len).max().unwrap_or(0)
    }

    /// Usable RAM to the nearest MiB: the legacy hole below 1 MiB that the
    /// map leaves out is less than half a MiB, so this is the size the VMM
    /// was given.
    pub fn ram_mib(&self) -> u64 {
        let bytes: u64 = self.ram().iter().map(|r| r.len).sum();
        (bytes + (1 << 19)) >> 20
    }
}

/// # Safety
/// `base + offset` must be readable for `size_of::<T>()` bytes.
unsafe fn read<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: guaranteed by the caller; the zero page has no alignment promises.
    unsafe { core::ptr::read_unaligned(base.add(offset) as *const T) }
}
