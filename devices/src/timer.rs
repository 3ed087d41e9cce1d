//! mvm's wake-timer port: how a guest without interrupts sleeps.
//!
//! One 32-bit register at I/O port [`WAKE_TIMER_PORT`]. Writing N arms a
//! deadline N microseconds from the write; [`DISARM`] cancels it. When the
//! vCPU then halts, the VMM blocks its thread until the deadline, a device
//! completion or the VM's end, and resumes it after the `hlt`. The deadline
//! belongs to the vCPU that wrote it and is consumed by its next wake-up.
//! Reads return 0. See guest-image/README.md.

use std::time::Duration;

use crate::bus::{BusDevice, VmRequest};

pub const WAKE_TIMER_PORT: u64 = 0x604;
pub const WAKE_TIMER_LEN: u64 = 4;
pub const DISARM: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct WakeTimer;

impl BusDevice for WakeTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
        if offset != 0 {
            return None;
        }
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let micros = u32::from_le_bytes(bytes);
        let after = (micros != DISARM).then(|| Duration::from_micros(u64::from(micros)));
        Some(VmRequest::WakeAfter(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_and_disarms() {
        let mut timer = WakeTimer;
        assert_eq!(
            timer.write(0, &100_000u32.to_le_bytes()),
            Some(VmRequest::WakeAfter(Some(Duration::from_millis(100))))
        );
        assert_eq!(timer.write(0, &DISARM.to_le_bytes()), Some(VmRequest::WakeAfter(None)));
        assert_eq!(timer.write(0, &[5]), Some(VmRequest::WakeAfter(Some(Duration::from_micros(5)))));
        assert_eq!(timer.write(2, &[5]), None);
    }
}
