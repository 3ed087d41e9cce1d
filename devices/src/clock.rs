//! mvm's wall-clock port: the host's time for a guest that has only a TSC.
//!
//! Two 32-bit registers at I/O port [`CLOCK_PORT`]: reading offset 0 latches
//! the host's CLOCK_REALTIME in nanoseconds since the Unix epoch and returns
//! its low 32 bits; reading offset 4 returns the high 32 bits of the latched
//! value. Writes are ignored. See guest-image/README.md.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, VmRequest};

pub const CLOCK_PORT: u64 = 0x608;
pub const CLOCK_LEN: u64 = 8;

#[derive(Debug, Default)]
pub struct WallClock {
    latched_ns: u64,
}

impl BusDevice for WallClock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let half = match offset {
            0 => {
                // A host clock before 1970 reads as the epoch.
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                self.latched_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
                self.latched_ns as u32
            }
            4 => (self.latched_ns >> 32) as u32,
            _ => 0,
        };
        let bytes = half.to_le_bytes();
        let n = data.len().min(4);
        data.fill(0);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<VmRequest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_the_host_time_in_two_halves() {
        let mut clock = WallClock::default();
        let (mut low, mut high) = ([0u8; 4], [0u8; 4]);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        clock.read(0, &mut low);
        clock.read(4, &mut high);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let ns = u64::from(u32::from_le_bytes(high)) << 32 | u64::from(u32::from_le_bytes(low));
        assert!((before..=after).contains(&ns), "{before} <= {ns} <= {after}");
        // The high half stays that of the latched value.
        let mut again = [0u8; 4];
        clock.read(4, &mut again);
        assert_eq!(again, high);
    }
}
