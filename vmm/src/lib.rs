//! The mvm monitor: a KVM VM with guest RAM, a Linux 64-bit boot, vCPU
//! threads and the exit loop that routes port and MMIO exits to the devices.
//!
//! Boot order (see docs/DESIGN.md): open KVM, check the request against the
//! host, inspect the kernel image, create guest RAM and the VM, create the
//! vCPUs and ask the first whether the host is PVM, load the kernel, write the
//! zero page, command line, GDT and page tables, set the boot vCPU's
//! registers, start the vCPU threads, and wait for the first of: a guest
//! power-off, a crash, or the timeout.

pub mod boot;
pub mod host;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod pvm;
pub mod quota;
#[cfg(test)]
mod test_utils;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod x86;

pub use host::{Host, HostError, HostKind};
pub use loader::{KernelSource, LoaderError};
pub use mvm_devices::power;
pub use vm::{Crash, CrashKind, VmConfig, VmEnd, VmError};
