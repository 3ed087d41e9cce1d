//! Randomness for the guest from the host's: each 32-bit `in` from the
//! entropy port 0x610 returns fresh bytes from the host's getrandom(2). They
//! seed a ChaCha20 generator, so a large `random_get` costs no exits.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::port::inl;

const ENTROPY_PORT: u16 = 0x610;

pub struct Entropy(ChaCha20Rng);

impl Entropy {
    pub fn from_host() -> Entropy {
        let mut seed = [0u8; 32];
        for word in seed.chunks_exact_mut(4) {
            word.copy_from_slice(&inl(ENTROPY_PORT).to_le_bytes());
        }
        Entropy(ChaCha20Rng::from_seed(seed))
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
}
