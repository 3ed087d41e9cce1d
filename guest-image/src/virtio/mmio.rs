//! The driver side of the virtio-mmio transport (virtio 1.x, register
//! layout "version 2"). Every register access is a VM exit.

use core::arch::asm;
use core::ptr::read_volatile;

use super::queue::Virtqueue;
use crate::idle::halt_until;
use crate::time::monotonic_ns;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub const F_VERSION_1: u64 = 1 << 32;

/// How long a driver polls for a used chain before it halts, and for how long
/// at a time it halts then.
const SPIN_NS: u64 = 200_000;
const HALT_STEP_NS: u64 = 1_000_000;

/// The device set DEVICE_NEEDS_RESET.
pub struct DeviceBroken;

pub enum InitError {
    /// The device does not offer what the driver needs.
    MissingFeatures(u64),
    /// The device refused the features (FEATURES_OK did not stick).
    FeaturesRefused,
    QueueTooSmall {
        index: u16,
        max: u16,
    },
}

impl core::fmt::Debug for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::MissingFeatures(bits) => write!(f, "the device lacks required features {bits:#x}"),
            InitError::FeaturesRefused => write!(f, "the device refused the features"),
            InitError::QueueTooSmall { index, max } => write!(f, "queue {index} allows only {max} entries"),
        }
    }
}

/// Copies are handles on the same device (a console's input and output).
#[derive(Clone)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// A virtio-mmio device at `base` (identity-mapped), if one answers.
    pub fn probe(base: u64) -> Option<Mmio> {
        let mmio = Mmio { base };
        (mmio.read(MAGIC) == MAGIC_VALUE && mmio.read(VERSION) == 2 && mmio.read(DEVICE_ID) != 0).then_some(mmio)
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: the window is mapped device memory; register reads have no
        // effect on guest memory.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    /// A register write is also a compiler barrier: the device may read and
    /// write any buffer the driver handed it during this very exit (mvm
    /// completes requests inline), so no access may move across it.
    fn write(&self, offset: u64, value: u32) {
        let register = self.base + offset;
        // SAFETY: the window is mapped device memory; without `nomem`, the
        // compiler assumes the store may touch any memory, which it may.
        unsafe { asm!("mov dword ptr [{}], {:e}", in(reg) register, in(reg) value, options(nostack, preserves_flags)) };
    }

    pub fn device_type(&self) -> u32 {
        self.read(DEVICE_ID)
    }

    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    pub fn config_u8(&self, offset: u64) -> u8 {
        // SAFETY: config space is byte-addressable device memory.
        unsafe { read_volatile((self.base + CONFIG + offset) as *const u8) }
    }

    pub fn config_u64(&self, offset: u64) -> u64 {
        u64::from(self.read(CONFIG + offset)) | u64::from(self.read(CONFIG + offset + 4)) << 32
    }

    /// Resets the device and negotiates `required | optional` features;
    /// returns the features agreed.
    pub fn begin(&self, required: u64, optional: u64) -> Result<u64, InitError> {
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            self.write(DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(self.read(DEVICE_FEATURES)) << (32 * sel);
        }
        let required = required | F_VERSION_1;
        if offered & required != required {
            self.write(STATUS, STATUS_FAILED);
            return Err(InitError::MissingFeatures(required & !offered));
        }
        let agreed = offered & (required | optional);
        for sel in 0..2 {
            self.write(DRIVER_FEATURES_SEL, sel);
            self.write(DRIVER_FEATURES, (agreed >> (32 * sel)) as u32);
        }
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(InitError::FeaturesRefused);
        }
        Ok(agreed)
    }

    /// The largest queue the device allows for `index`.
    pub fn queue_max(&self, index: u16) -> u16 {
        self.write(QUEUE_SEL, u32::from(index));
        self.read(QUEUE_NUM_MAX) as u16
    }

    pub fn setup_queue(&self, index: u16, queue: &Virtqueue) -> Result<(), InitError> {
        let max = self.queue_max(index);
        if max < queue.size() {
            return Err(InitError::QueueTooSmall { index, max });
        }
        self.write(QUEUE_NUM, u32::from(queue.size()));
        for (low, addr) in [
            (QUEUE_DESC_LOW, queue.desc_addr()),
            (QUEUE_DRIVER_LOW, queue.avail_addr()),
            (QUEUE_DEVICE_LOW, queue.used_addr()),
        ] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
        Ok(())
    }

    pub fn driver_ok(&self) {
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    pub fn notify(&self, index: u16) {
        self.write(QUEUE_NOTIFY, u32::from(index));
    }

    /// Waits until the device has used a chain of `queue`; Err when the
    /// device marked itself broken (DEVICE_NEEDS_RESET). mvm's devices have
    /// usually done so during the notify exit; one working on its own thread
    /// (ioeventfd notifications) answers within microseconds, so the driver
    /// polls a while, then halts in short steps.
    pub fn wait_used(&self, queue: &mut Virtqueue) -> Result<(), DeviceBroken> {
        let spin_until = monotonic_ns() + SPIN_NS;
        loop {
            if queue.pop_used().is_some() {
                return Ok(());
            }
            if monotonic_ns() < spin_until {
                core::hint::spin_loop();
                continue;
            }
            if self.status() & STATUS_NEEDS_RESET != 0 {
                return Err(DeviceBroken);
            }
            halt_until(monotonic_ns() + HALT_STEP_NS);
        }
    }
}
