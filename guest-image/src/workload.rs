//! The CPU-bound loop that `scripts/bench-guest-cpu` runs in the guest and,
//! compiled from this same file, as a host process.

/// xorshift64 with a multiply-accumulate: integer work with a serial
/// dependency that no compiler can fold away.
pub fn spin(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut acc: u64 = 0;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.wrapping_add(x.wrapping_mul(i | 1));
    }
    core::hint::black_box(acc)
}
