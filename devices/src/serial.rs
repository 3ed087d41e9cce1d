//! COM1: a 16550A UART (vm-superio) whose output goes to a host writer.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, VmRequest};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
/// The legacy interrupt line of COM1, for guests with an interrupt controller.
pub const COM1_IRQ: u32 = 4;

/// The UART's interrupt line as an eventfd, which the VMM may wire to the
/// in-kernel irqchip (irqfd). Without an irqchip nobody reads it, and the
/// tiny guest never enables UART interrupts.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

#[derive(Debug, Default)]
pub struct SerialMetrics {
    pub bytes_out: AtomicU64,
    pub bytes_lost: AtomicU64,
}

#[derive(Clone)]
struct Events(Arc<SerialMetrics>);

impl SerialEvents for Events {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.0.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.0.bytes_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

pub struct Com1<W: Write + Send> {
    uart: Serial<IrqLine, Events, W>,
    metrics: Arc<SerialMetrics>,
}

impl<W: Write + Send> Com1<W> {
    pub fn new(irq: EventFd, out: W) -> Com1<W> {
        let metrics = Arc::new(SerialMetrics::default());
        let uart = Serial::with_events(IrqLine(irq), Events(metrics.clone()), out);
        Com1 { uart, metrics }
    }

    pub fn metrics(&self) -> Arc<SerialMetrics> {
        self.metrics.clone()
    }
}

impl<W: Write + Send> BusDevice for Com1<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The bus guarantees offset < COM1_LEN; wider reads see the register
        // in their low byte, as on real hardware's 8-bit port.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmRequest> {
        let &value = data.first()?;
        if let Err(err) = self.uart.write(offset as u8, value) {
            // Counted in the metrics; logging every byte a closed stdout
            // swallows would flood the log with what the guest controls.
            if self.metrics.bytes_lost.load(Ordering::Relaxed) == 1 {
                tracing::warn!("serial console output is being lost: {err:?}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_writer() {
        let sink = Sink::default();
        let mut com1 = Com1::new(EventFd::new(0).unwrap(), sink.clone());
        for b in b"hi\n" {
            assert_eq!(com1.write(0, &[*b]), None);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(com1.metrics().bytes_out.load(Ordering::Relaxed), 3);
        let mut lsr = [0u8; 1];
        com1.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
