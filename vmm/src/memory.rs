//! Guest RAM: anonymous, lazily backed host memory (MAP_NORESERVE), so a VM
//! costs the host only the pages its guest touches. Its size is the guest's
//! hard memory limit.

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

pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    debug_assert!(size >= HIMEM_START);
    let ranges: Vec<(GuestAddress, usize)> =
        ram_ranges(size).into_iter().map(|(start, len)| (GuestAddress(start), len as usize)).collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map { mib: size / MIB, source })
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
}
