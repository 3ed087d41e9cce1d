//! Physical memory: a page-frame allocator over the e820 RAM the kernel
//! image does not occupy, and the heap (`alloc`) on the largest free run.
//! A failed allocation is the guest running out of memory: it says so and
//! powers off with reason "out of memory", which mvm reports as such.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{addr_of, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::Heap;

use crate::bootparams::MemoryRange;

const PAGE: u64 = 4096;
/// Below 1 MiB live the VMM's boot structures and the command line.
const LOW_MEMORY_END: u64 = 1 << 20;
const MAX_RANGES: usize = 32;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

#[derive(Clone, Copy)]
struct Range {
    start: u64,
    end: u64,
}

/// Hands out free 4 KiB frames, lowest range first.
pub struct Frames {
    ranges: [Range; MAX_RANGES],
    count: usize,
}

impl Frames {
    pub fn new(ram: &[MemoryRange]) -> Frames {
        let kernel = Range { start: addr_of!(__kernel_start) as u64, end: addr_of!(__kernel_end) as u64 };
        let mut frames = Frames { ranges: [Range { start: 0, end: 0 }; MAX_RANGES], count: 0 };
        for r in ram {
            let start = r.start.max(LOW_MEMORY_END).next_multiple_of(PAGE);
            let end = (r.start + r.len) & !(PAGE - 1);
            // The kernel image splits a range in two.
            frames.add(Range { start, end: end.min(kernel.start) });
            frames.add(Range { start: start.max(kernel.end.next_multiple_of(PAGE)), end });
        }
        frames
    }

    fn add(&mut self, range: Range) {
        if range.start < range.end && self.count < MAX_RANGES {
            self.ranges[self.count] = range;
            self.count += 1;
        }
    }

    /// A zeroed frame, None when RAM is exhausted.
    pub fn alloc_zeroed(&mut self) -> Option<u64> {
        let range = self.ranges[..self.count].iter_mut().find(|r| r.start < r.end)?;
        let frame = range.start;
        range.start += PAGE;
        // SAFETY: the frame is free RAM, identity-mapped, and now ours alone.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
        Some(frame)
    }

    /// Removes and returns the largest remaining run of free frames.
    fn take_largest(&mut self) -> Option<(u64, u64)> {
        let range = self.ranges[..self.count].iter_mut().max_by_key(|r| r.end - r.start)?;
        let taken = (range.start, range.end - range.start);
        range.start = range.end;
        (taken.1 > 0).then_some(taken)
    }
}

/// A lock for the guest's few shared statics. The guest runs on one vCPU,
/// so it is never contended; it makes the exclusive access explicit.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: every access to `value` happens with `locked` held.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> SpinLock<T> {
        SpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        while self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let result = f(unsafe { &mut *self.value.get() });
        self.locked.store(false, Ordering::Release);
        result
    }
}

struct GuestHeap(SpinLock<Heap>);

impl GuestHeap {
    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        self.0.with(f)
    }
}

#[global_allocator]
static HEAP: GuestHeap = GuestHeap(SpinLock::new(Heap::empty()));

// SAFETY: allocations come from the linked-list heap over RAM no one else
// uses; a failed allocation does not return.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.with(|heap| heap.allocate_first_fit(layout)) {
            Ok(ptr) => ptr.as_ptr(),
            Err(()) => out_of_memory(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout.
            self.with(|heap| unsafe { heap.deallocate(ptr, layout) });
        }
    }
}

/// Zeroed memory from the heap, or `None` where the global allocator would
/// end the guest: for callers that have a smaller way to go (vmem maps
/// pages when no 2 MiB block is left). Freed with `dealloc`, as any heap
/// allocation.
pub fn try_alloc_zeroed(layout: Layout) -> Option<u64> {
    let ptr = HEAP.with(|heap| heap.allocate_first_fit(layout)).ok()?;
    // SAFETY: the heap just gave these `layout.size()` bytes to us alone.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, layout.size()) };
    Some(ptr.as_ptr() as u64)
}

/// A zeroed 4 KiB frame from the heap (page tables, pages above RAM). The
/// heap's failure path ends the guest as out of memory, so this never
/// returns without one.
pub fn zeroed_frame() -> u64 {
    let layout = Layout::from_size_align(PAGE as usize, PAGE as usize).expect("page layout");
    // SAFETY: a non-zero layout.
    let frame = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if frame.is_null() {
        alloc::alloc::handle_alloc_error(layout);
    }
    frame as u64
}

fn out_of_memory(layout: Layout) -> ! {
    let (size, used) = HEAP.with(|heap| (heap.size(), heap.used()));
    crate::console::print(format_args!(
        "guest out of memory: cannot allocate {} bytes (heap {} KiB, {} KiB in use)\n",
        layout.size(),
        size / 1024,
        used / 1024
    ));
    crate::power::out_of_memory()
}

/// Gives the heap the largest free run of RAM left after the page tables.
pub fn init_heap(frames: &mut Frames) {
    let Some((start, len)) = frames.take_largest() else {
        panic!("no RAM left for the heap");
    };
    // SAFETY: the run is free, identity-mapped RAM, now the heap's alone.
    HEAP.with(|heap| unsafe { heap.init(start as *mut u8, len as usize) });
}
