//! Guest behaviours the integration tests and benchmarks ask for with
//! `mvm.test=<name>[:<arg>]`, to check how the VMM and the guest runtime
//! handle each way a guest can run and end.

use alloc::vec::Vec;
use core::arch::asm;

use crate::cmdline::{parse_u64, Display};
use crate::console::print;
use crate::interrupts;
use crate::time::{monotonic_ns, wall_ns};

pub fn run(spec: &[u8]) {
    let (name, arg) = match spec.iter().position(|b| *b == b':') {
        Some(i) => (&spec[..i], Some(&spec[i + 1..])),
        None => (spec, None),
    };
    let number = || match arg.and_then(parse_u64) {
        Some(n) => n,
        None => panic!("mvm.test={}: expected a number after ':'", Display(spec)),
    };
    match name {
        b"panic" => panic!("self-test panic requested on the command line"),
        b"spin" => loop {
            core::hint::spin_loop();
        },
        b"triple-fault" => {
            // SAFETY: an empty IDT makes the next exception a triple fault,
            // which is the point; nothing runs after it.
            unsafe {
                interrupts::load(0, 0);
                asm!("ud2", options(nomem, nostack, noreturn));
            }
        }
        b"fault" => fault(arg.unwrap_or_default()),
        b"sleep" => sleep(number()),
        b"oom" => exhaust_memory(),
        b"cpu" => cpu(number()),
        _ => panic!("mvm.test={}: unknown self-test", Display(spec)),
    }
}

fn fault(kind: &[u8]) {
    // SAFETY (all arms): each deliberately raises the exception its name
    // says; the fault handler powers the VM off and nothing runs after it.
    unsafe {
        match kind {
            b"ud" => asm!("ud2", options(nomem, nostack)),
            b"bp" => asm!("int3", options(nomem, nostack)),
            b"de" => asm!("div {0:e}", in(reg) 0u32, inout("eax") 1u32 => _, inout("edx") 0u32 => _, options(nomem, nostack)),
            // Non-canonical address.
            b"gp" => asm!("mov rax, [{}]", in(reg) 0x8000_0000_0000_0000u64, out("rax") _, options(nostack)),
            // Canonical, but far above any RAM the page tables map.
            b"pf" => asm!("mov qword ptr [{}], 1", in(reg) 0x7f00_0000_0000u64, options(nostack)),
            b"stack-overflow" => {
                recurse(0);
            }
            b"df" => {
                // A #GP whose gate is missing faults again while it is
                // delivered: a double fault, which runs on its own stack.
                interrupts::remove_gate(interrupts::GENERAL_PROTECTION);
                asm!("mov rax, [{}]", in(reg) 0x8000_0000_0000_0000u64, out("rax") _, options(nostack));
            }
            _ => panic!("mvm.test=fault:{}: expected ud, bp, de, gp, pf, stack-overflow or df", Display(kind)),
        }
    }
}

/// Recurses until the stack runs into its guard page: the point of the test.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[7])
}

/// Prints the clocks, sleeps `ms` milliseconds with the vCPU halted, and
/// prints them again with how long the sleep really took.
fn sleep(ms: u64) {
    let clock = |when: &str| print(format_args!("clock {when}: wall_ns={} mono_ns={}\n", wall_ns(), monotonic_ns()));
    clock("before");
    let start = monotonic_ns();
    crate::idle::sleep_ns(ms * 1_000_000);
    let slept = monotonic_ns() - start;
    clock("after");
    print(format_args!("slept requested_ns={} actual_ns={slept}\n", ms * 1_000_000));
}

fn exhaust_memory() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used.
        hoard.push(alloc::vec![0x5a; 1 << 20]);
    }
}

fn cpu(iterations: u64) {
    let start = crate::time::rdtsc();
    let result = crate::workload::spin(iterations);
    let ns = crate::time::tsc_to_ns(crate::time::rdtsc() - start);
    print(format_args!("cpu iterations={iterations} ns={ns} result={result}\n"));
}
