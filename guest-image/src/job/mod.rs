//! The job runtime: the guest side of `mvm up`.
//!
//! With `mvm.job=1` on its command line the guest runs one WebAssembly (WASI
//! preview 1) module instead of its self-tests: native code that mvm
//! compiled on the host with Cranelift, loaded and run by wasmtime's no_std
//! runtime on this kernel as its platform (platform.rs). Its devices, in
//! command-line order: virtio-blk 0, the job disk (the compiled module, its
//! arguments, environment and preopened directories; see tar.rs in
//! mvm-wasi, guest-image/wasi/, which also holds the WASI functions);
//! virtio-blk 1, the filesystem disk (everything the job sees under `/`,
//! see vfs/ and fsimage.rs there); virtio-console 0 and 1, the job's
//! stdout and stderr
//! (and stdin, on console 0's receive queue). When the module returns or calls `proc_exit`, the
//! guest saves the filesystem (its data, then its metadata, then the
//! superblock) and powers off with the exit status; when it traps, it does
//! the same and powers off with reason "trap" and the trap's message (see
//! power.rs).

mod platform;
mod wasi;

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::ptr::NonNull;

use crate::paging::Access;
use wasmtime::{CustomCodeMemory, Engine, Linker, Module, Store, Trap};

use mvm_wasi::tar;
use mvm_wasi::vfs::Fs;
use mvm_wasi::wasi::{Devices, Wasi};

use crate::entropy::Entropy;
use crate::virtio::blk::Blk;
use crate::virtio::console;
use crate::virtio::{self, DEVICE_BLOCK, DEVICE_CONSOLE};
use wasi::{Input, Output, State, Tsc};

/// The filesystem's write-back cache: a fixed budget whatever the job
/// writes, an eighth of the guest's RAM (the job's memory limit, which the
/// cache comes out of) up to 8 MiB; from 32 MiB of RAM on, flushes and
/// read-ahead go in whole mebibytes.
fn cache_bytes(ram_mib: u64) -> usize {
    ((ram_mib << 20) / 8).clamp(256 << 10, 8 << 20) as usize
}

enum Ending {
    Exit(u8),
    Trap(String),
}

pub fn run(cmdline: &[u8], ram_mib: u64) -> ! {
    let mut disks = virtio::find(cmdline, DEVICE_BLOCK).into_iter();
    let (Some(job_disk), Some(fs_disk)) = (disks.next(), disks.next()) else {
        panic!("a job needs two virtio-blk disks: the job disk and the filesystem disk");
    };
    let mut job_disk = Blk::new(job_disk).unwrap_or_else(|e| panic!("job disk: {e:?}"));
    let fs_disk = Blk::new(fs_disk).unwrap_or_else(|e| panic!("filesystem disk: {e:?}"));
    let mut consoles = virtio::find(cmdline, DEVICE_CONSOLE)
        .into_iter()
        .map(|mmio| console::open(mmio).unwrap_or_else(|e| panic!("job console: {e:?}")));
    let (stdout, stdin) = match consoles.next() {
        Some((output, input)) => (Output::Console(output), Input::Console(input)),
        None => (Output::Com1, Input::Ended),
    };
    let stderr = consoles.next().map_or(Output::Com1, |(output, _)| Output::Console(output));

    let job = tar::read_job(&mut job_disk).unwrap_or_else(|e| panic!("cannot read the job disk: {e:?}"));
    // The host built the image: one it cannot have meant is a bug there.
    let fs =
        Fs::load(fs_disk, cache_bytes(ram_mib)).unwrap_or_else(|e| panic!("cannot load the job's filesystem: {e}"));
    let devices = Devices { stdin, stdout, stderr, clock: Tsc, entropy: Entropy::from_host() };
    let state = Wasi::new(job.args, job.env, fs, &job.preopens, devices).unwrap_or_else(|e| panic!("{e}"));
    let (ending, mut state) = execute(job.module.leak(), state);
    state.flush_outputs();
    if let Err(errno) = state.fs.save() {
        crate::console::print(format_args!("job filesystem not saved: the disk failed (WASI errno {errno})\n"));
    }
    match ending {
        Ending::Exit(status) => crate::power::exit(status),
        Ending::Trap(message) => crate::power::trap(&message),
    }
}

/// The compiled module runs where the job disk put it, through a view that
/// is read-execute from the start (`code_view`): publishing has nothing left
/// to do. The view is never writable; the same frames stay writable only
/// through the kernel's identity map of RAM, which wasm cannot address.
struct InPlaceCode;

impl CustomCodeMemory for InPlaceCode {
    fn required_alignment(&self) -> usize {
        1
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn engine() -> Engine {
    let mut config = mvm_wasm_config::config();
    // SAFETY: the detector reads this vCPU's CPUID, which is what the code
    // will run on.
    unsafe { config.detect_host_feature(platform::detect_host_feature) };
    config.with_custom_code_memory(Some(Arc::new(InPlaceCode)));
    // The ending line names the trap; a backtrace would only cost time.
    config.wasm_backtrace_max_frames(None);
    Engine::new(&config).unwrap_or_else(|e| panic!("cannot configure wasmtime: {e}"))
}

/// A read-execute view, above RAM, of the compiled module the job disk
/// delivered into (page-aligned, identity-mapped, read-write) memory.
fn code_view(code: &'static [u8]) -> NonNull<[u8]> {
    let view = crate::vmem::alias(code.as_ptr() as u64, code.len() as u64, Access::ReadExecute)
        .unwrap_or_else(|e| panic!("cannot map the compiled module: {e:?}"));
    NonNull::slice_from_raw_parts(NonNull::new(view as *mut u8).expect("views are above RAM"), code.len())
}

fn execute(code: &'static [u8], state: State) -> (Ending, State) {
    let engine = engine();
    // SAFETY: the job disk's compiled module was made by mvm on the host
    // with the same configuration (mvm never stages code from anyone else),
    // and its buffer is leaked, so it outlives the module and is never
    // written again.
    let module = unsafe { Module::deserialize_raw(&engine, code_view(code)) }
        .unwrap_or_else(|e| panic!("cannot load the compiled module: {e}"));
    let mut store = Store::new(&engine, state);
    let result = (|| -> wasmtime::Result<()> {
        let mut linker = Linker::new(&engine);
        wasi::link(&mut linker, &module)?;
        let instance = linker.instantiate(&mut store, &module)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())
    })();
    let ending = match result {
        Ok(()) => Ending::Exit(0),
        Err(error) => match (error.downcast_ref::<wasi::Exit>(), error.downcast_ref::<Trap>()) {
            (Some(exit), _) => Ending::Exit(exit.0 as u8),
            (None, Some(trap)) => Ending::Trap(description(trap)),
            (None, None) => Ending::Trap(error.to_string()),
        },
    };
    (ending, store.into_data())
}

/// A trap's description without wasmtime's "wasm trap: " prefix: mvm's
/// line already says "trap: ".
fn description(trap: &Trap) -> String {
    let text = trap.to_string();
    text.strip_prefix("wasm trap: ").map(String::from).unwrap_or(text)
}
