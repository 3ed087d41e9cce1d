//! virtio-net driver and its smoltcp device. Receive buffers stay posted in
//! the RX queue; frames the device filled are copied out and the buffer goes
//! back. Transmits are completed by mvm's device during the notify exit.

use alloc::boxed::Box;
use alloc::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::mmio::{InitError, Mmio};
use super::queue::{Buffer, Virtqueue};

const F_MAC: u64 = 1 << 5;
const RX: u16 = 0;
const TX: u16 = 1;
const QUEUE_SIZE: u16 = 32;
/// The virtio-net header of a VERSION_1 device (num_buffers included).
const HEADER_LEN: usize = 12;
const BUFFER_LEN: usize = 2048;
const MTU: usize = 1500;

pub struct Net {
    mmio: Mmio,
    rx: Virtqueue,
    tx: Virtqueue,
    /// RX buffers by the head descriptor they were posted under.
    rx_buffers: Vec<(u16, Box<[u8; BUFFER_LEN]>)>,
    tx_in_flight: Vec<(u16, Box<[u8; BUFFER_LEN]>)>,
    /// Frames queued and RX buffers returned since the device was last told.
    tx_queued: bool,
    rx_returned: bool,
    pub mac: [u8; 6],
}

impl Net {
    pub fn new(mmio: Mmio) -> Result<Net, InitError> {
        mmio.begin(F_MAC, 0)?;
        let rx = Virtqueue::new(QUEUE_SIZE);
        let tx = Virtqueue::new(QUEUE_SIZE).poll_only();
        mmio.setup_queue(RX, &rx)?;
        mmio.setup_queue(TX, &tx)?;
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = mmio.config_u8(i as u64);
        }
        let mut net = Net {
            mmio,
            rx,
            tx,
            rx_buffers: Vec::new(),
            tx_in_flight: Vec::new(),
            tx_queued: false,
            rx_returned: false,
            mac,
        };
        for _ in 0..QUEUE_SIZE {
            net.post_rx(Box::new([0; BUFFER_LEN]));
        }
        net.mmio.driver_ok();
        net.mmio.notify(RX);
        Ok(net)
    }

    fn post_rx(&mut self, mut buffer: Box<[u8; BUFFER_LEN]>) {
        let head = self.rx.add(&[Buffer::writable(&mut *buffer)]).expect("RX queue sized for every buffer");
        self.rx_buffers.push((head, buffer));
    }

    /// A received frame, without its virtio-net header.
    fn receive_frame(&mut self) -> Option<Vec<u8>> {
        let (head, len) = self.rx.pop_used()?;
        let at = self.rx_buffers.iter().position(|(h, _)| *h == head)?;
        let (_, buffer) = self.rx_buffers.swap_remove(at);
        let len = (len as usize).min(BUFFER_LEN);
        let frame = buffer.get(HEADER_LEN..len).map(<[u8]>::to_vec);
        self.post_rx(buffer);
        self.rx_returned = true;
        frame
    }

    /// Tells the device about frames queued and buffers returned since the
    /// last call: one exit per batch instead of one per frame.
    pub fn kick(&mut self) {
        if core::mem::take(&mut self.tx_queued) {
            self.mmio.notify(TX);
        }
        if core::mem::take(&mut self.rx_returned) {
            self.mmio.notify(RX);
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some((head, _)) = self.tx.pop_used() {
            self.tx_in_flight.retain(|(h, _)| *h != head);
        }
    }

    fn transmit_frame<R>(&mut self, frame_len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reclaim_tx();
        let mut buffer = Box::new([0u8; BUFFER_LEN]);
        let len = (HEADER_LEN + frame_len).min(BUFFER_LEN);
        let result = fill(&mut buffer[HEADER_LEN..len]);
        let chain = [Buffer { addr: buffer.as_ptr() as u64, len: len as u32, device_writes: false }];
        let mut head = self.tx.add(&chain);
        if head.is_none() {
            // Every descriptor is queued: hand the batch over (mvm's device
            // sends it during the notify) and take them back.
            self.kick();
            self.reclaim_tx();
            head = self.tx.add(&chain);
        }
        // Still full: drop the frame, as a full NIC would.
        if let Some(head) = head {
            self.tx_in_flight.push((head, buffer));
            self.tx_queued = true;
        }
        result
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut Net);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.transmit_frame(len, f)
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.receive_frame()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(usize::from(QUEUE_SIZE));
        caps
    }
}
