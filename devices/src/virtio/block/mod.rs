//! virtio-blk backed by a raw image file (or a block device).
//!
//! One request queue, processed inline in [`VirtioDevice::queue_notify`] on
//! the vCPU thread that notified: no thread of its own, no lock beyond the
//! transport's bus mutex.
//!
//! Offered features: VERSION_1, RING_EVENT_IDX, SEG_MAX (queue size - 2),
//! BLK_SIZE (512), FLUSH, and RO for read-only images. Requests: IN, OUT,
//! FLUSH, GET_ID; any other type gets UNSUPP.
//!
//! Request layout: a 16-byte header (type, reserved, sector) in the
//! device-readable buffers, the data, and the status byte as the last
//! device-writable byte; the header and data may be split across
//! descriptors in any way. A request the device cannot carry out gets IOERR
//! and is still returned to the used ring: malformed chains (header short of
//! 16 bytes, a readable buffer after a writable one, data in the wrong
//! direction, a length not a multiple of 512), sectors past the end of the
//! disk, buffers outside guest memory, host I/O errors, and writes to a
//! read-only disk (IOERR rather than UNSUPP: the driver saw VIRTIO_BLK_F_RO,
//! and Linux reports both the same way). A chain with no device-writable byte
//! has nowhere to put a status: it is returned with length 0 and no I/O is
//! done. A broken queue (a looping chain, an available index past the ring) sets
//! DEVICE_NEEDS_RESET and is not looked at again until the driver resets.
//!
//! Data moves between the image and guest memory with read(2)/write(2)
//! straight into and out of guest RAM (vm-memory's volatile I/O on the file,
//! after a seek), never further than the range checked above. Every buffer
//! of a request is checked against guest memory before its first byte moves:
//! a request with one buffer straddling the end of RAM moves nothing, neither
//! into the image nor into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::chain::{self, Chain};
use super::{
    error_chain, read_config_bytes, GuestErrorLog, Interrupt, VirtioDevice, VirtioError, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

pub const SECTOR_SIZE: u64 = 512;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the request header.
const HEADER_LEN: u64 = 16;
/// Bytes of GET_ID's answer.
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The configuration space up to and including blk_size.
const CONFIG_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the size of disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk image {path} is {size} bytes, not a multiple of 512: pad it (`truncate -s %512 {path}`) or use a raw image"
    )]
    NotSectorMultiple { path: PathBuf, size: u64 },
    #[error("disk serial {serial:?} is {len} bytes; virtio-blk IDs hold at most 20")]
    SerialTooLong { serial: String, len: usize },
}

/// Counters of one block device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests completed, whatever their status.
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Requests answered IOERR or UNSUPP, or returned without a status.
    pub errors: AtomicU64,
    /// Queue notifications that found the queue broken.
    pub broken_queue: AtomicU64,
}

/// Why a request failed; the status byte says IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("sectors {sector}+{len}B lie past the end of the disk ({capacity}B)")]
    OutOfRange { sector: u64, len: u64, capacity: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("a buffer lies outside guest memory")]
    GuestMemory,
    #[error("host I/O error on the disk image")]
    Io(#[source] std::io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    broken: bool,
}

pub struct VirtioBlock {
    /// The image: the file, whether it is read-only and its size.
    disk: Disk,
    config: [u8; CONFIG_LEN],
    features: u64,
    metrics: Arc<BlockMetrics>,
    active: Option<Active>,
    chain: Chain,
    log: GuestErrorLog,
}

struct Disk {
    file: File,
    read_only: bool,
    /// Bytes; a multiple of SECTOR_SIZE.
    size: u64,
    id: [u8; ID_LEN],
}

impl VirtioBlock {
    /// Opens the raw image at `path` (read-only or read-write). `serial`
    /// answers GET_ID (at most 20 bytes; none answers 20 zero bytes).
    pub fn new(path: &Path, read_only: bool, serial: Option<String>) -> Result<VirtioBlock, BlockError> {
        let mut id = [0u8; ID_LEN];
        if let Some(serial) = serial {
            let len = serial.len();
            if len > ID_LEN {
                return Err(BlockError::SerialTooLong { serial, len });
            }
            id[..len].copy_from_slice(serial.as_bytes());
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open { path: path.to_owned(), source })?;
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| BlockError::Size { path: path.to_owned(), source })?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::NotSectorMultiple { path: path.to_owned(), size });
        }
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        // seg_max: a request is a header, data buffers and a status byte.
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(VirtioBlock {
            disk: Disk { file, read_only, size, id },
            config,
            features,
            metrics: Arc::new(BlockMetrics::default()),
            active: None,
            chain: Chain::default(),
            log: GuestErrorLog::default(),
        })
    }

    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        if active.broken {
            self.metrics.broken_queue.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (disk, metrics, log) = (&self.disk, &*self.metrics, &self.log);
        let mem = &active.mem;
        let result = chain::drain(&mut active.queue, mem, &mut self.chain, |chain| {
            handle_request(disk, mem, chain, metrics, log)
        });
        active.broken = chain::settle(
            result,
            &active.interrupt,
            &self.metrics.broken_queue,
            &self.log,
            "virtio-blk: request queue",
        );
    }
}

/// Carries out one request and writes its status; returns the number of
/// bytes written into the chain's buffers (data and status).
fn handle_request(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    metrics: &BlockMetrics,
    log: &GuestErrorLog,
) -> u32 {
    metrics.requests.fetch_add(1, Ordering::Relaxed);
    // Without a status byte in guest memory the request cannot be answered:
    // return it untouched, with no I/O done.
    let status_addr = status_byte(chain).filter(|&addr| GuestMemory::check_range(mem, addr, 1, Permissions::Write));
    let Some(status_addr) = status_addr else {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        if log.allow("virtio-blk") {
            tracing::warn!("virtio-blk: request {} has no device-writable status byte in guest memory", chain.head);
        }
        return 0;
    };
    let (status, written) = match execute(disk, mem, chain, metrics) {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(err) => {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
            if log.allow("virtio-blk") {
                tracing::warn!("virtio-blk: request {} failed: {}", chain.head, error_chain(&err));
            }
            (err.status(), 0)
        }
    };
    if mem.write_obj(status, status_addr).is_err() {
        // Checked above; guest memory does not shrink.
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    // At most u32::MAX bytes of data (a chain of 4 GiB or more is broken).
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

/// The last device-writable byte of the chain.
fn status_byte(chain: &Chain) -> Option<GuestAddress> {
    let last = chain.writable.iter().rev().find(|s| s.len > 0)?;
    last.addr.checked_add(u64::from(last.len) - 1)
}

/// Returns the number of data bytes written into guest memory.
fn execute(disk: &Disk, mem: &GuestMemoryMmap, chain: &Chain, metrics: &BlockMetrics) -> Result<u64, RequestError> {
    if chain.misordered {
        return Err(RequestError::Malformed("a device-readable buffer follows a device-writable one"));
    }
    let readable = chain.readable_len();
    // Everything writable but the status byte.
    let writable = chain.writable_len() - 1;
    if readable < HEADER_LEN {
        return Err(RequestError::Malformed("the device-readable header is shorter than 16 bytes"));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    chain::gather(mem, &chain.readable, 0, &mut header).map_err(|_| RequestError::GuestMemory)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14], header[15],
    ]);
    match kind {
        VIRTIO_BLK_T_IN => {
            if readable != HEADER_LEN {
                return Err(RequestError::Malformed("a read has device-readable data buffers"));
            }
            let offset = disk.check_range(sector, writable)?;
            if !chain::in_guest_memory(mem, &chain.writable, 0, writable) {
                return Err(RequestError::GuestMemory);
            }
            let mut file = &disk.file;
            let mut pos = offset;
            chain::for_each_piece(&chain.writable, 0, writable, |addr, n| {
                file.seek(SeekFrom::Start(pos)).map_err(RequestError::Io)?;
                mem.read_exact_volatile_from(addr, &mut file, n).map_err(|e| RequestError::Io(to_io(e)))?;
                pos += n as u64;
                Ok(())
            })?;
            metrics.read_bytes.fetch_add(writable, Ordering::Relaxed);
            Ok(writable)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            if writable != 0 {
                return Err(RequestError::Malformed("a write has device-writable data buffers"));
            }
            let len = readable - HEADER_LEN;
            let offset = disk.check_range(sector, len)?;
            if !chain::in_guest_memory(mem, &chain.readable, HEADER_LEN, len) {
                return Err(RequestError::GuestMemory);
            }
            let mut file = &disk.file;
            let mut pos = offset;
            chain::for_each_piece(&chain.readable, HEADER_LEN, len, |addr, n| {
                file.seek(SeekFrom::Start(pos)).map_err(RequestError::Io)?;
                mem.write_all_volatile_to(addr, &mut file, n).map_err(|e| RequestError::Io(to_io(e)))?;
                pos += n as u64;
                Ok(())
            })?;
            metrics.write_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            metrics.flushes.fetch_add(1, Ordering::Relaxed);
            if !disk.read_only {
                disk.file.sync_data().map_err(RequestError::Io)?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = writable.min(ID_LEN as u64);
            chain::scatter(mem, &chain.writable, 0, &disk.id[..n as usize]).map_err(|_| RequestError::GuestMemory)?;
            Ok(n)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

impl Disk {
    /// The byte offset of `len` bytes at `sector`, if they lie on the disk.
    fn check_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::Malformed("the data length is not a multiple of 512"));
        }
        let start = sector.checked_mul(SECTOR_SIZE);
        match start.and_then(|start| start.checked_add(len)) {
            Some(end) if end <= self.size => Ok(end - len),
            _ => Err(RequestError::OutOfRange { sector, len, capacity: self.size }),
        }
    }
}

fn to_io(err: vm_memory::GuestMemoryError) -> std::io::Error {
    match err {
        vm_memory::GuestMemoryError::IOError(e) => e,
        other => std::io::Error::other(other),
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked: u64,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VirtioError> {
        if queues.len() != 1 {
            return Err(VirtioError::QueueCount { expected: 1, got: queues.len() });
        }
        let queue = queues.remove(0);
        self.active = Some(Active { mem, queue, interrupt, broken: false });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests;
