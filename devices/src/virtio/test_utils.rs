//! The driver's side of a split virtqueue on mock guest memory, for tests.
//!
//! virtio-queue's `MockSplitQueue` (test-utils) builds queues the same way,
//! but 0.18 places the used ring where the available ring still runs (it
//! adds the ring's entry count, not its size in bytes, to find the end of the
//! available ring), so entries past half the queue collide; this helper lays
//! the rings out as the spec does. Descriptors are virtio-queue's own types.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Interrupt, VirtioInterrupt};

/// Guest RAM of the tests: 1 MiB at 0.
pub const MEM_SIZE: u64 = 0x10_0000;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Counts the VMM notifications.
#[derive(Default)]
pub struct CountingInterrupt(pub AtomicUsize);

impl VirtioInterrupt for CountingInterrupt {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn interrupt() -> (Arc<CountingInterrupt>, Arc<Interrupt>) {
    let vmm = Arc::new(CountingInterrupt::default());
    let irq = Arc::new(Interrupt::new(vmm.clone()));
    (vmm, irq)
}

pub struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
}

/// A buffer as the driver offers it: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

impl<'a> Driver<'a> {
    /// Rings at `base` (16-byte aligned), laid out back to back.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Driver<'a> {
        let desc = GuestAddress(base);
        let avail = GuestAddress(base + 16 * u64::from(size));
        let used_start = avail.0 + 6 + 2 * u64::from(size);
        let used = GuestAddress(used_start.next_multiple_of(4));
        let end = used.0 + 6 + 8 * u64::from(size);
        let zeros = vec![0u8; (end - base) as usize];
        mem.write_slice(&zeros, desc).unwrap();
        Driver { mem, size, desc, avail, used, next_desc: 0, avail_idx: 0 }
    }

    /// A ready queue with these rings, as the transport would build it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0 as u32), Some((self.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail.0 as u32), Some((self.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mem.write_obj(raw, self.desc.unchecked_add_desc(index)).unwrap();
    }

    /// Writes `bufs` as one chain in fresh descriptors and makes it available.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(index, addr, len, flags, next);
            self.next_desc = next;
        }
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and moves its index on.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, self.avail.unchecked_add_bytes(4 + 2 * slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index as a (possibly misbehaving) driver would.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem.write_obj(idx, self.avail.unchecked_add_bytes(2)).unwrap();
    }

    /// The available ring's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags, self.avail).unwrap();
    }

    /// `used_event`, read by a device that negotiated EVENT_IDX.
    pub fn set_used_event(&self, value: u16) {
        let at = 4 + 2 * u64::from(self.size);
        self.mem.write_obj(value, self.avail.unchecked_add_bytes(at)).unwrap();
    }

    pub fn used_flags(&self) -> u16 {
        self.mem.read_obj(self.used).unwrap()
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used.unchecked_add_bytes(2)).unwrap()
    }

    /// The used ring's `n`th entry: (chain head, bytes written).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used.unchecked_add_bytes(4 + 8 * u64::from(n % self.size));
        let id: u32 = self.mem.read_obj(at).unwrap();
        let len: u32 = self.mem.read_obj(at.unchecked_add_bytes(4)).unwrap();
        (id, len)
    }

    /// Every used entry so far.
    pub fn used_all(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx()).map(|n| self.used_elem(n)).collect()
    }
}

trait AddrExt {
    fn unchecked_add_bytes(self, n: u64) -> GuestAddress;
    fn unchecked_add_desc(self, index: u16) -> GuestAddress;
}

impl AddrExt for GuestAddress {
    fn unchecked_add_bytes(self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
    fn unchecked_add_desc(self, index: u16) -> GuestAddress {
        GuestAddress(self.0 + 16 * u64::from(index))
    }
}
