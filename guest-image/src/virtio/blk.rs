//! virtio-blk driver: one request at a time, which mvm's device completes
//! during the notify exit.

use alloc::boxed::Box;

use super::mmio::{InitError, Mmio};
use super::queue::{Buffer, Descriptor, Virtqueue};

pub const SECTOR: usize = 512;
const QUEUE_SIZE: u16 = 16;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Never written by a device: tells "no status came back" apart.
const S_NONE: u8 = 0xff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    IoError,
    Unsupported,
    /// The device used the request without writing a status.
    NoStatus,
    /// The device marked itself broken (DEVICE_NEEDS_RESET).
    DeviceBroken,
    /// The queue had no room (a driver bug: one request at a time).
    QueueFull,
}

#[repr(C)]
pub struct Header {
    pub kind: u32,
    pub reserved: u32,
    pub sector: u64,
}

pub struct Blk {
    mmio: Mmio,
    queue: Virtqueue,
    pub capacity_sectors: u64,
    pub read_only: bool,
}

impl Blk {
    pub fn new(mmio: Mmio) -> Result<Blk, InitError> {
        let features = mmio.begin(0, F_RO | F_FLUSH)?;
        let queue = Virtqueue::new(QUEUE_SIZE).poll_only();
        mmio.setup_queue(0, &queue)?;
        mmio.driver_ok();
        let capacity_sectors = mmio.config_u64(0);
        Ok(Blk { mmio, queue, capacity_sectors, read_only: features & F_RO != 0 })
    }

    /// Submits one chain and waits until the device has used it; returns
    /// the status byte it wrote.
    fn submit(&mut self, chain: &[Buffer], status: &mut u8) -> Result<(), BlkError> {
        *status = S_NONE;
        self.queue.add(chain).ok_or(BlkError::QueueFull)?;
        self.mmio.notify(0);
        self.wait()?;
        // SAFETY: a valid byte the device wrote during the notify.
        match unsafe { core::ptr::read_volatile(status) } {
            S_OK => Ok(()),
            S_IOERR => Err(BlkError::IoError),
            S_UNSUPP => Err(BlkError::Unsupported),
            _ => Err(BlkError::NoStatus),
        }
    }

    /// Waits for the device to use the outstanding chain.
    fn wait(&mut self) -> Result<(), BlkError> {
        self.mmio.wait_used(&mut self.queue).map_err(|_| BlkError::DeviceBroken)
    }

    fn transfer(&mut self, kind: u32, sector: u64, data: Buffer) -> Result<(), BlkError> {
        let header = Box::new(Header { kind, reserved: 0, sector });
        let mut status = Box::new(S_NONE);
        let chain = [Buffer::readable(&*header), data, Buffer::writable(&mut *status)];
        self.submit(&chain, &mut status)
    }

    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.transfer(T_IN, sector, Buffer::writable(buf))
    }

    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.transfer(T_OUT, sector, Buffer::readable(buf))
    }

    pub fn flush(&mut self) -> Result<(), BlkError> {
        let header = Box::new(Header { kind: T_FLUSH, reserved: 0, sector: 0 });
        let mut status = Box::new(S_NONE);
        let chain = [Buffer::readable(&*header), Buffer::writable(&mut *status)];
        self.submit(&chain, &mut status)
    }

    /// The device's ID string (up to 20 bytes, NUL-padded).
    pub fn id(&mut self) -> Result<[u8; 20], BlkError> {
        let mut id = Box::new([0u8; 20]);
        self.transfer(T_GET_ID, 0, Buffer::writable(&mut *id))?;
        Ok(*id)
    }

    /// Submits descriptors exactly as given (for the robustness self-test)
    /// and waits for the device to use them or to mark itself broken.
    pub fn submit_raw(&mut self, chain: &[Descriptor]) -> Result<(), BlkError> {
        self.queue.add_raw(chain).ok_or(BlkError::QueueFull)?;
        self.mmio.notify(0);
        self.wait()
    }

    /// Resets the device and sets it up again, as a driver does after
    /// DEVICE_NEEDS_RESET. The old queue's memory is not reused.
    pub fn reinit(self) -> Result<Blk, InitError> {
        Blk::new(self.mmio)
    }
}
