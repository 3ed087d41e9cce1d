//! virtio-console as a byte stream each way: the job's stdout and stderr
//! each go to one console device, and its stdin comes from the first one's
//! receive queue.
//!
//! Output is gathered in a buffer and handed over in one chain, so a VM exit
//! carries up to 64 KiB instead of one byte as on the UART. The buffer is
//! handed over when it is full, when a write comes 1 ms or more after the
//! last hand-over (so output reaches the host live), and whenever the job
//! blocks or ends.
//!
//! Input: at the job's first read, [`RECEIVE_BUFFERS`] buffers of 64 KiB are
//! posted (none before, so a job that never reads its stdin never makes mvm
//! read its own). mvm's device fills them from its source as they come and
//! returns them in order; each is copied out as the job reads and posted
//! again once empty, with a notify only when the device has run out of
//! buffers and asked for one. With nothing there, the driver polls a little,
//! then turns the device's signals on and halts until it returns a buffer.
//! A buffer returned with length 0 is the end of the stream (mvm's own
//! convention, see the device), as is a device that needs a reset.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::mmio::{InitError, Mmio, STATUS_NEEDS_RESET};
use super::queue::{Buffer, Virtqueue};
use crate::idle::halt_until;
use crate::time::monotonic_ns;

const RECEIVE: u16 = 0;
const TRANSMIT: u16 = 1;
const BUFFER_LEN: usize = 64 * 1024;
const LIVE_NS: u64 = 1_000_000;
/// Receive buffers kept posted while the job reads: enough for the device to
/// fill the next while the job consumes one, and few, since guest RAM is
/// the job's.
pub const RECEIVE_BUFFERS: u16 = 4;
/// How long a read polls for input before it halts: a producer that keeps
/// up answers within microseconds, and a halt costs two exits.
const INPUT_SPIN_NS: u64 = 50_000;
/// The longest halt while waiting for input; the device's signal ends it
/// sooner. Bounded so that a signal lost to a bug costs time, not the job.
const INPUT_HALT_NS: u64 = 1_000_000_000;

/// Sets up a console device: its output side and its input side.
pub fn open(mmio: Mmio) -> Result<(OutputStream, InputStream), InitError> {
    mmio.begin(0, 0)?;
    // Signals off until a read waits (see InputStream::wait).
    let receive = Virtqueue::new(RECEIVE_BUFFERS).poll_only();
    let transmit = Virtqueue::new(4).poll_only();
    mmio.setup_queue(RECEIVE, &receive)?;
    mmio.setup_queue(TRANSMIT, &transmit)?;
    mmio.driver_ok();
    let output = OutputStream {
        mmio: mmio.clone(),
        transmit,
        buffer: Vec::with_capacity(BUFFER_LEN),
        last_handover_ns: 0,
        broken: false,
    };
    let input =
        InputStream { mmio, receive, posted: Vec::new(), current: None, started: false, reposted: false, ended: false };
    Ok((output, input))
}

pub struct OutputStream {
    mmio: Mmio,
    transmit: Virtqueue,
    buffer: Vec<u8>,
    last_handover_ns: u64,
    /// The device broke (DEVICE_NEEDS_RESET): output is dropped from then on.
    broken: bool,
}

impl OutputStream {
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = BUFFER_LEN - self.buffer.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = rest;
            if self.buffer.len() == BUFFER_LEN {
                self.flush();
            }
        }
        if monotonic_ns() - self.last_handover_ns >= LIVE_NS {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        self.last_handover_ns = monotonic_ns();
        if self.buffer.is_empty() || self.broken {
            self.buffer.clear();
            return;
        }
        if self.transmit.add(&[Buffer::readable(&self.buffer[..])]).is_none() {
            self.broken = true;
            return;
        }
        self.mmio.notify(TRANSMIT);
        self.broken = self.mmio.wait_used(&mut self.transmit).is_err();
        self.buffer.clear();
    }
}

/// A returned receive buffer being read: its bytes, how many the device
/// wrote, how many the job has taken.
struct Filled {
    buffer: Box<[u8]>,
    len: usize,
    taken: usize,
}

pub struct InputStream {
    mmio: Mmio,
    receive: Virtqueue,
    /// Buffers with the device, by the head descriptor they went under.
    posted: Vec<(u16, Box<[u8]>)>,
    current: Option<Filled>,
    /// The buffers have been posted (at the first read).
    started: bool,
    /// Buffers went back since the device was last told.
    reposted: bool,
    /// The stream ended: the device returned an empty buffer, or broke.
    ended: bool,
}

impl InputStream {
    /// Fills the start of `buf` with what the device has delivered, waiting
    /// only while nothing has come yet; 0 at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        self.start();
        let mut done = 0;
        while done < buf.len() {
            if let Some(filled) = &mut self.current {
                let n = (filled.len - filled.taken).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&filled.buffer[filled.taken..filled.taken + n]);
                filled.taken += n;
                done += n;
                if filled.taken == filled.len {
                    let filled = self.current.take().expect("just read");
                    self.post(filled.buffer);
                }
                continue;
            }
            if self.ended {
                break;
            }
            if self.next_filled() {
                continue;
            }
            if done > 0 {
                break;
            }
            self.wait();
        }
        self.kick();
        done
    }

    /// Whether a read now would wait: nothing delivered and not ended.
    /// Asking starts the stream, so that a job polling its stdin before
    /// reading it gets the host's bytes.
    pub fn would_wait(&mut self) -> bool {
        self.start();
        !self.ended && self.current.is_none() && !self.receive.has_used()
    }

    /// Hands the device its receive buffers, the first time only: a job
    /// that never reads its stdin never makes mvm read its own.
    fn start(&mut self) {
        if !self.started {
            self.started = true;
            for _ in 0..RECEIVE_BUFFERS {
                self.post(vec![0; BUFFER_LEN].into_boxed_slice());
            }
            self.mmio.notify(RECEIVE);
            self.reposted = false;
        }
    }

    fn post(&mut self, mut buffer: Box<[u8]>) {
        let head = self.receive.add(&[Buffer::writable(&mut *buffer)]).expect("the queue holds every buffer");
        self.posted.push((head, buffer));
        self.reposted = true;
    }

    /// Takes the next buffer the device returned, if any, as `current`;
    /// an empty one ends the stream.
    fn next_filled(&mut self) -> bool {
        let Some((head, len)) = self.receive.pop_used() else { return false };
        let Some(at) = self.posted.iter().position(|(h, _)| *h == head) else {
            // Not a buffer of ours: mvm's device does not do that.
            self.ended = true;
            return true;
        };
        let (_, buffer) = self.posted.swap_remove(at);
        let len = (len as usize).min(buffer.len());
        if len == 0 {
            self.ended = true;
        } else {
            self.current = Some(Filled { buffer, len, taken: 0 });
        }
        true
    }

    /// Tells the device of buffers posted again, if it asked to be told.
    fn kick(&mut self) {
        if core::mem::take(&mut self.reposted) && self.receive.device_wants_notify() {
            self.mmio.notify(RECEIVE);
        }
    }

    /// Returns once the device has returned a buffer (or broke, which ends
    /// the stream).
    fn wait(&mut self) {
        self.kick();
        let spin_until = monotonic_ns() + INPUT_SPIN_NS;
        while monotonic_ns() < spin_until {
            if self.receive.has_used() {
                return;
            }
            core::hint::spin_loop();
        }
        if self.mmio.status() & STATUS_NEEDS_RESET != 0 {
            self.ended = true;
            return;
        }
        self.receive.set_interrupts(true);
        if !self.receive.has_used() {
            halt_until(monotonic_ns() + INPUT_HALT_NS);
        }
        self.receive.set_interrupts(false);
    }
}
