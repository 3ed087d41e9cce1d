//! Guest RAM: anonymous, lazily backed host memory (MAP_NORESERVE), so a VM
//! costs the host only the pages its guest touches. Its size is the guest's
//! hard memory limit.
//!
//! RAM above [`HUGE_PAGES_FROM`] asks the host for transparent huge pages.
//! Under PVM's shadow paging every first touch of a 4 KiB page costs an exit
//! and a host fault (measured: 100 MiB of a job's linear memory, zeroed by
//! the guest, 140-290 ms; 11-45 ms with huge pages behind it). The low RAM,
//! all that a small job touches (the kernel, its tables, the start of the
//! heap), keeps 4 KiB pages, so a thousand idle VMs still cost a few MiB
//! each.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{ram_ranges, HIMEM_START, MIB};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB is too small: the VM needs at least {min_mib} MiB")]
    TooSmall { mib: u64, min_mib: u64 },
    #[error("guest memory of {mib} MiB is more than this host has ({host_mib} MiB in all)")]
    MoreThanHost { mib: u64, host_mib: u64 },
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("KVM refused guest memory slot {slot} ({size:#x} bytes at {start:#x})")]
    Register {
        slot: u32,
        start: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The boot structures live below 1 MiB and the kernel above it.
pub const MIN_MIB: u64 = 2;

/// Checks a requested size against what the host can give.
pub fn check_size(mib: u64, host_bytes: Option<u64>) -> Result<u64, MemoryError> {
    if mib < MIN_MIB {
        return Err(MemoryError::TooSmall { mib, min_mib: MIN_MIB });
    }
    let too_big = |host_mib| MemoryError::MoreThanHost { mib, host_mib };
    let bytes = mib.checked_mul(MIB).ok_or(too_big(host_bytes.unwrap_or(0) / MIB))?;
    match host_bytes {
        Some(host) if bytes > host => Err(too_big(host / MIB)),
        _ => Ok(bytes),
    }
}

/// Guest-physical RAM from here up is backed by huge pages where the host
/// has them (see the module's documentation).
pub const HUGE_PAGES_FROM: u64 = 16 * MIB;
const HUGE_PAGE: u64 = 2 * MIB;

pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    debug_assert!(size >= HIMEM_START);
    let ranges: Vec<(GuestAddress, usize)> =
        ram_ranges(size).into_iter().map(|(start, len)| (GuestAddress(start), len as usize)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map { mib: size / MIB, source })?;
    for region in mem.iter() {
        let (start, end) = (region.start_addr().raw_value(), region.start_addr().raw_value() + region.len());
        let from = start.max(HUGE_PAGES_FROM).next_multiple_of(HUGE_PAGE);
        if from >= end {
            continue;
        }
        // SAFETY: the range lies inside the region's live mapping; the advice
        // changes how it is backed, never its contents.
        let advised = unsafe {
            libc::madvise(
                region.as_ptr().add((from - start) as usize).cast(),
                (end - from) as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if advised != 0 {
            // A host without transparent huge pages: 4 KiB pages, slower to
            // touch, but the same memory.
            tracing::debug!("no huge pages for guest RAM: {}", std::io::Error::last_os_error());
        }
    }
    Ok(mem)
}

/// Hands every RAM region to KVM, one memory slot each.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let start = region.start_addr().raw_value();
        let size = region.len();
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: start,
            memory_size: size,
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range is a live mapping of exactly `size` bytes
        // owned by `mem`, which the VM outlives nowhere: `Vm` drops the VmFd
        // (and with it the slot) before the memory.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|source| MemoryError::Register {
            slot,
            start,
            size,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_checks() {
        assert_eq!(check_size(64, Some(1024 * MIB)).unwrap(), 64 * MIB);
        assert!(matches!(check_size(1, None), Err(MemoryError::TooSmall { .. })));
        assert!(matches!(check_size(0, None), Err(MemoryError::TooSmall { .. })));
        let err = check_size(4096, Some(1024 * MIB)).unwrap_err();
        assert_eq!(err.to_string(), "guest memory of 4096 MiB is more than this host has (1024 MiB in all)");
        assert!(matches!(check_size(u64::MAX, None), Err(MemoryError::MoreThanHost { .. })));
        assert_eq!(check_size(8192, None).unwrap(), 8192 * MIB);
    }

    #[test]
    fn created_memory_covers_the_ranges() {
        let mem = create(16 * MIB).unwrap();
        assert_eq!(mem.iter().count(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(16 * MIB - 1));
    }

    /// The VmFlags of the mapping of ours that contains `addr`.
    fn vm_flags(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
                let (start, end) = range.split_once('-').unwrap();
                let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
                inside = (start..end).contains(&addr);
            } else if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}")
    }

    #[test]
    fn only_ram_above_the_low_16_mib_asks_for_huge_pages() {
        let mem = create(64 * MIB).unwrap();
        let base = mem.iter().next().unwrap().as_ptr() as u64;
        let low = vm_flags(base + HUGE_PAGES_FROM - 4096);
        let high = vm_flags(base + HUGE_PAGES_FROM.next_multiple_of(HUGE_PAGE) + 4096);
        assert!(!low.contains(" hg"), "low RAM: {low}");
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert!(high.contains(" hg"), "RAM above {HUGE_PAGES_FROM:#x}: {high}");
        } else {
            assert!(!high.contains(" hg"), "a host without huge pages: {high}");
        }
        // Small VMs are left as they were.
        let small = create(16 * MIB).unwrap();
        let flags = vm_flags(small.iter().next().unwrap().as_ptr() as u64 + 8 * MIB);
        assert!(!flags.contains(" hg"), "{flags}");
    }
}
