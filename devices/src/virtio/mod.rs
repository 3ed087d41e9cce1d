//! virtio 1.x devices on the MMIO transport: block, net and console.
//!
//! A device core ([`VirtioDevice`]) knows nothing of MMIO or KVM: the
//! transport ([`MmioTransport`]) owns the register state, negotiates
//! features, builds the queues and hands them to the device when the driver
//! sets DRIVER_OK. The device tells the driver about used buffers through an
//! [`Interrupt`], which the transport creates around the VMM's
//! [`VirtioInterrupt`].
//!
//! Requests are processed inline on the vCPU thread that wrote QueueNotify
//! (block requests, net TX): when that MMIO exit returns, the used ring is
//! already up to date, so a guest that polls its used rings needs one exit
//! per batch of requests and no interrupt. Only net RX and console input,
//! whose bytes arrive on their own, have a thread (see [`net`], [`console`]).
//!
//! Everything the guest writes is untrusted: guest memory is only touched
//! through vm-memory's checked accessors, descriptor chains are bounded, and
//! a queue the device cannot make sense of any more (a looping chain, an
//! available index running ahead of the ring) stops that queue and sets
//! DEVICE_NEEDS_RESET rather than panicking or spinning.
//!
//! Log policy: a guest can cause any number of errors, so each device logs
//! the first [`GUEST_ERROR_LOG_LIMIT`] at `warn` and then only counts them in
//! its metrics.

pub mod block;
mod chain;
pub mod console;
pub mod mmio;
pub mod net;
#[cfg(test)]
mod test_utils;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use block::{BlockError, BlockMetrics, VirtioBlock};
pub use console::{ConsoleMetrics, VirtioConsole, TYPE_CONSOLE};
pub use mmio::{MmioMetrics, MmioTransport, MMIO_LEN, QUEUE_NOTIFY};
pub use net::{NetBackend, NetError, NetMetrics, Tap, TapError, VirtioNet};

/// Device ID of a network card (virtio spec 5).
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Device ID of a block device (virtio spec 5).
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

/// Feature bit: the device conforms to virtio 1.x (required by this transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// InterruptStatus bit: the device used buffers.
pub const INT_USED_BUFFER: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration changed (here: only DEVICE_NEEDS_RESET).
pub const INT_CONFIG_CHANGE: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// How many guest-caused errors each device logs before it only counts them.
pub const GUEST_ERROR_LOG_LIMIT: u64 = 16;

/// How a device tells the driver that it used buffers (or needs a reset).
/// The VMM implements it: it wakes the vCPU halted waiting for this (the
/// builtin guest polls its used rings and halts) and, for guests with an
/// interrupt controller, triggers an irqfd.
///
/// Called from the vCPU thread that notified a queue and from device threads
/// (net RX), possibly while that device's bus mutex is held: it must not take
/// the device's lock, and should be quick.
pub trait VirtioInterrupt: Send + Sync {
    fn notify(&self);
}

/// A device's side of its interrupt: records the InterruptStatus bits the
/// transport shows the driver, then forwards to the VMM's [`VirtioInterrupt`].
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    vmm: Arc<dyn VirtioInterrupt>,
}

impl Interrupt {
    pub fn new(vmm: Arc<dyn VirtioInterrupt>) -> Interrupt {
        Interrupt { status: AtomicU32::new(0), needs_reset: AtomicBool::new(false), vmm }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_BUFFER, Ordering::AcqRel);
        self.vmm.notify();
    }

    /// The device met a queue it cannot process any more: the transport
    /// shows DEVICE_NEEDS_RESET in Status, and the driver gets a
    /// configuration-change interrupt (virtio spec 2.1.2).
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.status.fetch_or(INT_CONFIG_CHANGE, Ordering::AcqRel);
        self.vmm.notify();
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the bits the driver has handled.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// After a device reset, with no device thread left to set bits again.
    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("device offers a queue of {0} entries; queue sizes must be powers of two from 1 to 32768")]
    QueueSize(u16),
    #[error("device expects {expected} queues, the transport gave {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot create an eventfd that wakes or stops a receive thread")]
    EventFd(#[source] std::io::Error),
    #[error("cannot create the RX thread's epoll set")]
    Epoll(#[source] std::io::Error),
    #[error("cannot start a receive thread")]
    SpawnThread(#[source] std::io::Error),
}

/// A device model behind a virtio transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID: [`TYPE_BLOCK`], [`TYPE_NET`].
    fn device_type(&self) -> u32;
    /// The offered feature bits; always includes [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// The maximum size of each queue (powers of two); its length is the
    /// number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space; bytes past its end read
    /// as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: `queues` (one per entry of
    /// [`queue_max_sizes`](Self::queue_max_sizes), each ready and checked
    /// with `Queue::is_valid`) are the device's until [`reset`](Self::reset).
    /// `acked` is the negotiated feature set.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VirtioError>;
    /// The driver notified queue `index` (processed inline, on the vCPU
    /// thread that wrote QueueNotify). Never called before `activate`.
    fn queue_notify(&mut self, index: u16);
    /// Device reset (Status 0): stop using guest memory, drop the queues,
    /// stop and join any thread. The device can be activated again.
    fn reset(&mut self);
}

/// Copies `config[offset..]` into `data`, zero-filling what lies past the end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// An error and its sources, for a log line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// Counts guest-caused errors of one device and says whether to log this
/// one: the first [`GUEST_ERROR_LOG_LIMIT`], then a single line saying that
/// the rest are only counted.
#[derive(Debug, Default)]
pub(crate) struct GuestErrorLog(AtomicU64);

impl GuestErrorLog {
    pub(crate) fn allow(&self, device: &str) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n == GUEST_ERROR_LOG_LIMIT {
            tracing::warn!("{device}: further guest errors are counted in the metrics, not logged");
        }
        n < GUEST_ERROR_LOG_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl VirtioInterrupt for Count {
        fn notify(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn interrupt_records_bits_and_forwards() {
        let vmm = Arc::new(Count::default());
        let irq = Interrupt::new(vmm.clone());
        irq.signal_used();
        assert_eq!(irq.status(), INT_USED_BUFFER);
        assert_eq!(vmm.0.load(Ordering::SeqCst), 1);
        irq.signal_needs_reset();
        assert!(irq.needs_reset());
        assert_eq!(irq.status(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
        irq.ack(INT_USED_BUFFER);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.clear();
        assert_eq!(irq.status(), 0);
        assert!(!irq.needs_reset());
        assert_eq!(vmm.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 9, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn error_chain_names_every_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }

    #[test]
    fn guest_error_log_is_limited() {
        let log = GuestErrorLog::default();
        let allowed = (0..100).filter(|_| log.allow("test")).count() as u64;
        assert_eq!(allowed, GUEST_ERROR_LOG_LIMIT);
    }
}
