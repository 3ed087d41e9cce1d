//! virtio-net over a TAP device (or any [`NetBackend`]).
//!
//! Offered features: VERSION_1, RING_EVENT_IDX, MAC. No offloads, no
//! mergeable buffers, no control queue: every frame travels whole, behind a
//! 12-byte virtio-net header (VERSION_1 includes `num_buffers`). Queue 0 is
//! RX, queue 1 TX, 256 entries each.
//!
//! # Threads and locks
//!
//! - **TX** runs inline in [`VirtioDevice::queue_notify`] on the vCPU thread
//!   that wrote QueueNotify 1, under the transport's bus mutex: each chain is
//!   gathered into one buffer, its header skipped, and written to the backend
//!   as one frame; the chain goes back to the used ring at once. A frame the
//!   backend cannot take right now (`WouldBlock`) is dropped, as a NIC would.
//! - **RX** has one thread per active device (`mvm-net-rx`), started by
//!   `activate` and stopped and joined by `reset` and by `Drop`. It owns the
//!   RX queue outright, so no lock is shared with the vCPU threads: it waits
//!   (epoll) on the backend's fd, a "refill" eventfd that QueueNotify 0
//!   writes, and a "stop" eventfd. A frame read while no RX buffer is
//!   available is kept (one at most; the backend is not read meanwhile, so
//!   further frames wait in the kernel's queue) until the driver adds
//!   buffers; a frame larger than the buffer offered is dropped and the
//!   buffer kept for the next one. Each wake handles at most
//!   [`RX_BUDGET`] frames before looking at the stop event again.
//! - Shared between the two: the backend (`Arc`, reads on one thread and
//!   writes on the other, each one syscall per frame), the [`Interrupt`]
//!   (atomics), the metrics (atomics) and guest memory (each thread touches
//!   only its own queue's rings and buffers).
//! - Races: the driver may add RX buffers just after the thread found none
//!   and before it re-enabled notifications; `enable_notification` re-reads
//!   the available index after enabling, so such buffers are seen. A refill
//!   notification that arrives while the thread is busy stays in the eventfd
//!   and wakes the next wait. `reset` may come while the thread fills a
//!   buffer: the thread finishes that frame, sees the stop event and exits
//!   before `reset` returns, so no guest memory is touched after a reset.

mod rx;
mod tap;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use tap::{Tap, TapError};

use super::chain::{self, Chain};
use super::{
    read_config_bytes, GuestErrorLog, Interrupt, VirtioDevice, VirtioError, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header with VERSION_1 (`struct virtio_net_hdr_mrg_rxbuf`).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame carried either way (a 64 KiB MTU and its Ethernet header).
pub const MAX_FRAME_LEN: usize = 65_550;
/// Frames the RX thread delivers per wake before it checks for a stop.
pub const RX_BUDGET: usize = 256;

/// Where a virtio-net device's frames go and come from, one whole frame per
/// call. Both calls must not block: the fd must be non-blocking, and `recv`
/// returns `WouldBlock` when no frame waits. The fd becomes readable when a
/// frame waits (the RX thread waits on it with epoll).
pub trait NetBackend: AsRawFd + Send + Sync {
    /// Reads one frame into `buf`, returning its length.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MAC address {0:?} is invalid: expected six hex bytes such as 52:54:00:12:34:56")]
    InvalidMac(String),
    #[error("MAC address {0} is a multicast address: the low bit of the first byte must be clear")]
    MulticastMac(String),
}

/// Counters of one network device.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// TX frames the backend could not take (full) or refused.
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// RX frames larger than the buffer the driver offered.
    pub rx_dropped: AtomicU64,
    /// Times a frame waited because the driver had no RX buffer.
    pub rx_deferred: AtomicU64,
    /// Malformed chains, buffers outside guest memory, backend errors.
    pub errors: AtomicU64,
    /// Queues stopped as broken (DEVICE_NEEDS_RESET).
    pub broken_queue: AtomicU64,
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`). Multicast addresses are refused.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let invalid = || NetError::InvalidMac(text.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        // from_str_radix alone would take "+1".
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    if mac[0] & 1 != 0 {
        return Err(NetError::MulticastMac(text.to_owned()));
    }
    Ok(mac)
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; the time and pid vary it per call.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.write_u32(std::process::id());
    let bits = hasher.finish().to_le_bytes();
    let mut mac = [bits[0], bits[1], bits[2], bits[3], bits[4], bits[5]];
    mac[0] = (mac[0] & !1) | 2;
    mac
}

struct Active {
    mem: GuestMemoryMmap,
    tx: Queue,
    tx_broken: bool,
    interrupt: Arc<Interrupt>,
    refill: EventFd,
    stop: EventFd,
    rx_thread: Option<JoinHandle<()>>,
}

pub struct VirtioNet {
    backend: Arc<dyn NetBackend>,
    config: [u8; 6],
    metrics: Arc<NetMetrics>,
    log: Arc<GuestErrorLog>,
    active: Option<Active>,
    tx_chain: Chain,
    tx_frame: Vec<u8>,
}

impl VirtioNet {
    pub fn new(tap: Tap, mac: [u8; 6]) -> VirtioNet {
        VirtioNet::with_backend(Arc::new(tap), mac)
    }

    /// A device over any non-blocking frame backend (see [`NetBackend`]).
    pub fn with_backend(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> VirtioNet {
        VirtioNet {
            backend,
            config: mac,
            metrics: Arc::new(NetMetrics::default()),
            log: Arc::new(GuestErrorLog::default()),
            active: None,
            tx_chain: Chain::default(),
            tx_frame: vec![0; MAX_FRAME_LEN],
        }
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.config
    }

    fn transmit(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        if active.tx_broken {
            return;
        }
        let (backend, metrics, log, frame) = (&*self.backend, &*self.metrics, &*self.log, &mut self.tx_frame);
        let mem = &active.mem;
        let result = chain::drain(&mut active.tx, mem, &mut self.tx_chain, |chain| {
            transmit_one(backend, mem, chain, frame, metrics, log);
            0
        });
        active.tx_broken = chain::settle(result, &active.interrupt, &metrics.broken_queue, log, "virtio-net: TX queue");
    }

    /// Stops and joins the RX thread and forgets the queues.
    fn deactivate(&mut self) {
        let Some(mut active) = self.active.take() else { return };
        if let Err(err) = active.stop.write(1) {
            // Cannot happen with a fresh eventfd; without it the join would hang.
            tracing::error!("virtio-net: cannot stop the RX thread: {err}; leaving it running");
            return;
        }
        if let Some(thread) = active.rx_thread.take() {
            if thread.join().is_err() {
                tracing::error!("virtio-net: the RX thread panicked");
            }
        }
    }
}

fn transmit_one(
    backend: &dyn NetBackend,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    frame: &mut [u8],
    metrics: &NetMetrics,
    log: &GuestErrorLog,
) {
    let total = chain.readable_len();
    let problem = if !chain.writable.is_empty() {
        Some("a TX chain has device-writable buffers")
    } else if total < NET_HDR_LEN as u64 {
        Some("a TX chain is shorter than the virtio-net header")
    } else if total - NET_HDR_LEN as u64 > frame.len() as u64 {
        Some("a TX frame is larger than 65550 bytes")
    } else {
        None
    };
    if let Some(problem) = problem {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        if log.allow("virtio-net") {
            tracing::warn!("virtio-net: {problem}; frame dropped");
        }
        return;
    }
    let len = (total - NET_HDR_LEN as u64) as usize;
    if chain::gather(mem, &chain.readable, NET_HDR_LEN as u64, &mut frame[..len]).is_err() {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        if log.allow("virtio-net") {
            tracing::warn!("virtio-net: a TX buffer lies outside guest memory; frame dropped");
        }
        return;
    }
    match backend.send(&frame[..len]) {
        Ok(_) => {
            metrics.tx_frames.fetch_add(1, Ordering::Relaxed);
            metrics.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
            metrics.tx_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(err) => {
            metrics.tx_dropped.fetch_add(1, Ordering::Relaxed);
            metrics.errors.fetch_add(1, Ordering::Relaxed);
            if log.allow("virtio-net") {
                tracing::warn!("virtio-net: the network backend refused a {len}-byte frame: {err}");
            }
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only for legacy drivers.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VirtioError> {
        self.deactivate();
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(VirtioError::QueueCount { expected: 2, got });
        };
        let refill = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let worker = rx::RxWorker::new(rx::RxParts {
            mem: mem.clone(),
            queue: rx,
            backend: self.backend.clone(),
            interrupt: interrupt.clone(),
            refill: refill.try_clone().map_err(VirtioError::EventFd)?,
            stop: stop.try_clone().map_err(VirtioError::EventFd)?,
            metrics: self.metrics.clone(),
            log: self.log.clone(),
        })?;
        let rx_thread = std::thread::Builder::new()
            .name("mvm-net-rx".into())
            .spawn(move || worker.run())
            .map_err(VirtioError::SpawnThread)?;
        self.active = Some(Active { mem, tx, tx_broken: false, interrupt, refill, stop, rx_thread: Some(rx_thread) });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => {
                if let Some(active) = &self.active {
                    // Fails only when the counter is saturated: a wake is pending anyway.
                    let _ = active.refill.write(1);
                }
            }
            TX_QUEUE => self.transmit(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.deactivate();
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.deactivate();
    }
}

#[cfg(test)]
mod tests;
