//! mvm's entropy port: randomness from the host for a guest without RDRAND
//! it can trust. Each 8-, 16- or 32-bit read of I/O port [`ENTROPY_PORT`]
//! returns fresh bytes from the host's getrandom(2); the guest seeds its own
//! generator from them. Writes are ignored. See guest-image/README.md.

use crate::bus::{BusDevice, VmRequest};

pub const ENTROPY_PORT: u64 = 0x610;
pub const ENTROPY_LEN: u64 = 4;

#[derive(Debug, Default)]
pub struct Entropy;

impl BusDevice for Entropy {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let mut filled = 0;
        while filled < data.len() {
            let rest = &mut data[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n <= 0 {
                // getrandom(2) fails only before the host's pool is seeded at
                // boot or when interrupted; retry rather than hand out zeros.
                continue;
            }
            filled += n as usize;
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<VmRequest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_differ() {
        let mut entropy = Entropy;
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        entropy.read(0, &mut a);
        entropy.read(0, &mut b);
        // A 1 in 2^32 chance of a false failure.
        assert_ne!(a, b);
    }
}
