//! virtio-console (virtio spec 5.3): a byte stream each way. Whatever the
//! driver puts in the transmitq is written, in order, to a host [`Write`]r;
//! the receiveq carries the bytes of a host source (a job's stdin) into the
//! driver's buffers. A job's stdout and stderr each get one device; stdin
//! travels on the receiveq of the first (stdout's), as a terminal's input
//! goes with its output, so it costs no device of its own.
//!
//! Offered features: VERSION_1 only (no SIZE, no MULTIPORT, so the
//! configuration space is empty and reads as zeros). Queue 0 is the
//! receiveq, queue 1 the transmitq, 256 entries each.
//!
//! # Input and its end
//!
//! A console made with [`VirtioConsole::with_input`] reads its source on a
//! thread of its own (see [`rx`](self::rx)), straight into the driver's
//! receive buffers: mvm holds no copy of the stream, so a stream far larger
//! than the guest's RAM passes with mvm's memory flat. The source is read
//! only while the driver has a buffer posted, and each read takes at most
//! that buffer's size: the guest's consumption paces the producer.
//!
//! **End of stream is a used receive buffer of length 0.** The spec has no
//! end of input on a plain console (MULTIPORT's PORT_OPEN control message
//! would need a control queue pair and the port protocol for one bit), and
//! a device never returns an empty receive buffer otherwise, so mvm's
//! devices and its guest agree on this: once the source has ended, every
//! receive buffer comes back at once with length 0. A Linux guest's hvc
//! driver takes such a buffer as no input, as a terminal that stays quiet.
//! A console without a source is a stream that has already ended: its
//! receive buffers come back empty at once, inline on the notifying vCPU.
//!
//! # Threads and output
//!
//! The transmitq is processed inline in
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
//! A transmit chain with a device-writable buffer, a buffer outside guest
//! memory or more than [`MAX_CHAIN_BYTES`] bytes is dropped (none of its
//! bytes are written) and still returned, with length 0 like every transmit
//! chain. A receive chain with a device-readable buffer, no room at all or a
//! buffer outside guest memory stops the receiveq with DEVICE_NEEDS_RESET
//! before anything is read from the source for it: returning it empty would
//! read as the end of the stream. A broken queue (a looping chain, a chain
//! longer than the queue, a next index past the table, an available index
//! running ahead of the ring) stops that queue and sets DEVICE_NEEDS_RESET,
//! as block and net do. Guest errors are logged under the
//! [`GUEST_ERROR_LOG_LIMIT`](super::GUEST_ERROR_LOG_LIMIT) policy.

mod rx;

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
    /// Times a queue was stopped as broken (DEVICE_NEEDS_RESET).
    pub broken_queue: AtomicU64,
    /// Bytes read from the input source into receive buffers.
    pub bytes_in: AtomicU64,
    /// Receive chains returned to the driver, the empty ones that say the
    /// stream ended included.
    pub receive_chains: AtomicU64,
    /// Failed reads of the input source (each ends the stream).
    pub input_errors: AtomicU64,
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
    receive: Receive,
}

/// Who serves the receiveq while the device is active.
enum Receive {
    /// No source: the stream has ended; chains come back empty, inline.
    Ended { receiveq: Queue, broken: bool },
    /// The source's thread, which owns the receiveq.
    Thread { refill: EventFd, stop: EventFd, thread: Option<JoinHandle<()>> },
}

/// Where a console's input comes from, shared by the device and its
/// receive thread (and kept across resets: a stream is read once).
struct Input {
    source: Arc<File>,
    /// The source ended (or failed): no more reads.
    ended: Arc<AtomicBool>,
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
    input: Option<Input>,
    metrics: Arc<ConsoleMetrics>,
    log: Arc<GuestErrorLog>,
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
            input: None,
            metrics: Arc::new(ConsoleMetrics::default()),
            log: Arc::new(GuestErrorLog::default()),
            active: None,
            chain: Chain::default(),
        }
    }

    /// A console that also carries `source`'s bytes to the driver, on its
    /// receiveq, until the source ends (a read returns 0 or fails). Any
    /// readable descriptor will do: a pipe, a terminal, a regular file, a
    /// socket; a blocking one is read only when `poll` says it is ready, so
    /// the receive thread never hangs in `read` and a reset or drop can
    /// always stop it.
    pub fn with_input(out: Box<dyn Write + Send>, source: File) -> VirtioConsole {
        let mut console = VirtioConsole::new(out);
        console.input = Some(Input { source: Arc::new(source), ended: Arc::new(AtomicBool::new(false)) });
        console
    }

    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }

    fn transmit(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        if active.broken {
            return;
        }
        let (output, metrics, log) = (&mut self.output, &*self.metrics, &*self.log);
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

    /// QueueNotify 0: the driver posted receive buffers.
    fn receive(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        match &mut active.receive {
            Receive::Thread { refill, .. } => {
                // Fails only when the counter is saturated: a wake is pending anyway.
                let _ = refill.write(1);
            }
            Receive::Ended { receiveq, broken } => {
                if *broken {
                    return;
                }
                let (metrics, log, mem) = (&*self.metrics, &*self.log, &active.mem);
                let result = chain::drain(receiveq, mem, &mut self.chain, |_| {
                    // Whatever the chain: nothing is written, so nothing can go wrong.
                    metrics.receive_chains.fetch_add(1, Ordering::Relaxed);
                    0
                });
                *broken =
                    chain::settle(result, &active.interrupt, &metrics.broken_queue, log, "virtio-console: receiveq");
            }
        }
    }

    /// Stops and joins the receive thread, if any, and forgets the queues.
    fn deactivate(&mut self) {
        let Some(active) = self.active.take() else { return };
        if let Receive::Thread { stop, mut thread, .. } = active.receive {
            if let Err(err) = stop.write(1) {
                // Cannot happen with a fresh eventfd; without it the join would hang.
                tracing::error!("virtio-console: cannot stop the receive thread: {err}; leaving it running");
                return;
            }
            if let Some(thread) = thread.take() {
                if thread.join().is_err() {
                    tracing::error!("virtio-console: the receive thread panicked");
                }
            }
        }
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
        self.deactivate();
        let got = queues.len();
        let Ok([receiveq, transmitq]) = <[Queue; 2]>::try_from(queues) else {
            return Err(VirtioError::QueueCount { expected: 2, got });
        };
        let receive = match &self.input {
            None => Receive::Ended { receiveq, broken: false },
            Some(input) => {
                let refill = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
                let stop = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
                let worker = rx::RxWorker {
                    mem: mem.clone(),
                    queue: receiveq,
                    source: input.source.clone(),
                    ended: input.ended.clone(),
                    interrupt: interrupt.clone(),
                    refill: refill.try_clone().map_err(VirtioError::EventFd)?,
                    stop: stop.try_clone().map_err(VirtioError::EventFd)?,
                    metrics: self.metrics.clone(),
                    log: self.log.clone(),
                    chain: Chain::default(),
                };
                let thread = std::thread::Builder::new()
                    .name("mvm-console-rx".into())
                    .spawn(move || worker.run())
                    .map_err(VirtioError::SpawnThread)?;
                Receive::Thread { refill, stop, thread: Some(thread) }
            }
        };
        self.active = Some(Active { mem, transmitq, broken: false, interrupt, receive });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RECEIVE_QUEUE => self.receive(),
            TRANSMIT_QUEUE => self.transmit(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.deactivate();
    }
}

impl Drop for VirtioConsole {
    fn drop(&mut self) {
        self.deactivate();
    }
}

#[cfg(test)]
mod tests;
