//! Descriptor chains as lists of guest buffers, and the loop that drains a
//! queue. Shared by every device; knows nothing of request formats.

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// The most descriptors a chain may have: the largest queue any device here
/// offers (a chain without indirect descriptors cannot be longer).
pub(crate) const MAX_CHAIN_LEN: usize = 256;

/// One descriptor's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A queue that can no longer be processed: the device sets
/// DEVICE_NEEDS_RESET and stops using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueueBroken {
    #[error("the available ring is unreadable or its index runs ahead of the ring")]
    AvailRing,
    #[error("a descriptor chain loops, points past the table or is unreadable")]
    Chain,
    #[error("the used ring cannot be written")]
    UsedRing,
}

/// A descriptor chain split into its device-readable and device-writable
/// buffers, in order. Reused from request to request: no allocation once the
/// vectors have grown to the longest chain seen (at most [`MAX_CHAIN_LEN`]).
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub head: u16,
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
    /// A device-readable buffer came after a device-writable one, which the
    /// spec forbids (2.7.4.2).
    pub misordered: bool,
}

impl Chain {
    /// Walks `chain`. A chain that ends on a descriptor still flagged NEXT was
    /// cut short by virtio-queue (a loop, a next index past the table, an
    /// unreadable descriptor or more than 4 GiB in all): the queue is broken.
    pub(crate) fn load(&mut self, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<(), QueueBroken> {
        self.head = chain.head_index();
        self.readable.clear();
        self.writable.clear();
        self.misordered = false;
        let mut ended = false;
        for (count, desc) in chain.enumerate() {
            if count == MAX_CHAIN_LEN {
                return Err(QueueBroken::Chain);
            }
            let segment = Segment { addr: desc.addr(), len: desc.len() };
            if desc.is_write_only() {
                self.writable.push(segment);
            } else {
                self.misordered |= !self.writable.is_empty();
                self.readable.push(segment);
            }
            ended = !desc.has_next();
        }
        if ended {
            Ok(())
        } else {
            Err(QueueBroken::Chain)
        }
    }

    pub(crate) fn readable_len(&self) -> u64 {
        total_len(&self.readable)
    }

    pub(crate) fn writable_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

fn total_len(segments: &[Segment]) -> u64 {
    // At most MAX_CHAIN_LEN * u32::MAX: no overflow.
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Calls `f(addr, len)` for each piece of the byte range `skip..skip + len`
/// of the buffers in `segments`, in order. The range must lie within the
/// buffers (the caller checked their total length); `len` bytes or fewer are
/// visited if it does not.
pub(crate) fn for_each_piece<E>(
    segments: &[Segment],
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> Result<(), E>,
) -> Result<(), E> {
    for segment in segments {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(segment.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len);
        // An address that overflows becomes u64::MAX, where no guest memory
        // is: the access fails instead of wrapping to a low address.
        let addr = GuestAddress(segment.addr.0.saturating_add(skip));
        f(addr, n as usize)?;
        skip = 0;
        len -= n;
    }
    Ok(())
}

/// Whether the whole byte range of the buffers lies in guest memory.
pub(crate) fn in_guest_memory(mem: &GuestMemoryMmap, segments: &[Segment], skip: u64, len: u64) -> bool {
    for_each_piece(segments, skip, len, |addr, n| {
        if GuestMemory::check_range(mem, addr, n, Permissions::ReadWrite) {
            Ok(())
        } else {
            Err(())
        }
    })
    .is_ok()
}

/// Copies `buf.len()` bytes from the buffers, starting `skip` bytes in.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for_each_piece(segments, skip, buf.len() as u64, |addr, n| -> Result<(), vm_memory::GuestMemoryError> {
        mem.read_slice(&mut buf[done..done + n], addr)?;
        done += n;
        Ok(())
    })?;
    if done == buf.len() {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer { expected: buf.len(), completed: done })
    }
}

/// Copies `data` into the buffers, starting `skip` bytes in: all of it, or,
/// when a piece lies outside guest memory, nothing.
pub(crate) fn scatter(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    if !in_guest_memory(mem, segments, skip, data.len() as u64) {
        return Err(vm_memory::GuestMemoryError::PartialBuffer { expected: data.len(), completed: 0 });
    }
    let mut done = 0;
    for_each_piece(segments, skip, data.len() as u64, |addr, n| -> Result<(), vm_memory::GuestMemoryError> {
        mem.write_slice(&data[done..done + n], addr)?;
        done += n;
        Ok(())
    })?;
    if done == data.len() {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer { expected: data.len(), completed: done })
    }
}

/// Loads the next available chain into `chain`; false when the driver has
/// made none available.
pub(crate) fn pop(queue: &mut Queue, mem: &GuestMemoryMmap, chain: &mut Chain) -> Result<bool, QueueBroken> {
    let next = queue.iter(mem).map_err(|_| QueueBroken::AvailRing)?.next();
    match next {
        Some(desc_chain) => chain.load(desc_chain).map(|()| true),
        None => Ok(false),
    }
}

/// What follows a [`drain`]: the used-buffer notification the driver wants,
/// or, when the queue broke, stopping it: the breakage is counted in
/// `broken_queue`, logged (rate-limited: the guest controls how often), and
/// the driver told both of the buffers used before it and that the device
/// needs a reset. `queue` names the queue in the log, e.g. "virtio-blk:
/// request queue". Returns whether the queue broke; the caller must then
/// touch it no more.
pub(crate) fn settle(
    result: Result<bool, QueueBroken>,
    interrupt: &super::Interrupt,
    broken_queue: &std::sync::atomic::AtomicU64,
    log: &super::GuestErrorLog,
    queue: &str,
) -> bool {
    match result {
        Ok(wants_notice) => {
            if wants_notice {
                interrupt.signal_used();
            }
            false
        }
        Err(broken) => {
            broken_queue.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if log.allow(queue) {
                tracing::warn!("{queue} stopped until the driver resets the device: {broken}");
            }
            interrupt.signal_used();
            interrupt.signal_needs_reset();
            true
        }
    }
}

/// Processes every chain the driver makes available, including those it
/// adds while this runs, handing each to `handle`, which returns the number
/// of bytes it wrote into the chain's buffers. Driver notifications are
/// suppressed meanwhile and re-enabled before returning (the re-check after
/// enabling closes the window in which a driver adds a chain, sees
/// notifications off and does not notify). Returns whether the driver wants
/// a used-buffer notification.
/// Looks at an available ring that found no chain although the ring's index
/// said there were more: a driver adding chains between the look and the
/// index check explains one such look; two in a row mean the ring holds
/// work that cannot be read.
#[derive(Default)]
pub(crate) struct EmptyLooks(u32);

impl EmptyLooks {
    /// A look that found nothing although the index said there was more.
    pub(crate) fn empty(&mut self) -> Result<(), QueueBroken> {
        self.0 += 1;
        if self.0 == 2 {
            return Err(QueueBroken::AvailRing);
        }
        Ok(())
    }

    /// A look that found a chain.
    pub(crate) fn found(&mut self) {
        self.0 = 0;
    }
}

pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    chain: &mut Chain,
    mut handle: impl FnMut(&Chain) -> u32,
) -> Result<bool, QueueBroken> {
    let mut used = false;
    let mut looks = EmptyLooks::default();
    loop {
        queue.disable_notification(mem).map_err(|_| QueueBroken::UsedRing)?;
        let mut round = 0u32;
        while pop(queue, mem, chain)? {
            let len = handle(chain);
            queue.add_used(mem, chain.head, len).map_err(|_| QueueBroken::UsedRing)?;
            used = true;
            round += 1;
        }
        if !queue.enable_notification(mem).map_err(|_| QueueBroken::AvailRing)? {
            break;
        }
        // More chains arrived after the last pop.
        if round == 0 {
            looks.empty()?;
        } else {
            looks.found();
        }
    }
    if used {
        needs_notification(queue, mem)
    } else {
        Ok(false)
    }
}

/// Whether the driver wants to hear about buffers just used: with EVENT_IDX,
/// by `used_event`; without, unless it set VRING_AVAIL_F_NO_INTERRUPT
/// (which virtio-queue 0.18 does not look at). A guest that polls its used
/// rings sets that flag and is never woken for its own requests.
pub(crate) fn needs_notification(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).map_err(|_| QueueBroken::AvailRing);
    }
    // Order the used index just published before the read of the flags, as
    // virtio-queue does before reading used_event.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let flags: u16 = mem.read_obj(GuestAddress(queue.avail_ring())).map_err(|_| QueueBroken::AvailRing)?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::virtio::test_utils::{memory, Driver, MEM_SIZE};

    /// One empty look is a driver adding chains meanwhile; a second in a row
    /// is a broken ring, unless a look in between found a chain. (The race
    /// that makes one empty look cannot be scheduled in a unit test, so the
    /// rule is tested on its own.)
    #[test]
    fn only_two_empty_looks_in_a_row_break_the_ring() {
        let mut looks = EmptyLooks::default();
        assert!(looks.empty().is_ok(), "one empty look");
        looks.found();
        assert!(looks.empty().is_ok(), "one empty look after a find");
        assert!(matches!(looks.empty(), Err(QueueBroken::AvailRing)), "two empty looks in a row");
    }

    fn segs() -> Vec<Segment> {
        vec![
            Segment { addr: GuestAddress(0x1000), len: 4 },
            Segment { addr: GuestAddress(0x2000), len: 0 },
            Segment { addr: GuestAddress(0x3000), len: 8 },
        ]
    }

    #[test]
    fn pieces_skip_and_span_buffers() {
        let mut seen = Vec::new();
        for_each_piece::<()>(&segs(), 2, 6, |a, n| {
            seen.push((a.0, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0x1002, 2), (0x3000, 4)]);
        seen.clear();
        for_each_piece::<()>(&segs(), 4, 100, |a, n| {
            seen.push((a.0, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0x3000, 8)]);
    }

    #[test]
    fn gather_and_scatter_round_trip_and_refuse_holes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        scatter(&mem, &segs(), 1, b"abcdefghij").unwrap();
        let mut out = [0u8; 10];
        gather(&mem, &segs(), 1, &mut out).unwrap();
        assert_eq!(&out, b"abcdefghij");
        assert!(gather(&mem, &segs(), 1, &mut [0u8; 12]).is_err(), "past the buffers");
        let outside = [Segment { addr: GuestAddress(0xfffe), len: 4 }];
        assert!(!in_guest_memory(&mem, &outside, 0, 4));
        assert!(in_guest_memory(&mem, &outside, 0, 2));
        assert!(scatter(&mem, &outside, 0, b"wxyz").is_err());
        let kept: [u8; 2] = mem.read_obj(GuestAddress(0xfffe)).unwrap();
        assert_eq!(kept, [0, 0], "a scatter that does not fit writes nothing");
        let wraps = [Segment { addr: GuestAddress(u64::MAX - 1), len: 16 }];
        assert!(!in_guest_memory(&mem, &wraps, 0, 16));
    }

    #[test]
    fn drain_gives_up_on_an_available_ring_it_cannot_read() {
        let mem = memory();
        // The ring's index is in guest memory and says one chain is there;
        // the ring entry itself lies past the end.
        let mut queue = Queue::new(16).unwrap();
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some((MEM_SIZE - 4) as u32), Some(0));
        queue.set_used_ring_address(Some(0x1000), Some(0));
        queue.set_ready(true);
        mem.write_obj(1u16, GuestAddress(MEM_SIZE - 2)).unwrap();
        // On a thread: a drain that loops forever fails the test instead of hanging it.
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            let mut handled = 0;
            let broken = drain(&mut queue, &mem, &mut Chain::default(), |_| {
                handled += 1;
                0
            });
            done.send((broken, handled)).unwrap();
        });
        let outcome = result.recv_timeout(Duration::from_secs(10)).expect("drain returned");
        assert_eq!(outcome, (Err(QueueBroken::AvailRing), 0));
    }

    #[test]
    fn drain_keeps_up_with_a_driver_adding_chains_meanwhile() {
        // Chains published while drain runs (between its last pop and
        // re-enabling notifications, now and then) are neither lost nor
        // taken for a broken ring.
        const CHAINS: u16 = 5000;
        let mem = memory();
        let mut queue = Driver::new(&mem, 0, 16).queue();
        let driver_mem = mem.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let driver = std::thread::spawn(move || {
            let mut d = Driver::new(&driver_mem, 0, 16);
            for published in 0..CHAINS {
                // At most a queue's worth in flight: descriptors are reused.
                while published.wrapping_sub(d.used_idx()) >= 16 {
                    assert!(Instant::now() < deadline, "the device stopped taking chains");
                    std::thread::yield_now();
                }
                d.add(&[(0x8000, 1, false)]);
            }
        });
        let mut chain = Chain::default();
        let mut handled = 0u16;
        while handled < CHAINS {
            let result = drain(&mut queue, &mem, &mut chain, |_| {
                handled += 1;
                0
            });
            assert!(result.is_ok(), "{result:?} after {handled} chains");
            assert!(Instant::now() < deadline, "only {handled} chains handled");
        }
        driver.join().unwrap();
        assert_eq!(handled, CHAINS);
    }
}
