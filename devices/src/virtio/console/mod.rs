//! virtio-console (virtio spec 5.3) as a one-way output stream: whatever the
//! driver puts in the transmit queue is written, in order, to a host
//! [`Write`]r. A job's stdout and stderr each get one device.
//!
//! Offered features: VERSION_1 only (no SIZE, no MULTIPORT, so the
//! configuration space is empty and reads as zeros). Queue 0 is the
//! receiveq, queue 1 the transmitq, 256 entries each. The receiveq is there
//! because the spec and Linux's hvc driver expect it, but the device never
//! puts anything in it: its buffers stay with the device until a reset and
//! its notifications are ignored.
//!
//! # Threads and output
//!
//! No thread of its own: the transmitq is processed inline in
//! [`VirtioDevice::queue_notify`] on the vCPU thread that wrote QueueNotify 1,
//! under the transport's bus mutex. Bytes are copied out of guest memory
//! through one fixed buffer ([`OUTPUT_BUFFER_LEN`], allocated once), which
//! also gathers the small chains of a batch into few `write` calls; at the
//! end of each batch what remains is written and the writer flushed, so the
//! reader sees the output before the notifying exit returns to the guest,
//! and the driver gets at most one used-buffer notification per batch.
//!
//! The writer runs on the vCPU thread: a blocking writer whose reader is slow
//! holds the vCPU (back-pressure, no output lost), a non-blocking one that
//! is full loses bytes. A writer that fails (the reader went away: EPIPE) does
//! not fail the guest: the bytes it did not take are counted in
//! [`ConsoleMetrics::lost_bytes`], the failure is logged once (a writer that
//! works again and fails again is logged again, at most
//! [`OUTPUT_FAILURE_LOG_LIMIT`] times in all), and chains keep being returned.
//!
//! # What a guest can get wrong
//!
//! A chain with a device-writable buffer, a buffer outside guest memory or
//! more than [`MAX_CHAIN_BYTES`] bytes is dropped (none of its bytes are
//! written) and still returned, with length 0 like every transmit chain. A
//! broken queue (a looping chain, a chain longer than the queue, a next index
//! past the table, an available index running ahead of the ring) stops the
//! transmitq and sets DEVICE_NEEDS_RESET, as block and net do. Guest errors
//! are logged under the [`GUEST_ERROR_LOG_LIMIT`](super::GUEST_ERROR_LOG_LIMIT)
//! policy.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::chain::{self, Chain};
use super::{GuestErrorLog, Interrupt, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};

/// Device ID of a console (virtio spec 5).
pub const TYPE_CONSOLE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
pub const RECEIVE_QUEUE: u16 = 0;
pub const TRANSMIT_QUEUE: u16 = 1;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one transmit chain may carry; a longer chain is dropped.
pub const MAX_CHAIN_BYTES: u64 = 1 << 20;
/// The buffer that bytes cross on their way from guest memory to the writer.
pub const OUTPUT_BUFFER_LEN: usize = 64 * 1024;
/// How many times the writer may start failing (after working, or at first)
/// with a log line each; later failures are only counted in the metrics.
pub const OUTPUT_FAILURE_LOG_LIMIT: u64 = 16;

/// Counters of one console.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Bytes the writer accepted.
    pub bytes_out: AtomicU64,
    /// Transmit chains returned to the driver, dropped ones included.
    pub chains: AtomicU64,
    /// Transmit chains returned without output: device-writable buffers,
    /// buffers outside guest memory, more than [`MAX_CHAIN_BYTES`].
    pub dropped_chains: AtomicU64,
    /// Bytes of well-formed chains that the writer did not accept. (Bytes a
    /// writer accepted and then lost in a failed flush cannot be counted.)
    pub lost_bytes: AtomicU64,
    /// Failed writes and flushes of the writer.
    pub errors: AtomicU64,
    /// Times the transmitq was stopped as broken (DEVICE_NEEDS_RESET).
    pub broken_queue: AtomicU64,
}

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("it has device-writable buffers")]
    Writable,
    #[error("it carries {0} bytes, more than the {MAX_CHAIN_BYTES} allowed")]
    TooLong(u64),
    #[error("a buffer lies outside guest memory")]
    GuestMemory,
}

struct Active {
    mem: GuestMemoryMmap,
    transmitq: Queue,
    broken: bool,
    interrupt: Arc<Interrupt>,
}

/// The host side of the stream: the writer and the buffer in front of it.
struct Output {
    out: Box<dyn Write + Send>,
    buf: Box<[u8]>,
    /// Bytes of `buf` waiting to be written.
    pending: usize,
    /// A write succeeded since the last flush.
    unflushed: bool,
    /// The last write or flush failed: the failure was logged (or counted
    /// against [`OUTPUT_FAILURE_LOG_LIMIT`]) when it started.
    failing: bool,
    /// Failures that started so far.
    failures: u64,
}

pub struct VirtioConsole {
    output: Output,
    metrics: Arc<ConsoleMetrics>,
    log: GuestErrorLog,
    active: Option<Active>,
    chain: Chain,
}

impl VirtioConsole {
    /// A console whose transmitted bytes go to `out`, which is flushed after
    /// each batch. See the module documentation for what a slow or failing
    /// writer does.
    pub fn new(out: Box<dyn Write + Send>) -> VirtioConsole {
        VirtioConsole {
            output: Output {
                out,
                buf: vec![0; OUTPUT_BUFFER_LEN].into_boxed_slice(),
                pending: 0,
                unflushed: false,
                failing: false,
                failures: 0,
            },
            metrics: Arc::new(ConsoleMetrics::default()),
            log: GuestErrorLog::default(),
            active: None,
            chain: Chain::default(),
        }
    }

    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }

    fn transmit(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        if active.broken {
            return;
        }
        let (output, metrics, log) = (&mut self.output, &*self.metrics, &self.log);
        let mem = &active.mem;
        let result = chain::drain(&mut active.transmitq, mem, &mut self.chain, |chain| {
            metrics.chains.fetch_add(1, Ordering::Relaxed);
            if let Err(problem) = output.take_chain(mem, chain, metrics) {
                metrics.dropped_chains.fetch_add(1, Ordering::Relaxed);
                if log.allow("virtio-console") {
                    tracing::warn!("virtio-console: transmit chain {} dropped: {problem}", chain.head);
                }
            }
            0
        });
        // Chains taken before a breakage are output and in the used ring.
        output.finish_batch(metrics);
        active.broken =
            chain::settle(result, &active.interrupt, &metrics.broken_queue, log, "virtio-console: transmitq");
    }
}

impl Output {
    /// Copies the chain's bytes into the buffer, writing it out whenever it
    /// fills. Nothing is taken from a chain that fails a check.
    fn take_chain(&mut self, mem: &GuestMemoryMmap, chain: &Chain, metrics: &ConsoleMetrics) -> Result<(), ChainError> {
        if !chain.writable.is_empty() {
            return Err(ChainError::Writable);
        }
        let len = chain.readable_len();
        if len > MAX_CHAIN_BYTES {
            return Err(ChainError::TooLong(len));
        }
        if !chain::in_guest_memory(mem, &chain.readable, 0, len) {
            return Err(ChainError::GuestMemory);
        }
        chain::for_each_piece(&chain.readable, 0, len, |mut addr, mut n| {
            while n > 0 {
                if self.pending == self.buf.len() {
                    self.write_pending(metrics);
                }
                let take = n.min(self.buf.len() - self.pending);
                // Checked above; guest memory does not shrink.
                mem.read_slice(&mut self.buf[self.pending..self.pending + take], addr)
                    .map_err(|_| ChainError::GuestMemory)?;
                self.pending += take;
                n -= take;
                addr = addr.unchecked_add(take as u64);
            }
            Ok(())
        })
    }

    /// Writes what the buffer holds; what the writer does not take is lost.
    fn write_pending(&mut self, metrics: &ConsoleMetrics) {
        let mut data = &self.buf[..self.pending];
        self.pending = 0;
        while !data.is_empty() {
            match self.out.write(data) {
                Ok(0) => {
                    self.failed(metrics, data.len(), &io::Error::from(io::ErrorKind::WriteZero));
                    return;
                }
                Ok(n) => {
                    metrics.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    data = &data[n..];
                    self.unflushed = true;
                    self.failing = false;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.failed(metrics, data.len(), &err);
                    return;
                }
            }
        }
    }

    /// The end of a batch: everything goes to the writer, which is flushed
    /// if it took anything.
    fn finish_batch(&mut self, metrics: &ConsoleMetrics) {
        if self.pending > 0 {
            self.write_pending(metrics);
        }
        if std::mem::take(&mut self.unflushed) {
            if let Err(err) = self.out.flush() {
                self.failed(metrics, 0, &err);
            }
        }
    }

    fn failed(&mut self, metrics: &ConsoleMetrics, lost: usize, err: &io::Error) {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        metrics.lost_bytes.fetch_add(lost as u64, Ordering::Relaxed);
        if self.failing {
            return;
        }
        // A writer that keeps failing and working again (a full non-blocking
        // pipe) must not flood the log.
        self.failing = true;
        self.failures += 1;
        if self.failures <= OUTPUT_FAILURE_LOG_LIMIT {
            tracing::warn!(
                "virtio-console: output failed: {err}; guest output is counted as lost until it works again"
            );
        }
        if self.failures == OUTPUT_FAILURE_LOG_LIMIT {
            tracing::warn!("virtio-console: further output failures are counted in the metrics, not logged");
        }
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No SIZE, no MULTIPORT: no configuration fields.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only emerg_wr is writable, and only with VIRTIO_CONSOLE_F_EMERG_WRITE.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        // The receiveq is never used: its buffers are not touched.
        let Ok([_receiveq, transmitq]) = <[Queue; 2]>::try_from(queues) else {
            return Err(VirtioError::QueueCount { expected: 2, got });
        };
        self.active = Some(Active { mem, transmitq, broken: false, interrupt });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == TRANSMIT_QUEUE {
            self.transmit();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests;
