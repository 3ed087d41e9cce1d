//! The platform wasmtime's no_std runtime is built against (its "custom"
//! C ABI, wasmtime crates/wasmtime/src/runtime/vm/sys/custom/capi.rs):
//! virtual memory from vmem.rs, traps from the guest's exception handlers,
//! thread-local slots for the one vCPU, and CPU feature detection for the
//! code the host compiled.

use core::sync::atomic::{AtomicPtr, Ordering};

use crate::paging::Access;
use crate::vmem;

const PROT_READ: u32 = 1 << 0;
const PROT_WRITE: u32 = 1 << 1;
const PROT_EXEC: u32 = 1 << 2;

/// What wasmtime's C ABI returns for a failure; it only checks for non-zero.
const FAILED: i32 = -1;

fn access(prot: u32) -> Access {
    if prot & PROT_EXEC != 0 {
        Access::ReadExecute
    } else if prot & PROT_WRITE != 0 {
        Access::ReadWrite
    } else if prot & PROT_READ != 0 {
        Access::Read
    } else {
        Access::None
    }
}

fn status(result: Result<(), vmem::VmemError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(_) => FAILED,
    }
}

#[no_mangle]
pub extern "C" fn wasmtime_page_size() -> usize {
    vmem::PAGE as usize
}

#[no_mangle]
pub extern "C" fn wasmtime_mmap_new(size: usize, prot: u32, ret: &mut *mut u8) -> i32 {
    let result = vmem::reserve(size as u64).and_then(|addr| {
        vmem::protect(addr, size as u64, access(prot))?;
        Ok(addr)
    });
    match result {
        Ok(addr) => {
            *ret = addr as *mut u8;
            0
        }
        Err(_) => FAILED,
    }
}

#[no_mangle]
pub extern "C" fn wasmtime_mmap_remap(addr: *mut u8, size: usize, prot: u32) -> i32 {
    let (addr, len) = (addr as u64, size as u64);
    status(vmem::release(addr, len).and_then(|()| vmem::protect(addr, len, access(prot))))
}

#[no_mangle]
pub extern "C" fn wasmtime_munmap(ptr: *mut u8, size: usize) -> i32 {
    status(vmem::release(ptr as u64, size as u64))
}

#[no_mangle]
pub extern "C" fn wasmtime_mprotect(ptr: *mut u8, size: usize, prot: u32) -> i32 {
    status(vmem::protect(ptr as u64, size as u64, access(prot)))
}

/// No copy-on-write images: with `memory_init_cow(false)` in the shared
/// configuration wasmtime initializes memories by copying, and this answer
/// ("no image") keeps it so.
#[no_mangle]
pub extern "C" fn wasmtime_memory_image_new(_ptr: *const u8, _len: usize, ret: &mut *mut u8) -> i32 {
    *ret = core::ptr::null_mut();
    0
}

/// Never called: no image is ever made (see `wasmtime_memory_image_new`).
#[no_mangle]
pub extern "C" fn wasmtime_memory_image_map_at(_image: *mut u8, _addr: *mut u8, _len: usize) -> i32 {
    FAILED
}

/// Never called, as above.
#[no_mangle]
pub extern "C" fn wasmtime_memory_image_free(_image: *mut u8) {}

#[no_mangle]
pub extern "C" fn wasmtime_init_traps(handler: crate::interrupts::TrapHandler) -> i32 {
    crate::interrupts::set_trap_handler(handler);
    0
}

/// The guest runs wasm on one vCPU, so one set of slots is its "thread".
static TLS: [AtomicPtr<u8>; 2] = [AtomicPtr::new(core::ptr::null_mut()), AtomicPtr::new(core::ptr::null_mut())];

#[no_mangle]
pub extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS[slot].load(Ordering::Relaxed)
}

#[no_mangle]
pub extern "C" fn wasmtime_tls_set(slot: usize, ptr: *mut u8) {
    TLS[slot].store(ptr, Ordering::Relaxed);
}

/// Whether this vCPU has a CPU feature the host's compiled code may use
/// (the names of `mvm_wasm_config::ISA_FEATURES`). `None` for names it does
/// not know, which makes wasmtime refuse the code.
pub fn detect_host_feature(name: &str) -> Option<bool> {
    use core::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};
    // Leaves past the CPU's highest read as garbage: those count as zero.
    let leaf =
        |n: u32, max: u32| if n <= max { __cpuid_count(n, 0) } else { CpuidResult { eax: 0, ebx: 0, ecx: 0, edx: 0 } };
    let (max, max_extended) = (__cpuid(0).eax, __cpuid(0x8000_0000).eax);
    let (leaf1, leaf7, ext1) = (leaf(1, max), leaf(7, max), leaf(0x8000_0001, max_extended));
    let bit = |reg: u32, n: u32| Some(reg & (1 << n) != 0);
    match name {
        "sse3" => bit(leaf1.ecx, 0),
        "ssse3" => bit(leaf1.ecx, 9),
        "sse4.1" => bit(leaf1.ecx, 19),
        "sse4.2" => bit(leaf1.ecx, 20),
        "popcnt" => bit(leaf1.ecx, 23),
        "cmpxchg16b" => bit(leaf1.ecx, 13),
        "bmi1" => bit(leaf7.ebx, 3),
        "bmi2" => bit(leaf7.ebx, 8),
        "lzcnt" => bit(ext1.ecx, 5),
        _ => None,
    }
}
