//! COM1 output. Every port access is a VM exit (~19 µs under PVM), so the
//! driver does no UART set-up and polls the line status only once per FIFO
//! (16 bytes), as a 16550A with its FIFO enabled allows. For the same reason
//! a line can be deferred: it is printed before whatever COM1 prints next,
//! and not at all if nothing is (a job's banner: ~1.5 ms a job otherwise).

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const FIFO_LEN: usize = 16;

struct Com1 {
    in_fifo: usize,
}

impl Com1 {
    fn put(&mut self, byte: u8) {
        if self.in_fifo == FIFO_LEN {
            while inb(LSR) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            self.in_fifo = 0;
        }
        outb(COM1, byte);
        self.in_fifo += 1;
    }
}

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.put(b));
        Ok(())
    }
}

const DEFERRED_MAX: usize = 128;

struct Line {
    bytes: [u8; DEFERRED_MAX],
    len: usize,
}

struct Deferred {
    pending: AtomicBool,
    text: UnsafeCell<Line>,
}

// SAFETY: the guest runs on one vCPU; `text` is written only by `defer`
// before `pending` is set, and read only by the `print` that clears it.
unsafe impl Sync for Deferred {}

static DEFERRED: Deferred =
    Deferred { pending: AtomicBool::new(false), text: UnsafeCell::new(Line { bytes: [0; DEFERRED_MAX], len: 0 }) };

/// Keeps what fits.
impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let take = s.len().min(DEFERRED_MAX - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Keeps `args` (up to 128 bytes) to print before the next `print`.
pub fn defer(args: fmt::Arguments<'_>) {
    // SAFETY: see `Deferred`; nothing reads `text` while `pending` is clear.
    let text = unsafe { &mut *DEFERRED.text.get() };
    text.len = 0;
    let _ = text.write_fmt(args);
    DEFERRED.pending.store(true, Ordering::Release);
}

/// Prints to COM1, after the deferred line if there is one. The guest runs
/// on one vCPU, so there is no lock.
pub fn print(args: fmt::Arguments<'_>) {
    // A full FIFO at the start costs one status read and is always correct.
    let mut com1 = Com1 { in_fifo: FIFO_LEN };
    if DEFERRED.pending.swap(false, Ordering::Acquire) {
        // SAFETY: see `Deferred`; `defer` is not called again meanwhile.
        let line = unsafe { &*DEFERRED.text.get() };
        line.bytes[..line.len].iter().for_each(|b| com1.put(*b));
    }
    let _ = com1.write_fmt(args);
}
