//! The Linux zero page (`struct boot_params`): setup header, e820 memory map
//! and command line, as the 64-bit boot protocol expects them.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{ram_ranges, CMDLINE, CMDLINE_CAPACITY, EBDA_START, HIMEM_START, ZERO_PAGE};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader, as in Documentation/arch/x86/boot.rst.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the kernel command line is longer than {max} bytes", max = CMDLINE_CAPACITY - 1)]
    CmdlineTooLong,
    #[error("the kernel command line may hold only printable ASCII")]
    CmdlineInvalid,
    #[error("cannot write the kernel command line to guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("cannot write the zero page to guest memory")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

pub fn cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_CAPACITY).expect("capacity is non-zero");
    if text.is_empty() {
        return Ok(cmdline);
    }
    cmdline.insert_str(text).map_err(|err| match err {
        linux_loader::cmdline::Error::TooLarge => BootError::CmdlineTooLong,
        _ => BootError::CmdlineInvalid,
    })?;
    Ok(cmdline)
}

/// The e820 map for a VM of `mem_size` bytes: low RAM up to the EBDA, the
/// legacy BIOS area reserved, then RAM from 1 MiB on (split by the MMIO gap).
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr, size, type_: u32| boot_e820_entry { addr, size, r#type: type_ };
    let mut map = vec![entry(0, EBDA_START, E820_RAM), entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED)];
    for (start, len) in ram_ranges(mem_size) {
        let (start, len) = if start == 0 { (HIMEM_START, len - HIMEM_START) } else { (start, len) };
        map.push(entry(start, len, E820_RAM));
    }
    map
}

/// Builds the zero page. `kernel_header` is the bzImage's own setup header,
/// which the boot loader must copy in; an ELF kernel has none.
pub fn zero_page(mem_size: u64, cmdline_len: usize, kernel_header: Option<setup_header>) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel_header {
        params.hdr = hdr;
    }
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    let map = e820_map(mem_size);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    params
}

/// Writes the command line and the zero page into guest memory.
pub fn write(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &Cmdline,
    kernel_header: Option<setup_header>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE), cmdline).map_err(BootError::CmdlineWrite)?;
    let len = cmdline.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0);
    let params = zero_page(mem_size, len, kernel_header);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE)), mem)
        .map_err(BootError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MIB, MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::Bytes;

    fn ram_total(map: &[boot_e820_entry]) -> u64 {
        map.iter().filter(|e| e.r#type == E820_RAM).map(|e| e.size).sum()
    }

    #[test]
    fn e820_for_a_small_vm() {
        let map = e820_map(64 * MIB);
        assert_eq!(map.len(), 3);
        assert_eq!((map[0].addr, map[0].size, map[0].r#type), (0, EBDA_START, E820_RAM));
        assert_eq!({ map[1].r#type }, E820_RESERVED);
        assert_eq!((map[2].addr, map[2].size), (HIMEM_START, 63 * MIB));
        // The guest reports RAM to the nearest MiB: the hole must stay under half a MiB.
        assert!(64 * MIB - ram_total(&map) < MIB / 2);
    }

    #[test]
    fn e820_for_a_vm_past_the_gap() {
        let map = e820_map(5 * 1024 * MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!((map[3].addr, map[3].size), (MMIO_GAP_END, 2 * 1024 * MIB));
    }

    #[test]
    fn zero_page_fields() {
        let params = zero_page(32 * MIB, 11, None);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ params.hdr.cmdline_size }, 11);
        assert_eq!(params.e820_entries, 3);
    }

    #[test]
    fn bzimage_header_is_kept_under_our_fields() {
        let hdr = setup_header { version: 0x020f, init_size: 0x1234, ..Default::default() };
        let params = zero_page(32 * MIB, 0, Some(hdr));
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.init_size }, 0x1234);
        assert_eq!(params.hdr.type_of_loader, 0xff);
    }

    #[test]
    fn cmdline_limits() {
        assert!(cmdline("console=ttyS0 mvm.exit=3").is_ok());
        assert!(cmdline("").is_ok());
        assert!(matches!(cmdline(&"x".repeat(CMDLINE_CAPACITY)), Err(BootError::CmdlineTooLong)));
        assert!(matches!(cmdline("tab\there"), Err(BootError::CmdlineInvalid)));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = crate::memory::create(16 * MIB).unwrap();
        write(&mem, 16 * MIB, &cmdline("mvm.exit=7").unwrap(), None).unwrap();
        let mut text = [0u8; 11];
        mem.read_slice(&mut text, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&text, b"mvm.exit=7\0");
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE + 0x1e8)).unwrap();
        assert_eq!(entries, 3);
        let ptr: u32 = mem.read_obj(GuestAddress(ZERO_PAGE + 0x228)).unwrap();
        assert_eq!(u64::from(ptr), CMDLINE);
    }
}
