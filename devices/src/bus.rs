//! Range-mapped buses for port I/O and MMIO.
//!
//! A bus is built once before the vCPUs start and then only read, so routing
//! an exit takes no bus-wide lock; each device has its own mutex, held only
//! for the access itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device access asks of the VM, or of the vCPU that made it, beyond
/// the access itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest powered off with this status and reason.
    PowerOff(crate::power::GuestExit),
    /// The guest asked for a reset (i8042 pulse): mvm ends the VM.
    Reset,
    /// Resume this vCPU from its next halt after this long (None: cancel).
    WakeAfter(Option<std::time::Duration>),
}

pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset` within the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset` within the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest>;
}

/// No device claims the address of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unclaimed;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} overlaps one already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("device range at {base:#x} is empty or wraps around")]
    BadRange { base: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    // Keyed by base address; ranges never overlap.
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base })?;
        let clashes_below = self.devices.range(..=base).next_back().is_some_and(|(b, e)| b + e.len > base);
        let clashes_above = self.devices.range(base..end).next().is_some();
        if clashes_below || clashes_above {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device holding `addr` and the offset of `addr` within it; the whole
    /// access of `size` bytes must lie inside the device's range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((entry, offset))
    }

    /// Reads from the device at `addr`, leaving `data` untouched when no
    /// device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), Unclaimed> {
        let (entry, offset) = self.resolve(addr, data.len()).ok_or(Unclaimed)?;
        lock(&entry.device).read(offset, data);
        Ok(())
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<VmRequest>, Unclaimed> {
        let (entry, offset) = self.resolve(addr, data.len()).ok_or(Unclaimed)?;
        let request = lock(&entry.device).write(offset, data);
        Ok(request)
    }
}

/// A device whose mutex was poisoned panicked mid-access; its state is still
/// memory-safe, and stopping every vCPU over one device would be worse.
fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> std::sync::MutexGuard<'a, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
            self.0.push((offset, data.to_vec()));
            None
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder(Vec::new())))
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut byte = [0u8; 1];
        bus.read(0x3fd, &mut byte).unwrap();
        assert_eq!(byte, [5]);
        bus.write(0x3f8, b"x").unwrap();
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![b'x'])]);
        assert_eq!(bus.read(0x400, &mut byte), Err(Unclaimed));
        assert_eq!(bus.write(0x3f7, &[0]), Err(Unclaimed));
    }

    #[test]
    fn access_straddling_the_end_is_refused() {
        let mut bus = Bus::new();
        bus.insert(0x600, 4, recorder()).unwrap();
        assert!(bus.write(0x602, &[0; 4]).is_err());
        assert!(bus.write(0x600, &[0; 4]).is_ok());
        assert!(bus.write(u64::MAX, &[0; 2]).is_err());
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, recorder()).unwrap();
        assert_eq!(bus.insert(0x108, 4, recorder()), Err(BusError::Overlap { base: 0x108, len: 4 }));
        assert_eq!(bus.insert(0xf8, 0x10, recorder()), Err(BusError::Overlap { base: 0xf8, len: 0x10 }));
        assert_eq!(bus.insert(0x200, 0, recorder()), Err(BusError::BadRange { base: 0x200 }));
        assert_eq!(bus.insert(u64::MAX, 2, recorder()), Err(BusError::BadRange { base: u64::MAX }));
        bus.insert(0x110, 4, recorder()).unwrap();
        bus.insert(0xf0, 0x10, recorder()).unwrap();
    }
}
