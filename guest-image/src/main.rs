//! mvm's tiny guest kernel.
//!
//! Entered at its 64-bit entry point through the Linux 64-bit boot protocol
//! (RSI = boot params, long mode, identity-mapped page tables set up by the
//! VMM). It switches to PVM-native execution when the VMM asks for it, reads
//! its memory map and command line, prints its banner on COM1 and powers off
//! with the status given by `mvm.exit=N`.

#![no_std]
#![no_main]

extern crate alloc;

mod bootparams;
mod cmdline;
mod console;
mod entropy;
mod gdt;
mod idle;
mod interrupts;
mod iobench;
mod job;
mod memory;
mod netstack;
mod paging;
mod port;
mod power;
mod pvm;
mod rt;
mod selftest;
mod time;
mod virtio;
mod vmem;
mod workload;

use core::arch::global_asm;

use bootparams::BootInfo;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// The entry runs in the VMM's page tables with every instruction emulated
// until the PVM switch, so it does the switch first and the rest after.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
    .code64
_start:
    lea rsp, [rip + __boot_stack_top]
    xor ebp, ebp
    mov r15, rsi
    call pvm_early_switch
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    cld
    rep stosb
    mov rdi, r15
    call {main}
    ud2
"#,
    main = sym kernel_main,
);

extern "C" fn kernel_main(boot_params: *const u8) -> ! {
    // SAFETY: the boot protocol hands us the zero page in RSI, inside RAM that
    // the identity map covers, and nothing else writes it.
    let boot = unsafe { BootInfo::read(boot_params) };
    let args = cmdline::Args::parse(boot.cmdline);
    let mode = pvm::confirm_mode(args.pvm);
    gdt::init();
    interrupts::init();
    let mut frames = memory::Frames::new(boot.ram());
    paging::init(&mut frames, boot.ram_top(), mode != pvm::Mode::Native);
    memory::init_heap(&mut frames);
    for window in virtio::windows(boot.cmdline) {
        paging::map_device(window.base, window.size);
    }
    time::init(args.tsc_khz);

    if args.job {
        // COM1 costs one exit per byte: a job's banner is short (its command
        // line, four device announcements, would cost ~5 ms) and deferred,
        // printed only before a fault's, a panic's or another report.
        console::defer(format_args!("mvm-guest {VERSION}: mode={} {} MiB RAM, job\n", mode.name(), boot.ram_mib()));
        job::run(boot.cmdline, boot.ram_mib());
    }
    console::print(format_args!(
        "mvm-guest {VERSION}: mode={} {} MiB RAM, cmdline \"{}\"\n",
        mode.name(),
        boot.ram_mib(),
        cmdline::Display(boot.cmdline),
    ));
    if let Some(test) = args.test {
        selftest::run(test, boot.cmdline);
    }
    power::exit(args.exit_status)
}
