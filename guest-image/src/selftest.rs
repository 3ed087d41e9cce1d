//! Guest behaviours the integration tests and benchmarks ask for with
//! `mvm.test=<name>[:<arg>]`, to check how the VMM and the guest runtime
//! handle each way a guest can run and end.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::arch::asm;

use crate::cmdline::{parse_u64, Display};
use crate::console::print;
use crate::interrupts;
use crate::netstack::{parse_endpoint, Stack};
use crate::paging::Access;
use crate::port::{inb, outb, outl};
use crate::time::{host_wall_ns, monotonic_ns, wall_ns};
use crate::virtio::blk::{Blk, BlkError, Header, SECTOR};
use crate::virtio::queue::Descriptor;
use crate::virtio::{self, DEVICE_BLOCK, DEVICE_NET};

pub fn run(spec: &[u8], cmdline: &[u8]) {
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
        b"reset" => reset(),
        b"halt" => halt(),
        b"pic" => pic(),
        b"sleep" => sleep(number()),
        b"oom" => exhaust_memory(),
        b"vmem" => vmem(),
        b"cpu" => cpu(number()),
        b"blk-sum" => blk_sum(disk(cmdline, number())),
        b"blk-write" => blk_write(disk(cmdline, number())),
        b"blk-ro" => blk_read_only(disk(cmdline, number())),
        b"blk-abuse" => blk_abuse(disk(cmdline, number())),
        b"net-echo" => net_echo(cmdline, arg.unwrap_or_default()),
        b"net-serve" => network(cmdline).serve(number()),
        b"blk-seq-read" | b"blk-seq-write" | b"blk-rand-read" => {
            crate::iobench::blk(name, spec, arg, |index| disk(cmdline, index))
        }
        b"net-send" => crate::iobench::net_send(spec, arg, || network(cmdline)),
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
            b"de" => {
                asm!("div {0:e}", in(reg) 0u32, inout("eax") 1u32 => _, inout("edx") 0u32 => _, options(nomem, nostack))
            }
            // Non-canonical address.
            b"gp" => asm!("mov rax, [{}]", in(reg) 0x8000_0000_0000_0000u64, out("rax") _, options(nostack)),
            // Canonical, but far above any RAM the page tables map.
            b"pf" => asm!("mov qword ptr [{}], 1", in(reg) 0x7f00_0000_0000u64, options(nostack)),
            b"stack-overflow" => {
                recurse(0);
            }
            // What wasmtime's code does with a null funcref: read a field.
            b"null" => asm!("mov rax, [{}]", in(reg) 8u64, out("rax") _, options(nostack)),
            b"write-read-only" => {
                let page = protected_page(Access::Read);
                asm!("mov qword ptr [{}], 1", in(reg) page, options(nostack));
            }
            b"exec-no-execute" => {
                let page = protected_page(Access::ReadWrite);
                (page as *mut u8).write(0xc3); // ret
                asm!("call {}", in(reg) page, clobber_abi("C"));
            }
            b"df" => {
                // A #GP whose gate is missing faults again while it is
                // delivered: a double fault, which runs on its own stack.
                interrupts::remove_gate(interrupts::GENERAL_PROTECTION);
                asm!("mov rax, [{}]", in(reg) 0x8000_0000_0000_0000u64, out("rax") _, options(nostack));
            }
            _ => panic!(
                "mvm.test=fault:{}: expected ud, bp, de, gp, pf, null, stack-overflow, df, write-read-only or exec-no-execute",
                Display(kind)
            ),
        }
    }
}

/// vmem's blocks and pages keep what was written through every change of
/// access, a block split by a change to part of it included, and come back
/// zeroed after a release. Prints "vmem: ok" or panics with what differed.
fn vmem() {
    use crate::vmem::{protect, release, reserve, PAGE};
    const MIB: u64 = 1 << 20;
    let base = reserve(8 * MIB).expect("address space").next_multiple_of(2 * MIB);
    let word = |addr: u64| addr as *mut u64;
    // SAFETY (all the reads and writes below): each address lies in a page
    // this function has just made readable, or readable and writable.
    unsafe {
        protect(base, 4 * MIB, Access::ReadWrite).expect("two whole blocks");
        for i in 0..(4 * MIB / PAGE) {
            assert_eq!(word(base + i * PAGE).read(), 0, "a fresh page is zeroed");
            word(base + i * PAGE).write(i);
        }
        // Part of the first block: it is split, the rest keeps its access.
        protect(base + PAGE, PAGE, Access::None).expect("one page");
        protect(base + 2 * PAGE, PAGE, Access::Read).expect("one page");
        protect(base + PAGE, PAGE, Access::ReadWrite).expect("one page");
        for i in 0..(4 * MIB / PAGE) {
            assert_eq!(word(base + i * PAGE).read(), i, "page {i} kept its contents");
        }
        word(base + 3 * PAGE).write(7);
        // Released, then mapped again: fresh zeroed frames.
        release(base, 4 * MIB).expect("the range");
        protect(base, 4 * MIB, Access::ReadWrite).expect("two whole blocks");
        for i in 0..(4 * MIB / PAGE) {
            assert_eq!(word(base + i * PAGE).read(), 0, "page {i} is zeroed again");
        }
    }
    print(format_args!("vmem: ok\n"));
}

/// A page above RAM with the given access, as wasmtime's memories get them.
fn protected_page(access: Access) -> u64 {
    let page = crate::vmem::reserve(crate::vmem::PAGE).expect("address space for one page");
    crate::vmem::protect(page, crate::vmem::PAGE, access).expect("a page-aligned range");
    page
}

/// Asks for a reset the way Linux does with `reboot=k`: the i8042's
/// "pulse reset line" command.
fn reset() {
    outb(I8042_COMMAND, I8042_RESET_CPU);
    halt();
}

/// Halts with no wake deadline armed and nothing else that could wake the
/// vCPU.
fn halt() -> ! {
    outl(crate::idle::WAKE_TIMER_PORT, crate::idle::WAKE_TIMER_CANCEL);
    crate::power::halt_forever()
}

/// Writes a mask to the master 8259 PIC and reads it back: only an
/// interrupt controller keeps it (the in-kernel irqchip has one); an empty
/// bus reads as 0xff.
fn pic() {
    outb(PIC1_DATA, PIC_PROBE_MASK);
    print(format_args!("pic mask wrote={PIC_PROBE_MASK:#04x} read={:#04x}\n", inb(PIC1_DATA)));
}

const I8042_COMMAND: u16 = 0x64;
const I8042_RESET_CPU: u8 = 0xfe;
const PIC1_DATA: u16 = 0x21;
const PIC_PROBE_MASK: u8 = 0x5a;

/// Recurses until the stack runs into its guard page: the point of the test.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[7])
}

/// Prints the clocks (with the host's, read at the same moment), sleeps `ms`
/// milliseconds with the vCPU halted, and prints them again with how long
/// the sleep really took and how many halts it took.
fn sleep(ms: u64) {
    let clock = |when: &str| {
        let (wall, mono, host) = (wall_ns(), monotonic_ns(), host_wall_ns());
        print(format_args!("clock {when}: wall_ns={wall} mono_ns={mono} host_ns={host}\n"))
    };
    clock("before");
    let start = monotonic_ns();
    let halts = crate::idle::sleep_ns(ms * 1_000_000);
    let slept = monotonic_ns() - start;
    clock("after");
    print(format_args!("slept requested_ns={} actual_ns={slept}\nsleep halts={halts}\n", ms * 1_000_000));
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

fn disk(cmdline: &[u8], index: u64) -> Blk {
    let mut disks = virtio::find(cmdline, DEVICE_BLOCK);
    if index as usize >= disks.len() {
        panic!("no virtio-blk disk {index}: the VM has {}", disks.len());
    }
    Blk::new(disks.swap_remove(index as usize)).unwrap_or_else(|e| panic!("virtio-blk set-up failed: {e:?}"))
}

const CHUNK: usize = 64 * 1024;

/// FNV-1a, 64 bits: the tests compute the same over the image file.
fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn blk_sum(mut blk: Blk) {
    let mut buf = alloc::vec![0u8; CHUNK];
    let mut hash = 0xcbf2_9ce4_8422_2325;
    let total = blk.capacity_sectors * SECTOR as u64;
    let mut offset = 0;
    while offset < total {
        let len = (total - offset).min(CHUNK as u64) as usize;
        blk.read(offset / SECTOR as u64, &mut buf[..len]).unwrap_or_else(|e| panic!("read at {offset}: {e:?}"));
        hash = fnv1a(hash, &buf[..len]);
        offset += len as u64;
    }
    let id = blk.id().unwrap_or_else(|e| panic!("get id: {e:?}"));
    let id_len = id.iter().position(|b| *b == 0).unwrap_or(id.len());
    print(format_args!(
        "blk sectors={} read_only={} id=\"{}\" fnv1a64={hash:#018x}\n",
        blk.capacity_sectors,
        blk.read_only,
        Display(&id[..id_len])
    ));
}

/// The byte the write test puts at `offset`: differs within and across sectors.
fn pattern(offset: u64) -> u8 {
    (offset as u8) ^ ((offset >> 9) as u8).wrapping_mul(31)
}

fn blk_write(mut blk: Blk) {
    let total = blk.capacity_sectors * SECTOR as u64;
    let mut buf = alloc::vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < total {
        let len = (total - offset).min(CHUNK as u64) as usize;
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
        blk.write(offset / SECTOR as u64, &buf[..len]).unwrap_or_else(|e| panic!("write at {offset}: {e:?}"));
        offset += len as u64;
    }
    blk.flush().unwrap_or_else(|e| panic!("flush: {e:?}"));
    print(format_args!("blk wrote bytes={total}\n"));
}

fn blk_read_only(mut blk: Blk) {
    let sector = [0x77u8; SECTOR];
    match blk.write(0, &sector) {
        Ok(()) => panic!("a read-only disk accepted a write"),
        Err(e) => print(format_args!("blk write refused: {e:?} (read_only={})\n", blk.read_only)),
    }
}

/// Feeds the device malformed requests: each must fail with IOERR, or
/// break the device (DEVICE_NEEDS_RESET), after which a reset brings it
/// back. Good requests must work between and after them.
fn blk_abuse(mut blk: Blk) {
    let header = Box::new(Header { kind: 0, reserved: 0, sector: 0 });
    let mut status = Box::new(0xffu8);
    let mut data = alloc::vec![0u8; SECTOR];
    let desc = |addr: u64, len: u32, flags: u16, next: u16| Descriptor { addr, len, flags, next };
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let h = &*header as *const Header as u64;
    let d = data.as_mut_ptr() as u64;
    let st = &mut *status as *mut u8 as u64;
    let beyond_ram = 0x40_0000_0000; // 256 GiB: no guest has RAM there
                                     // `next` is an index into the chain (see Virtqueue::add_raw).
    let cases: [(&str, Vec<Descriptor>); 7] = [
        ("no-status", alloc::vec![desc(h, 16, 0, 0)]),
        ("short-header", alloc::vec![desc(h, 8, NEXT, 1), desc(st, 1, WRITE, 0)]),
        (
            "data-outside-ram",
            alloc::vec![desc(h, 16, NEXT, 1), desc(beyond_ram, 512, WRITE | NEXT, 2), desc(st, 1, WRITE, 0)],
        ),
        (
            "writable-header",
            alloc::vec![desc(h, 16, WRITE | NEXT, 1), desc(d, 512, WRITE | NEXT, 2), desc(st, 1, WRITE, 0)],
        ),
        ("huge-length", alloc::vec![desc(h, 16, NEXT, 1), desc(d, u32::MAX, WRITE | NEXT, 2), desc(st, 1, WRITE, 0)]),
        ("next-past-table", alloc::vec![desc(h, 16, NEXT, 0x7fff)]),
        ("looping-chain", alloc::vec![desc(h, 16, NEXT, 0)]),
    ];
    for (name, chain) in cases.iter() {
        // SAFETY: a byte the device may have written; read it fresh.
        unsafe { core::ptr::write_volatile(st as *mut u8, 0xff) };
        let result = blk.submit_raw(chain);
        // SAFETY: as above.
        let status = unsafe { core::ptr::read_volatile(st as *const u8) };
        let outcome = match result {
            Ok(()) if status == 0 => panic!("malformed request {name} succeeded"),
            Ok(()) => "failed",
            Err(BlkError::DeviceBroken) => "device-broken",
            Err(e) => panic!("malformed request {name}: unexpected {e:?}"),
        };
        print(format_args!("blk abuse {name}: {outcome} status={status:#x}\n"));
        if outcome == "device-broken" {
            blk = blk.reinit().unwrap_or_else(|e| panic!("reset after {name}: {e:?}"));
        }
        blk.read(0, &mut data).unwrap_or_else(|e| panic!("a good read after {name} failed: {e:?}"));
    }
    let past_end = blk.read(blk.capacity_sectors, &mut data);
    print(format_args!("blk abuse past-end: {past_end:?}\n"));
    assert_eq!(past_end, Err(BlkError::IoError), "a read past the end must fail with IOERR");
    blk.read(0, &mut data).unwrap_or_else(|e| panic!("a good read after past-end failed: {e:?}"));
    print(format_args!("blk abuse: good reads ok\n"));
}

fn network(cmdline: &[u8]) -> Stack {
    let mut nics = virtio::find(cmdline, DEVICE_NET);
    if nics.is_empty() {
        panic!("no virtio-net device: boot with --net");
    }
    let net = virtio::net::Net::new(nics.swap_remove(0)).unwrap_or_else(|e| panic!("virtio-net set-up failed: {e:?}"));
    Stack::new(net, cmdline)
}

fn net_echo(cmdline: &[u8], peer: &[u8]) {
    let peer_text = core::str::from_utf8(peer).unwrap_or_default();
    let Some(endpoint) = parse_endpoint(peer_text) else {
        panic!("mvm.test=net-echo:{}: expected <address>:<port>", Display(peer));
    };
    let mut stack = network(cmdline);
    let message: alloc::vec::Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    match stack.echo(endpoint, &message, 20_000) {
        Ok(echo) if echo == message => print(format_args!("net echo ok bytes={}\n", echo.len())),
        Ok(echo) => panic!("echo differs: {} bytes back for {}", echo.len(), message.len()),
        Err(why) => panic!("echo to {peer_text} failed: {why}"),
    }
}
