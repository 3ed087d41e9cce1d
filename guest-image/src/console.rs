//! COM1 output. Every port access is a VM exit (~19 µs under PVM), so the
//! driver does no UART set-up and polls the line status only once per FIFO
//! (16 bytes), as a 16550A with its FIFO enabled allows.

use core::fmt::{self, Write};

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

/// Prints to COM1. The guest runs on one vCPU, so there is no lock.
pub fn print(args: fmt::Arguments<'_>) {
    // A full FIFO at the start costs one status read and is always correct.
    let _ = Com1 { in_fifo: FIFO_LEN }.write_fmt(args);
}
