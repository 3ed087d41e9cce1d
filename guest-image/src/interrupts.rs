//! Exceptions: an IDT whose 32 exception vectors report the fault on the
//! console (vector, error code, RIP, CR2 for a page fault, a backtrace of
//! return addresses) and power off with reason "fault", which mvm reports as
//! "guest crashed: <vector> at <rip>".
//!
//! Measured on the PVM host (shared/pvm-notes.md): exceptions arrive through
//! this ordinary IDT both in PVM mode and in emulated mode, so one table
//! serves PVM and VMX/SVM. A fault inside this path (no stack, broken IDT)
//! still ends as a triple fault, which the VMM reports from the registers.

use core::arch::{asm, global_asm};
use core::mem::size_of;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::gdt::{DOUBLE_FAULT_IST, KERNEL_CS};

const VECTORS: usize = 32;
pub const DOUBLE_FAULT: u8 = 8;
pub const GENERAL_PROTECTION: u8 = 13;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const MISSING: Gate =
    Gate { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, reserved: 0 };
/// Present, DPL 0, 64-bit interrupt gate.
const INTERRUPT_GATE: u8 = 0x8e;

static mut IDT: [Gate; VECTORS] = [MISSING; VECTORS];

// One stub per vector: push a zero error code where the CPU pushes none, push
// the vector, and hand the frame and the interrupted RBP to Rust.
global_asm!(
    r#"
    .altmacro
    .macro fault_stub n
    .global fault_stub_\n
    fault_stub_\n:
        .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
        .else
            push 0
        .endif
        push \n
        jmp fault_common
    .endm

    .section .text
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        fault_stub \n
    .endr

fault_common:
    mov rdi, rsp
    mov rsi, rbp
    and rsp, -16
    call {entry}
    ud2

    .section .rodata
    .balign 8
    .global fault_stubs
fault_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad fault_stub_\n
    .endr
"#,
    entry = sym fault_entry,
);

extern "C" {
    static fault_stubs: [u64; VECTORS];
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    // SAFETY: single-threaded boot code; the IDT lives for the guest's
    // lifetime and `fault_stubs` is the table the assembly above defines.
    unsafe {
        for vector in 0..VECTORS {
            let handler = fault_stubs[vector];
            let ist = if vector == usize::from(DOUBLE_FAULT) { DOUBLE_FAULT_IST } else { 0 };
            IDT[vector] = Gate {
                offset_low: handler as u16,
                selector: KERNEL_CS,
                ist,
                type_attr: INTERRUPT_GATE,
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        load(addr_of!(IDT) as u64, (size_of::<[Gate; VECTORS]>() - 1) as u16);
    }
}

/// # Safety
/// `base` must hold a valid IDT of `limit + 1` bytes for as long as it is loaded.
pub unsafe fn load(base: u64, limit: u16) {
    let pointer = Pointer { limit, base };
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

/// Marks one gate not present, so that the next exception on `vector` faults
/// while being delivered (the double-fault self-test).
pub fn remove_gate(vector: u8) {
    // SAFETY: single-threaded; the CPU reads the gate only on delivery.
    unsafe { IDT[usize::from(vector)].type_attr = 0 };
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
struct FaultFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

fn name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection fault",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

const BACKTRACE_MAX: usize = 32;

const DIVIDE_ERROR: u64 = 0;
const INVALID_OPCODE: u64 = 6;
const PAGE_FAULT: u64 = 14;

/// Offered a fault before it is reported: (rip, rbp, whether an address
/// faulted, that address). wasmtime's has this C signature; it does not
/// return when the fault is a trap in wasm code, whose entry it resumes.
pub type TrapHandler = extern "C" fn(usize, usize, bool, usize);

static TRAP_HANDLER: AtomicUsize = AtomicUsize::new(0);
static IN_TRAP_HANDLER: AtomicBool = AtomicBool::new(false);

pub fn set_trap_handler(handler: TrapHandler) {
    TRAP_HANDLER.store(handler as usize, Ordering::Release);
}

/// Hands the faults compiled wasm raises on purpose (`ud2` for its traps,
/// an access to a guard page, a division) to the trap handler, if any.
fn offer_to_trap_handler(vector: u64, rip: u64, rbp: u64, cr2: u64) {
    let handler = TRAP_HANDLER.load(Ordering::Acquire);
    if handler == 0 || ![DIVIDE_ERROR, INVALID_OPCODE, PAGE_FAULT].contains(&vector) {
        return;
    }
    // A fault inside the handler itself is reported as it is, not offered
    // again (which would recurse into a double fault). The flag stays set
    // when the handler does not return (a wasm trap: it resumes the call
    // into wasm, which returns the trap, and the job ends with it), so no
    // fault after a trap is offered.
    if IN_TRAP_HANDLER.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: only `set_trap_handler` stores a non-zero value, a TrapHandler.
    let handler: TrapHandler = unsafe { core::mem::transmute::<usize, TrapHandler>(handler) };
    handler(rip as usize, rbp as usize, vector == PAGE_FAULT, cr2 as usize);
    IN_TRAP_HANDLER.store(false, Ordering::Release);
}

extern "C" fn fault_entry(frame: &FaultFrame, rbp: u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let vector = frame.vector;
    offer_to_trap_handler(vector, frame.rip, rbp, cr2);
    let overflow = crate::paging::is_stack_guard(cr2) && (vector == 14 || vector == u64::from(DOUBLE_FAULT));
    let console = crate::console::print;
    console(format_args!(
        "guest fault: {}{} (vector {vector}), error code {:#x}, rip {:#x}, rsp {:#x}, cs {:#x}, rflags {:#x}",
        name(vector),
        if overflow { " (stack overflow)" } else { "" },
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.cs,
        frame.rflags,
    ));
    if vector == 14 || overflow {
        console(format_args!(", cr2 {cr2:#x}"));
    }
    console(format_args!("\nbacktrace: {:#x}", frame.rip));
    let mut fp = rbp;
    for _ in 0..BACKTRACE_MAX {
        if !fp.is_multiple_of(8) || !crate::paging::on_a_stack(fp, 16) {
            break;
        }
        // SAFETY: `fp` and `fp + 8` lie inside one of the guest's stacks,
        // which are mapped; a frame-pointer chain links saved RBPs there.
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        console(format_args!(" {ret:#x}"));
        if next <= fp {
            break;
        }
        fp = next;
    }
    console(format_args!("\n"));
    crate::power::fault(crate::power::FaultReport {
        vector: vector as u8,
        rip: frame.rip,
        error_code: frame.error_code,
        cr2,
        stack_overflow: overflow,
    })
}
