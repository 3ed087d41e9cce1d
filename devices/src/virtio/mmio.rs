//! The virtio-mmio transport, version 2 ("modern", virtio spec 4.2.2), as a
//! [`BusDevice`] over one [`VirtioDevice`].
//!
//! Registers are 32 bits wide and 4-byte aligned; other accesses to them are
//! ignored (reads return zeros). The device's configuration space starts at
//! 0x100 and takes accesses of any width.
//!
//! Status negotiation: the driver may only add bits to Status (writing 0
//! resets). FEATURES_OK is refused (left clear, for the driver to see) unless
//! ACKNOWLEDGE and DRIVER are set, the driver's features are a subset of the
//! device's and include VERSION_1. DRIVER_OK is refused without FEATURES_OK;
//! when accepted, every queue must be ready and valid (`Queue::is_valid`),
//! or the device is not activated and Status shows DEVICE_NEEDS_RESET.
//!
//! Threading: the bus holds this transport in its own mutex; every register
//! access and every queue notification runs under it, on a vCPU thread.
//! Device threads (net RX) only touch the shared [`Interrupt`] (atomics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{
    GuestErrorLog, Interrupt, VirtioDevice, VirtioError, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::{BusDevice, VmRequest};

/// The size of one virtio-mmio device's register window.
pub const MMIO_LEN: u64 = 0x1000;
/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) MMIO layout.
pub const MMIO_VERSION: u32 = 2;
/// "MVM\0" as the VendorID.
pub const VENDOR_ID: u32 = 0x4d56_4d00;

// Register offsets (virtio spec 4.2.2).
const MAGIC: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const VENDOR: u64 = 0x0c;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
/// The queue-notify register: also where a VMM may hang an ioeventfd.
pub const QUEUE_NOTIFY: u64 = 0x50;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_DRIVER_LOW: u64 = 0x90;
const QUEUE_DRIVER_HIGH: u64 = 0x94;
const QUEUE_DEVICE_LOW: u64 = 0xa0;
const QUEUE_DEVICE_HIGH: u64 = 0xa4;
const CONFIG_GENERATION: u64 = 0xfc;
const CONFIG: u64 = 0x100;

/// Counters of one transport.
#[derive(Debug, Default)]
pub struct MmioMetrics {
    /// QueueNotify writes handed to the device: one MMIO exit each.
    pub notifications: AtomicU64,
    /// Register accesses or status changes refused as invalid.
    pub guest_errors: AtomicU64,
    /// Times the device was activated (DRIVER_OK accepted).
    pub activations: AtomicU64,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// Per queue: the driver wrote a size or an address that was refused,
    /// so the ring it set up is not the one the device would use.
    queue_refused: Vec<bool>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero word past the 64 feature bits.
    driver_features_beyond_64: bool,
    queue_sel: u32,
    active: bool,
    metrics: Arc<MmioMetrics>,
    log: GuestErrorLog,
}

impl MmioTransport {
    /// `interrupt` is the VMM's: called whenever the device has used buffers
    /// (or needs a reset), from the vCPU thread that notified or a device thread.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<MmioTransport, VirtioError> {
        let queues = new_queues(device.queue_max_sizes())?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(interrupt)),
            queue_refused: vec![false; queues.len()],
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_sel: 0,
            active: false,
            metrics: Arc::new(MmioMetrics::default()),
            log: GuestErrorLog::default(),
        })
    }

    pub fn metrics(&self) -> Arc<MmioMetrics> {
        self.metrics.clone()
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device runs (DRIVER_OK accepted, no reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn guest_error(&self, what: std::fmt::Arguments) {
        self.metrics.guest_errors.fetch_add(1, Ordering::Relaxed);
        if self.log.allow("virtio-mmio") {
            tracing::warn!("virtio-mmio (device type {}): {what}", self.device.device_type());
        }
    }

    /// Queue registers may change between FEATURES_OK and DRIVER_OK, while
    /// the selected queue is not ready.
    fn queue_for_setup(&mut self, reg: u64) -> Option<&mut Queue> {
        let ok = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        let sel = self.queue_sel;
        if ok && self.queues.get(sel as usize).is_some_and(|q| !q.ready()) {
            return self.queues.get_mut(sel as usize);
        }
        self.guest_error(format_args!(
            "write to queue register {reg:#x} of queue {sel} refused (status {:#x})",
            self.status
        ));
        None
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status(),
            // Static configuration spaces: the generation never changes.
            CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => {
                if let Some(q) = self.queue_for_setup(offset) {
                    if q.try_set_size(value.try_into().unwrap_or(0)).is_err() {
                        let max = q.max_size();
                        self.refuse_queue_setup(format_args!("queue size {value} refused (max {max}, power of two)"));
                    }
                }
            }
            // Linux writes 0 to QueueReady of queues it tears down after a
            // reset; that is already so.
            QUEUE_READY if value == 0 && self.queues.get(self.queue_sel as usize).is_some_and(|q| !q.ready()) => {}
            QUEUE_READY => {
                if let Some(q) = self.queue_for_setup(offset) {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW
            | QUEUE_DEVICE_HIGH => self.write_queue_address(offset, value),
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            _ => self.guest_error(format_args!("write to read-only or unknown register {offset:#x}")),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0 || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.guest_error(format_args!("DriverFeatures write refused (status {:#x})", self.status));
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => self.driver_features_beyond_64 |= value != 0,
        }
    }

    fn write_queue_address(&mut self, offset: u64, value: u32) {
        let Some(q) = self.queue_for_setup(offset) else { return };
        let current = match offset {
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => q.desc_table(),
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => q.avail_ring(),
            _ => q.used_ring(),
        };
        let address = GuestAddress(if offset & 4 == 0 {
            (current & !0xffff_ffff) | u64::from(value)
        } else {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        });
        // The try_ setters refuse misaligned addresses without logging.
        let result = match offset {
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => q.try_set_desc_table_address(address),
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => q.try_set_avail_ring_address(address),
            _ => q.try_set_used_ring_address(address),
        };
        if result.is_err() {
            self.refuse_queue_setup(format_args!("misaligned ring address {:#x} (register {offset:#x})", address.0));
        }
    }

    /// Remembers that the selected queue's setup went wrong: DRIVER_OK will
    /// then set DEVICE_NEEDS_RESET instead of starting the device.
    fn refuse_queue_setup(&mut self, what: std::fmt::Arguments) {
        if let Some(refused) = self.queue_refused.get_mut(self.queue_sel as usize) {
            *refused = true;
        }
        self.guest_error(format_args!("queue {}: {what}", self.queue_sel));
    }

    /// Whether queue `index` is ready and its rings lie in guest memory.
    /// Checked here before `Queue::is_valid`, which logs (through `log`,
    /// without a limit) every time it fails.
    fn queue_usable(&self, index: usize) -> bool {
        let Some(q) = self.queues.get(index) else { return false };
        let size = u64::from(q.size());
        let fits = |addr: u64, len: u64| {
            GuestMemory::check_range(&self.mem, GuestAddress(addr), len as usize, Permissions::ReadWrite)
        };
        !self.queue_refused[index]
            && q.ready()
            && fits(q.desc_table(), 16 * size)
            && fits(q.avail_ring(), 6 + 2 * size)
            && fits(q.used_ring(), 6 + 8 * size)
            && q.is_valid(&self.mem)
    }

    fn notify(&mut self, value: u32) {
        if !self.active || self.interrupt.needs_reset() {
            // Before DRIVER_OK a notification means nothing; after a failure
            // the driver must reset first.
            if !self.active {
                self.guest_error(format_args!("QueueNotify {value} before DRIVER_OK"));
            }
            return;
        }
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        match u16::try_from(value) {
            Ok(index) if usize::from(index) < self.queues.len() => {
                self.metrics.notifications.fetch_add(1, Ordering::Relaxed);
                self.device.queue_notify(index);
            }
            _ => self.guest_error(format_args!("QueueNotify for queue {value}, which does not exist")),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if old & !value != 0 {
            self.guest_error(format_args!("Status {value:#x} clears bits of {old:#x}; only a reset (0) may"));
            return;
        }
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable(value) {
            // Leave FEATURES_OK clear: the driver reads Status back and gives up.
            self.status = value & !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
            return;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                self.guest_error(format_args!("DRIVER_OK without FEATURES_OK (status {value:#x})"));
                self.status = value & !VIRTIO_CONFIG_S_DRIVER_OK;
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&self, status: u32) -> bool {
        let offered = self.device.features();
        let wanted = self.driver_features;
        let reason = if status & (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
            != VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        {
            "ACKNOWLEDGE and DRIVER are not both set"
        } else if wanted & !offered != 0 || self.driver_features_beyond_64 {
            "the driver accepted features the device does not offer"
        } else if wanted & VIRTIO_F_VERSION_1 == 0 {
            "the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)"
        } else {
            return true;
        };
        self.guest_error(format_args!("FEATURES_OK refused: {reason} (driver {wanted:#x}, device {offered:#x})"));
        false
    }

    fn activate(&mut self) {
        if let Some(index) = (0..self.queues.len()).find(|&i| !self.queue_usable(i)) {
            self.guest_error(format_args!(
                "DRIVER_OK with queue {index} not ready, refused in setup, or outside guest memory"
            ));
            self.interrupt.signal_needs_reset();
            return;
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let max_sizes = self.device.queue_max_sizes();
        let fresh = match new_queues(max_sizes) {
            Ok(fresh) => fresh,
            // Checked in new(); a device whose sizes change is a bug, not the guest's.
            Err(err) => {
                tracing::error!("virtio device type {}: {err}", self.device.device_type());
                self.interrupt.signal_needs_reset();
                return;
            }
        };
        let mut queues = std::mem::replace(&mut self.queues, fresh);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        // Keep the setup values readable (QueueReady, sizes) while active.
        for (kept, given) in self.queues.iter_mut().zip(&queues) {
            kept.set_ready(true);
            let _ = kept.try_set_size(given.size());
        }
        match self.device.activate(self.mem.clone(), self.driver_features, queues, self.interrupt.clone()) {
            Ok(()) => {
                self.active = true;
                self.metrics.activations.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                // Host trouble (threads, fds), but the guest can retry at will: limited too.
                if self.log.allow("virtio-mmio") {
                    tracing::warn!("virtio device type {} failed to start: {err}", self.device.device_type());
                }
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_refused.fill(false);
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_sel = 0;
        // The device's threads are joined: nothing sets bits behind our back.
        self.interrupt.clear();
    }
}

fn new_queues(max_sizes: &[u16]) -> Result<Vec<Queue>, VirtioError> {
    max_sizes.iter().map(|&max| Queue::new(max).map_err(|_| VirtioError::QueueSize(max))).collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || offset & 3 != 0 {
            self.guest_error(format_args!("{}-byte read of register {offset:#x}", data.len()));
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => self.guest_error(format_args!("{}-byte write to register {offset:#x}", data.len())),
        }
        None
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
