//! Time from the TSC: a monotonic clock and the wall clock.
//!
//! The VMM gives the TSC frequency on the command line (`mvm.tsc_khz=N`,
//! from KVM_GET_TSC_KHZ), and the host's wall-clock time through its clock
//! port: reading 0x608 latches the host's CLOCK_REALTIME in nanoseconds and
//! returns the low 32 bits, reading 0x60c returns the high 32 bits of the
//! latched value. The guest pairs that reading with the TSC midway between
//! two `rdtsc`s around it, so the wall clock is good to one exit (~20 µs).

use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::port::inl;

const CLOCK_PORT_LOW: u16 = 0x608;
const CLOCK_PORT_HIGH: u16 = 0x60c;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static WALL_NS_AT_BOOT: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear.
    unsafe { _rdtsc() }
}

pub fn init(tsc_khz: Option<u64>) {
    let Some(khz) = tsc_khz.filter(|k| *k > 0) else {
        panic!("mvm.tsc_khz is missing: the VMM gives the TSC frequency on the command line");
    };
    let before = rdtsc();
    let host_ns = host_wall_ns();
    let after = rdtsc();
    TSC_KHZ.store(khz, Ordering::Relaxed);
    TSC_AT_BOOT.store(before + (after - before) / 2, Ordering::Relaxed);
    WALL_NS_AT_BOOT.store(host_ns, Ordering::Relaxed);
}

/// The host's CLOCK_REALTIME now, read through the clock port (two exits).
pub fn host_wall_ns() -> u64 {
    let low = inl(CLOCK_PORT_LOW);
    let high = inl(CLOCK_PORT_HIGH);
    u64::from(high) << 32 | u64::from(low)
}

pub fn tsc_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(TSC_KHZ.load(Ordering::Relaxed))) as u64
}

/// Nanoseconds since the clock was set up at boot.
pub fn monotonic_ns() -> u64 {
    tsc_to_ns(rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed)))
}

/// Nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    WALL_NS_AT_BOOT.load(Ordering::Relaxed) + monotonic_ns()
}
