//! virtio over MMIO, found the way Linux finds it: `virtio_mmio.device=
//! <size>@<base>:<irq>` words on the command line.
//!
//! The guest takes no interrupts. After a notify it polls the used ring; the
//! devices of mvm process block requests and network transmits during the
//! notify exit itself, so the answer is usually there at once. Otherwise
//! (network receive) it halts with a wake deadline, and the VMM resumes it
//! early when the device used buffers.

pub mod blk;
pub mod console;
pub mod mmio;
pub mod net;
pub mod queue;

use alloc::vec::Vec;

use crate::cmdline::parse_u64;

pub const DEVICE_NET: u32 = 1;
pub const DEVICE_BLOCK: u32 = 2;
pub const DEVICE_CONSOLE: u32 = 3;

#[derive(Clone, Copy)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

/// The device windows announced on the command line, in order.
pub fn windows(cmdline: &[u8]) -> Vec<Window> {
    cmdline
        .split(|b| *b == b' ')
        .filter_map(|word| word.strip_prefix(b"virtio_mmio.device="))
        .filter_map(parse_window)
        .collect()
}

/// `<size>[K|M]@<base>:<irq>`, numbers in decimal or 0x hex.
fn parse_window(spec: &[u8]) -> Option<Window> {
    let at = spec.iter().position(|b| *b == b'@')?;
    let colon = spec.iter().position(|b| *b == b':').unwrap_or(spec.len());
    let (size, base) = (&spec[..at], spec.get(at + 1..colon)?);
    let (digits, unit) = match size.last()? {
        b'K' | b'k' => (&size[..size.len() - 1], 1 << 10),
        b'M' | b'm' => (&size[..size.len() - 1], 1 << 20),
        _ => (size, 1),
    };
    Some(Window { base: parse_number(base)?, size: parse_number(digits)?.checked_mul(unit)? })
}

fn parse_number(text: &[u8]) -> Option<u64> {
    match text.strip_prefix(b"0x") {
        Some(hex) if !hex.is_empty() => {
            hex.iter().try_fold(0u64, |n, d| n.checked_mul(16)?.checked_add(u64::from(char::from(*d).to_digit(16)?)))
        }
        _ => parse_u64(text),
    }
}

/// The devices of one kind, in command-line order.
pub fn find(cmdline: &[u8], device_type: u32) -> Vec<mmio::Mmio> {
    windows(cmdline)
        .iter()
        .filter_map(|w| mmio::Mmio::probe(w.base))
        .filter(|m| m.device_type() == device_type)
        .collect()
}
