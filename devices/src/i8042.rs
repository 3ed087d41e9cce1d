//! The little of the i8042 keyboard controller a Linux guest touches: its
//! probe sees an empty controller, and `reboot` (with `reboot=k`) pulses the
//! reset line through command 0xfe, which ends the VM.

use crate::bus::{BusDevice, VmRequest};

/// Ports 0x60 (data) to 0x64 (status/command).
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data waiting, input buffer free.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
        (offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU)).then_some(VmRequest::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets_and_nothing_else_does() {
        let mut kbd = I8042;
        assert_eq!(kbd.write(4, &[0xfe]), Some(VmRequest::Reset));
        assert_eq!(kbd.write(0, &[0xfe]), None);
        assert_eq!(kbd.write(4, &[0xad]), None);
        let mut status = [0xffu8];
        kbd.read(4, &mut status);
        assert_eq!(status, [0]);
    }
}
