//! The guest's job runtime without its hardware and its engine: the job
//! archive (tar.rs), the job's filesystem (vfs.rs, on the image format of
//! fsimage.rs) and every WASI preview 1 function (wasi.rs), over a plain linear
//! memory `&mut [u8]`. The guest kernel supplies the devices through the
//! traits below and registers the functions with its WebAssembly engine;
//! everything here runs, and is unit-tested, on the host too.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod errno;
pub mod fsimage;
pub mod tar;
pub mod vfs;
pub mod wasi;

#[cfg(test)]
mod testing;

/// The unit of every disk transfer, in bytes.
pub const SECTOR: usize = 512;

/// A disk addressed in sectors: the job disk and the filesystem disk.
pub trait BlockDevice {
    type Error: core::fmt::Debug;

    fn capacity_sectors(&self) -> u64;

    /// Reads `buf.len()` bytes (a whole number of sectors) from `sector` on.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes `buf` (a whole number of sectors) from `sector` on.
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error>;
}

/// Where a job's stdout or stderr goes.
pub trait Output {
    fn write(&mut self, data: &[u8]);

    /// Sends on whatever `write` kept back.
    fn flush(&mut self);
}

/// Where a job's stdin comes from.
pub trait Input {
    /// Fills the start of `buf` with the next bytes of the stream and says
    /// how many; waits while none are available yet. 0 means the stream has
    /// ended (or `buf` is empty).
    fn read(&mut self, buf: &mut [u8]) -> usize;

    /// Whether `read` would wait now: no bytes delivered and the stream not
    /// ended. Asking may start the stream (ask the host for its first bytes).
    fn would_wait(&mut self) -> bool;
}

/// Time, in nanoseconds.
pub trait Clock {
    /// Since the Unix epoch.
    fn wall_ns(&mut self) -> u64;

    /// Since some fixed point: never goes back.
    fn monotonic_ns(&mut self) -> u64;

    /// Returns once `monotonic_ns()` has reached `deadline_ns`.
    fn sleep_until(&mut self, deadline_ns: u64);
}

/// Random bytes for `random_get`.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);
}

/// The devices one job's WASI functions run on.
pub trait Platform {
    type Disk: BlockDevice;
    type Input: Input;
    type Output: Output;
    type Clock: Clock;
    type Entropy: Entropy;
}
