//! The receive thread: a console's input source into the driver's receive
//! buffers.
//!
//! One thread per active console with a source (`mvm-console-rx`), started
//! by `activate`, stopped and joined by `reset` and by `Drop`. It owns the
//! receiveq outright. It takes one chain at a time from the available ring
//! and only then waits, with `poll`, for the source to be readable (or the
//! stop event); the read goes straight into the chain's buffers, and the
//! chain goes back with the bytes read. So mvm keeps no copy of the stream
//! (the kernel's pipe buffer is all there is between producer and guest),
//! and the source is never read without a buffer to take it: the guest's
//! pace is the producer's.
//!
//! With no chain available it asks the driver for notifications (and looks
//! once more, for a chain added meanwhile) and waits on the refill eventfd
//! that QueueNotify 0 writes; while it has chains, driver notifications are
//! off, so a guest reposting buffers costs no exit.
//!
//! Reads happen only after `poll` says the source is ready, so a blocking
//! pipe or terminal never holds the thread in `read`: the stop event always
//! ends it promptly, even when nobody ever writes to the source. A read of
//! a full buffer is followed by a further one into the same chain only if
//! `poll` says more is ready now; a short read ends the chain.
//!
//! Races: `reset` may come while a read runs; the thread finishes it, sees
//! the stop event and exits before `reset` returns, so no guest memory is
//! touched after a reset. A chain it held then is not returned (the queue
//! is gone with the reset); the bytes read into it are lost with it, as a
//! reset loses whatever a device had in flight.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::ConsoleMetrics;
use crate::virtio::chain::{self, Chain, EmptyLooks, QueueBroken};
use crate::virtio::{GuestErrorLog, Interrupt};

pub(super) struct RxWorker {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub source: Arc<File>,
    pub ended: Arc<AtomicBool>,
    pub interrupt: Arc<Interrupt>,
    pub refill: EventFd,
    pub stop: EventFd,
    pub metrics: Arc<ConsoleMetrics>,
    pub log: Arc<GuestErrorLog>,
    pub chain: Chain,
}

/// Why a receive chain cannot take input.
#[derive(Debug, thiserror::Error)]
enum BadChain {
    #[error("has device-readable buffers")]
    Readable,
    #[error("has no room")]
    Empty,
    #[error("lies outside guest memory")]
    GuestMemory,
}

/// What the receiveq's trouble was: the ring itself, or one chain.
enum Broken {
    Queue(QueueBroken),
    Chain(BadChain),
}

impl From<QueueBroken> for Broken {
    fn from(broken: QueueBroken) -> Broken {
        Broken::Queue(broken)
    }
}

/// What a wait ended with.
#[derive(PartialEq, Eq)]
enum Woken {
    Stop,
    /// The other descriptor is ready (or in error: the next step finds out).
    Ready,
}

impl RxWorker {
    pub(super) fn run(mut self) {
        match self.serve() {
            Ok(()) => {}
            Err(Broken::Queue(broken)) => {
                chain::settle(
                    Err(broken),
                    &self.interrupt,
                    &self.metrics.broken_queue,
                    &self.log,
                    "virtio-console: receiveq",
                );
            }
            Err(Broken::Chain(problem)) => {
                self.metrics.broken_queue.fetch_add(1, Ordering::Relaxed);
                if self.log.allow("virtio-console") {
                    tracing::warn!(
                        "virtio-console: receive chain {} {problem}; the receiveq is stopped until the driver resets the device",
                        self.chain.head
                    );
                }
                self.interrupt.signal_needs_reset();
            }
        }
    }

    /// Fills chains until stopped (Ok) or the receiveq breaks.
    fn serve(&mut self) -> Result<(), Broken> {
        loop {
            if !self.next_chain()? {
                if self.wait(self.refill.as_raw_fd()) == Woken::Stop {
                    return Ok(());
                }
                // Reading resets the counter; it only says "look again".
                drop(self.refill.read());
                continue;
            }
            self.check_chain().map_err(Broken::Chain)?;
            let len = loop {
                if self.ended.load(Ordering::Relaxed) {
                    break 0;
                }
                if self.wait(self.source.as_raw_fd()) == Woken::Stop {
                    return Ok(());
                }
                match self.fill() {
                    Ok(len) => break len,
                    // Another reader of the same pipe took the bytes first.
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => {
                        self.metrics.input_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("virtio-console: reading the input failed: {err}; the guest sees its end");
                        self.ended.store(true, Ordering::Relaxed);
                        break 0;
                    }
                }
            };
            self.queue.add_used(&self.mem, self.chain.head, len).map_err(|_| QueueBroken::UsedRing)?;
            self.metrics.receive_chains.fetch_add(1, Ordering::Relaxed);
            self.metrics.bytes_in.fetch_add(u64::from(len), Ordering::Relaxed);
            if chain::needs_notification(&mut self.queue, &self.mem)? {
                self.interrupt.signal_used();
            }
        }
    }

    /// Loads the next available chain; false when there is none, with the
    /// driver's notifications then on. While chains are there, they are off.
    fn next_chain(&mut self) -> Result<bool, QueueBroken> {
        let mut looks = EmptyLooks::default();
        loop {
            if chain::pop(&mut self.queue, &self.mem, &mut self.chain)? {
                self.queue.disable_notification(&self.mem).map_err(|_| QueueBroken::UsedRing)?;
                return Ok(true);
            }
            // Re-reads the available index after enabling: a chain added
            // between the pop and this is seen now.
            if !self.queue.enable_notification(&self.mem).map_err(|_| QueueBroken::UsedRing)? {
                return Ok(false);
            }
            looks.empty()?;
        }
    }

    fn check_chain(&self) -> Result<(), BadChain> {
        if !self.chain.readable.is_empty() {
            return Err(BadChain::Readable);
        }
        let len = self.chain.writable_len();
        if len == 0 {
            // A read into no room returns 0, which would end the stream.
            return Err(BadChain::Empty);
        }
        if !chain::in_guest_memory(&self.mem, &self.chain.writable, 0, len) {
            return Err(BadChain::GuestMemory);
        }
        Ok(())
    }

    /// Reads from the source into the chain (checked): returns the bytes
    /// read, 0 at the end of the stream. Reads go on into the rest of the
    /// chain only while each fills its piece and the source has more ready
    /// at once; an end met after some bytes is kept for the next chain (a
    /// terminal's end of file is one read of 0, not a lasting state).
    fn fill(&mut self) -> io::Result<u32> {
        let mut total: u32 = 0;
        let mut source = &*self.source;
        for segment in &self.chain.writable {
            let slices =
                self.mem.get_slices(segment.addr, segment.len as usize, Permissions::Write).map_err(io_error)?;
            for slice in slices {
                let slice = slice.map_err(io_error)?;
                if total > 0 && !ready_now(source.as_raw_fd()) {
                    return Ok(total);
                }
                let n = match slice.read_volatile_from(0, &mut source, slice.len()) {
                    Ok(n) => n,
                    Err(_) if total > 0 => return Ok(total),
                    Err(vm_memory::VolatileMemoryError::IOError(err)) => return Err(err),
                    Err(err) => return Err(io::Error::other(err)),
                };
                if n == 0 {
                    self.ended.store(true, Ordering::Relaxed);
                    return Ok(total);
                }
                // At most the chain's length, which fits in a u32 used length
                // only if the chain is under 4 GiB: cap there.
                total = total.saturating_add(n as u32);
                if n < slice.len() || total == u32::MAX {
                    return Ok(total);
                }
            }
        }
        Ok(total)
    }

    /// Waits until `fd` is ready to read (or in error, or hung up) or the
    /// stop event is signalled.
    fn wait(&self, fd: RawFd) -> Woken {
        let mut fds = [
            libc::pollfd { fd: self.stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd whose descriptors
            // outlive the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                // poll on two valid descriptors does not fail otherwise; if
                // it does, stopping beats spinning.
                tracing::error!("virtio-console: the receive thread cannot wait: {err}; input stops");
                return Woken::Stop;
            }
        }
        if fds[0].revents != 0 {
            Woken::Stop
        } else {
            Woken::Ready
        }
    }
}

/// Whether `fd` has bytes (or its end) to read without waiting.
fn ready_now(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout only looks.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready == 1 && pollfd.revents & libc::POLLNVAL == 0
}

fn io_error(err: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::other(err)
}
