//! mvm's paravirtual exit port: how a guest powers off with a status.
//!
//! One 32-bit register at I/O port [`EXIT_PORT`]. Writing `reason << 8 |
//! status` ends the VM: `status` (bits 0-7) becomes the exit status of
//! `mvm boot`, `reason` (bits 8-15) says why the guest stopped: 0 a normal
//! exit, 1 a guest panic, 2 a CPU exception (status = the vector; the VMM
//! reads RDI = RIP, RSI = error code, R8 = CR2, R9 bit 0 = stack overflow
//! from the vCPU), 3 out of memory, 4 the job's WebAssembly module trapped
//! (RDI, RSI = guest-physical address and length of the message). 8- and
//! 16-bit writes are zero-extended.
//! Reads return 0. The layout is documented in guest-image/README.md.

use crate::bus::{BusDevice, VmRequest};

pub const EXIT_PORT: u64 = 0x600;
pub const EXIT_PORT_LEN: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Exit,
    Panic,
    Fault,
    OutOfMemory,
    Trap,
    /// A reason this VMM does not know; the status still counts.
    Unknown(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit {
    pub reason: ExitReason,
    pub status: u8,
}

impl GuestExit {
    /// Decodes a guest's write, whatever its width or value.
    pub fn decode(data: &[u8]) -> GuestExit {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let [status, reason, ..] = bytes;
        let reason = match reason {
            0 => ExitReason::Exit,
            1 => ExitReason::Panic,
            2 => ExitReason::Fault,
            3 => ExitReason::OutOfMemory,
            4 => ExitReason::Trap,
            other => ExitReason::Unknown(other),
        };
        GuestExit { reason, status }
    }
}

#[derive(Debug, Default)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
        // Only a write at the register's start is a power-off; a stray write
        // into its middle is ignored, as a real device would.
        (offset == 0).then(|| VmRequest::PowerOff(GuestExit::decode(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_width() {
        assert_eq!(GuestExit::decode(&[7]), GuestExit { reason: ExitReason::Exit, status: 7 });
        assert_eq!(GuestExit::decode(&[101, 1]), GuestExit { reason: ExitReason::Panic, status: 101 });
        assert_eq!(GuestExit::decode(&[3, 9, 0xff, 0xff]), GuestExit { reason: ExitReason::Unknown(9), status: 3 });
        assert_eq!(GuestExit::decode(&[]), GuestExit { reason: ExitReason::Exit, status: 0 });
    }

    #[test]
    fn only_offset_zero_powers_off() {
        let mut port = ExitPort;
        assert_eq!(port.write(1, &[5]), None);
        assert_eq!(
            port.write(0, &[5, 0, 0, 0]),
            Some(VmRequest::PowerOff(GuestExit { reason: ExitReason::Exit, status: 5 }))
        );
    }
}
