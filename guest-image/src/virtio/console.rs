//! virtio-console as an output stream: the job's stdout and stderr each go
//! to one console device. Output is gathered in a buffer and handed over in
//! one chain, so a VM exit carries up to 64 KiB instead of one byte as on the
//! UART. The buffer is handed over when it is full, when a write comes 1 ms
//! or more after the last hand-over (so output reaches the host live), and
//! whenever the job blocks or ends.

use alloc::vec::Vec;

use super::mmio::{InitError, Mmio};
use super::queue::{Buffer, Virtqueue};
use crate::time::monotonic_ns;

const RECEIVE: u16 = 0;
const TRANSMIT: u16 = 1;
const BUFFER_LEN: usize = 64 * 1024;
const LIVE_NS: u64 = 1_000_000;

pub struct OutputStream {
    mmio: Mmio,
    /// Set up because the device wants every queue ready; never used.
    _receive: Virtqueue,
    transmit: Virtqueue,
    buffer: Vec<u8>,
    last_handover_ns: u64,
    /// The device broke (DEVICE_NEEDS_RESET): output is dropped from then on.
    broken: bool,
}

impl OutputStream {
    pub fn new(mmio: Mmio) -> Result<OutputStream, InitError> {
        mmio.begin(0, 0)?;
        // The device wants both queues ready; nothing is ever received.
        let receive = Virtqueue::new(1);
        let transmit = Virtqueue::new(4).poll_only();
        mmio.setup_queue(RECEIVE, &receive)?;
        mmio.setup_queue(TRANSMIT, &transmit)?;
        mmio.driver_ok();
        Ok(OutputStream {
            mmio,
            _receive: receive,
            transmit,
            buffer: Vec::with_capacity(BUFFER_LEN),
            last_handover_ns: 0,
            broken: false,
        })
    }

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
