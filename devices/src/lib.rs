//! mvm's device models. Each device core knows nothing of KVM: it is driven
//! through [`bus::BusDevice`] reads and writes at offsets within its range,
//! and the VMM's exit loop routes port and MMIO exits to it through a
//! [`bus::Bus`].

pub mod bus;
pub mod clock;
pub mod entropy;
pub mod i8042;
pub mod power;
pub mod serial;
pub mod timer;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, Unclaimed, VmRequest};
