//! A split virtqueue (virtio 1.x, 2.7), driver side. The rings live in one
//! page-aligned heap allocation, identity-mapped, so their guest-physical
//! addresses are their addresses.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

const DESC_F_NEXT: u16 = 1;
/// Available-ring flag: the driver polls this queue and wants no notice of used buffers.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Used-ring flag: the device needs no notification of new available buffers.
const USED_F_NO_NOTIFY: u16 = 1;
const PAGE: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One buffer of a request: where, how long, and whether the device writes it.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

impl Buffer {
    pub fn readable<T: ?Sized>(data: &T) -> Buffer {
        Buffer {
            addr: data as *const T as *const u8 as u64,
            len: core::mem::size_of_val(data) as u32,
            device_writes: false,
        }
    }

    pub fn writable<T: ?Sized>(data: &mut T) -> Buffer {
        Buffer { addr: data as *mut T as *mut u8 as u64, len: core::mem::size_of_val(data) as u32, device_writes: true }
    }
}

pub struct Virtqueue {
    size: u16,
    base: *mut u8,
    used_offset: usize,
    free: Vec<u16>,
    next_avail: u16,
    last_used: u16,
}

impl Virtqueue {
    pub fn new(size: u16) -> Virtqueue {
        let n = usize::from(size);
        // Descriptor table and available ring, then the used ring on its own page.
        let used_offset = (16 * n + 6 + 2 * n).next_multiple_of(PAGE);
        let total = used_offset + (6 + 8 * n).next_multiple_of(PAGE);
        let layout = Layout::from_size_align(total, PAGE).expect("queue layout");
        // SAFETY: a non-zero size; the memory is never freed (queues live as
        // long as the guest).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            alloc::alloc::handle_alloc_error(layout);
        }
        Virtqueue { size, base, used_offset, free: (0..size).rev().collect(), next_avail: 0, last_used: 0 }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Tells the device not to signal used buffers on this queue: the driver
    /// polls it right after its own notify (mvm completes such requests
    /// during the notify exit), so a wake-up would only make the vCPU's next
    /// halt return at once. A queue the device fills on its own (network
    /// receive) keeps its notifications.
    pub fn poll_only(self) -> Virtqueue {
        // SAFETY: the flags field starts the available ring, which we own.
        unsafe { write_volatile(self.avail_addr() as *mut u16, AVAIL_F_NO_INTERRUPT) };
        self
    }

    /// Turns the device's used-buffer signals on (before the driver halts
    /// to wait for it) or off (while it polls). Turning them on is ordered
    /// before the caller's next look at the used ring, so a buffer used
    /// meanwhile is either seen or signalled.
    pub fn set_interrupts(&mut self, on: bool) {
        let flags = if on { 0 } else { AVAIL_F_NO_INTERRUPT };
        // SAFETY: the flags field starts the available ring, which we own.
        unsafe { write_volatile(self.avail_addr() as *mut u16, flags) };
        fence(Ordering::SeqCst);
    }

    /// Whether the device wants a notify for buffers just made available
    /// (it clears NO_NOTIFY when it runs out of them). Read after `add`,
    /// whose fence orders the published index before this read.
    pub fn device_wants_notify(&self) -> bool {
        // SAFETY: the flags field starts the used ring, which we own.
        let flags = unsafe { read_volatile(self.used_addr() as *const u16) };
        flags & USED_F_NO_NOTIFY == 0
    }

    /// Whether the device has used a chain not yet popped.
    pub fn has_used(&self) -> bool {
        // SAFETY: the used ring is ours, the device writes it.
        let device_idx = unsafe { read_volatile((self.used_addr() + 2) as *const u16) };
        device_idx != self.last_used
    }

    pub fn desc_addr(&self) -> u64 {
        self.base as u64
    }

    pub fn avail_addr(&self) -> u64 {
        self.base as u64 + 16 * u64::from(self.size)
    }

    pub fn used_addr(&self) -> u64 {
        self.base as u64 + self.used_offset as u64
    }

    fn desc(&self, index: u16) -> *mut Descriptor {
        (self.desc_addr() + 16 * u64::from(index)) as *mut Descriptor
    }

    /// Places a chain of buffers in the available ring; None when the queue
    /// lacks free descriptors. The caller notifies the device.
    pub fn add(&mut self, buffers: &[Buffer]) -> Option<u16> {
        if buffers.is_empty() || self.free.len() < buffers.len() {
            return None;
        }
        let ids: Vec<u16> = (0..buffers.len()).map(|_| self.free.pop().expect("counted")).collect();
        let chain: Vec<Descriptor> = buffers
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (b, _))| Descriptor {
                addr: b.addr,
                len: b.len,
                flags: if b.device_writes { DESC_F_WRITE } else { 0 } | if i + 1 < ids.len() { DESC_F_NEXT } else { 0 },
                next: ids.get(i + 1).copied().unwrap_or(0),
            })
            .collect();
        Some(self.publish(&ids, &chain))
    }

    /// Places descriptors as given, flags included, for the self-tests that
    /// feed the device malformed chains. A `next` field is an index into
    /// `chain` (so a descriptor may point at itself); one past the chain is
    /// passed on unchanged. They are reclaimed when used, as far as their
    /// chain can be followed.
    pub fn add_raw(&mut self, chain: &[Descriptor]) -> Option<u16> {
        if chain.is_empty() || self.free.len() < chain.len() {
            return None;
        }
        let ids: Vec<u16> = (0..chain.len()).map(|_| self.free.pop().expect("counted")).collect();
        let placed: Vec<Descriptor> = chain
            .iter()
            .map(|d| Descriptor { next: ids.get(usize::from(d.next)).copied().unwrap_or(d.next), ..*d })
            .collect();
        Some(self.publish(&ids, &placed))
    }

    fn publish(&mut self, ids: &[u16], chain: &[Descriptor]) -> u16 {
        for (id, desc) in ids.iter().zip(chain) {
            // SAFETY: `id` < size, inside the descriptor table we own.
            unsafe { write_volatile(self.desc(*id), *desc) };
        }
        let head = ids[0];
        let avail = self.avail_addr();
        let slot = avail + 4 + 2 * u64::from(self.next_avail % self.size);
        // SAFETY: the slot and the index are inside the available ring.
        unsafe { write_volatile(slot as *mut u16, head) };
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { write_volatile((avail + 2) as *mut u16, self.next_avail) };
        fence(Ordering::SeqCst);
        head
    }

    /// The next chain the device has used: (head, bytes written).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used = self.used_addr();
        // SAFETY: the used ring is ours, the device writes it.
        let device_idx = unsafe { read_volatile((used + 2) as *const u16) };
        if device_idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let elem = used + 4 + 8 * u64::from(self.last_used % self.size);
        // SAFETY: inside the used ring.
        let (id, len) = unsafe { (read_volatile(elem as *const u32), read_volatile((elem + 4) as *const u32)) };
        self.last_used = self.last_used.wrapping_add(1);
        let head = id as u16;
        self.reclaim(head);
        Some((head, len))
    }

    fn reclaim(&mut self, head: u16) {
        // The device's id is untrusted only in theory (mvm's own VMM), but a
        // bad one must not loop or corrupt the free list.
        let mut id = head;
        for _ in 0..self.size {
            if id >= self.size || self.free.contains(&id) {
                return;
            }
            self.free.push(id);
            // SAFETY: `id` < size.
            let desc = unsafe { read_volatile(self.desc(id)) };
            if desc.flags & DESC_F_NEXT == 0 {
                return;
            }
            id = desc.next;
        }
    }
}
