//! The RX thread: frames from the backend into the driver's RX buffers. See
//! the parent module for the threading model.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{NetBackend, NetMetrics, MAX_FRAME_LEN, NET_HDR_LEN, RX_BUDGET};
use crate::virtio::chain::{self, Chain, EmptyLooks, QueueBroken};
use crate::virtio::{GuestErrorLog, Interrupt, VirtioError};

const STOP: u64 = 0;
const REFILL: u64 = 1;
const BACKEND: u64 = 2;

pub(super) struct RxParts {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub backend: Arc<dyn NetBackend>,
    pub interrupt: Arc<Interrupt>,
    pub refill: EventFd,
    pub stop: EventFd,
    pub metrics: Arc<NetMetrics>,
    pub log: Arc<GuestErrorLog>,
}

pub(super) struct RxWorker {
    p: RxParts,
    epoll: Epoll,
    /// Whether the backend's fd is in the epoll set: only while no frame is pending.
    watching_backend: bool,
    /// The backend failed: RX stops for good (until a reset makes a new thread).
    backend_failed: bool,
    frame: Vec<u8>,
    /// The length of the frame in `frame` waiting for an RX buffer.
    pending: Option<usize>,
    chain: Chain,
}

/// What became of the frame offered to one RX chain.
enum Fill {
    Delivered(u32),
    /// The chain is too small for the frame: the frame is dropped, the chain
    /// stays available for the next one.
    TooSmall,
    /// The chain has device-readable buffers or buffers outside guest memory:
    /// returned unused, the frame waits for the next chain.
    BadChain,
}

impl RxWorker {
    pub(super) fn new(p: RxParts) -> Result<RxWorker, VirtioError> {
        let epoll = Epoll::new().map_err(VirtioError::Epoll)?;
        for (fd, token) in
            [(p.stop.as_raw_fd(), STOP), (p.refill.as_raw_fd(), REFILL), (p.backend.as_raw_fd(), BACKEND)]
        {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)).map_err(VirtioError::Epoll)?;
        }
        Ok(RxWorker {
            p,
            epoll,
            watching_backend: true,
            backend_failed: false,
            frame: vec![0; MAX_FRAME_LEN],
            pending: None,
            chain: Chain::default(),
        })
    }

    pub(super) fn run(mut self) {
        let mut events = [EpollEvent::default(); 3];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!("virtio-net: RX thread cannot wait for events: {err}; RX stops");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    STOP => return,
                    // Reading resets the counter; it only says "look again".
                    REFILL => drop(self.p.refill.read()),
                    _ => {}
                }
            }
            let result = self.deliver();
            if chain::settle(
                result,
                &self.p.interrupt,
                &self.p.metrics.broken_queue,
                &self.p.log,
                "virtio-net: RX queue",
            ) {
                // Touch the queue no more; a reset joins this ended thread.
                return;
            }
            self.watch_backend(self.pending.is_none() && !self.backend_failed);
        }
    }

    /// Moves frames into RX buffers until the backend has none, the driver
    /// has no buffer, or the budget is spent. Returns whether the driver
    /// wants a used-buffer notification.
    fn deliver(&mut self) -> Result<bool, QueueBroken> {
        let mut used = false;
        let mut notifications_off = false;
        let mut looks = EmptyLooks::default();
        for _ in 0..RX_BUDGET {
            let len = match self.pending {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => *self.pending.insert(len),
                    None => break,
                },
            };
            if !chain::pop(&mut self.p.queue, &self.p.mem, &mut self.chain)? {
                // No buffer: ask the driver to notify when it adds one, then
                // look once more in case it did so meanwhile.
                if self.p.queue.enable_notification(&self.p.mem).map_err(|_| QueueBroken::UsedRing)? {
                    looks.empty()?;
                    continue;
                }
                self.p.metrics.rx_deferred.fetch_add(1, Ordering::Relaxed);
                break;
            }
            looks.found();
            if !notifications_off {
                // Buffers are there: refills need no notification for now.
                self.p.queue.disable_notification(&self.p.mem).map_err(|_| QueueBroken::UsedRing)?;
                notifications_off = true;
            }
            match fill(&self.p.mem, &self.chain, &self.frame[..len]) {
                Fill::Delivered(written) => {
                    self.p.queue.add_used(&self.p.mem, self.chain.head, written).map_err(|_| QueueBroken::UsedRing)?;
                    used = true;
                    self.pending = None;
                    self.p.metrics.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.p.metrics.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                Fill::TooSmall => {
                    self.p.queue.go_to_previous_position();
                    self.pending = None;
                    self.p.metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Fill::BadChain => {
                    self.p.queue.add_used(&self.p.mem, self.chain.head, 0).map_err(|_| QueueBroken::UsedRing)?;
                    used = true;
                    self.p.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    if self.p.log.allow("virtio-net") {
                        tracing::warn!(
                            "virtio-net: RX chain {} has device-readable buffers or lies outside guest memory",
                            self.chain.head
                        );
                    }
                }
            }
        }
        if used {
            chain::needs_notification(&mut self.p.queue, &self.p.mem)
        } else {
            Ok(false)
        }
    }

    /// The next frame from the backend, or None when it has none (or failed).
    fn read_frame(&mut self) -> Option<usize> {
        if self.backend_failed {
            return None;
        }
        loop {
            match self.p.backend.recv(&mut self.frame) {
                Ok(len) => return Some(len),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // A TAP whose interface went away fails every read: stop
                    // watching it rather than spin.
                    self.backend_failed = true;
                    self.p.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("virtio-net: reading the network backend failed: {err}; RX stops");
                    return None;
                }
            }
        }
    }

    fn watch_backend(&mut self, watch: bool) {
        if watch == self.watching_backend {
            return;
        }
        let fd = self.p.backend.as_raw_fd();
        let result = if watch {
            self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, BACKEND))
        } else {
            self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match result {
            Ok(()) => self.watching_backend = watch,
            Err(err) => tracing::error!("virtio-net: cannot change the RX thread's epoll set: {err}"),
        }
    }
}

fn fill(mem: &GuestMemoryMmap, chain: &Chain, frame: &[u8]) -> Fill {
    if !chain.readable.is_empty() {
        return Fill::BadChain;
    }
    let need = (NET_HDR_LEN + frame.len()) as u64;
    if chain.writable_len() < need {
        return Fill::TooSmall;
    }
    if !chain::in_guest_memory(mem, &chain.writable, 0, need) {
        return Fill::BadChain;
    }
    let mut header = [0u8; NET_HDR_LEN];
    // num_buffers: the frame fits in this one chain.
    header[10] = 1;
    if chain::scatter(mem, &chain.writable, 0, &header).is_err()
        || chain::scatter(mem, &chain.writable, NET_HDR_LEN as u64, frame).is_err()
    {
        return Fill::BadChain;
    }
    // need <= NET_HDR_LEN + MAX_FRAME_LEN.
    Fill::Delivered(need as u32)
}
