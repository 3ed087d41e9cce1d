//! The job runtime: the guest side of `mvm up`.
//!
//! With `mvm.job=1` on its command line the guest runs one WebAssembly (WASI
//! preview 1) module with wasmi instead of its self-tests. Its devices, in
//! command-line order: virtio-blk 0, the job disk (the module, its
//! arguments and environment, and the input files; see tar.rs in mvm-wasi,
//! guest-image/wasi/, which also holds the WASI functions); virtio-blk 1,
//! the output disk; virtio-console 0 and 1, the job's stdout and stderr.
//! When the module returns or calls `proc_exit`, the guest writes what the
//! job left under /out to the output disk and powers off with the exit
//! status; when it traps, it does the same and powers off with reason
//! "trap" and the trap's message (see power.rs).

mod wasi;

use alloc::format;
use alloc::string::String;

use wasmi::{Engine, Linker, Module, Store};

use mvm_wasi::tar;
use mvm_wasi::wasi::{Devices, Wasi};

use crate::entropy::Entropy;
use crate::virtio::blk::Blk;
use crate::virtio::console::OutputStream;
use crate::virtio::{self, DEVICE_BLOCK, DEVICE_CONSOLE};
use wasi::{Output, State, Tsc};

enum Ending {
    Exit(u8),
    Trap(String),
}

pub fn run(cmdline: &[u8]) -> ! {
    let mut disks = virtio::find(cmdline, DEVICE_BLOCK).into_iter();
    let (Some(job_disk), Some(out_disk)) = (disks.next(), disks.next()) else {
        panic!("a job needs two virtio-blk disks: the job disk and the output disk");
    };
    let mut job_disk = Blk::new(job_disk).unwrap_or_else(|e| panic!("job disk: {e:?}"));
    let mut out_disk = Blk::new(out_disk).unwrap_or_else(|e| panic!("output disk: {e:?}"));
    let mut consoles = virtio::find(cmdline, DEVICE_CONSOLE).into_iter().map(|mmio| match OutputStream::new(mmio) {
        Ok(stream) => Output::Console(stream),
        Err(e) => panic!("job console: {e:?}"),
    });
    let stdout = consoles.next().unwrap_or(Output::Com1);
    let stderr = consoles.next().unwrap_or(Output::Com1);

    let job = tar::read_job(&mut job_disk).unwrap_or_else(|e| panic!("cannot read the job disk: {e:?}"));
    let devices = Devices { job_disk, stdout, stderr, clock: Tsc, entropy: Entropy::from_host() };
    let state = Wasi::new(job.args, job.env, job.inputs, devices);
    let (ending, mut state) = execute(&job.module, state);
    state.flush_outputs();
    if let Err(e) = tar::write_outputs(&state.out, &mut out_disk) {
        crate::console::print(format_args!("job outputs not saved: {e:?}\n"));
    }
    match ending {
        Ending::Exit(status) => crate::power::exit(status),
        Ending::Trap(message) => crate::power::trap(&message),
    }
}

fn execute(module: &[u8], state: State) -> (Ending, State) {
    let engine = Engine::default();
    let mut store = Store::new(&engine, state);
    let result = (|| -> Result<(), wasmi::Error> {
        let module = Module::new(&engine, module)?;
        let mut linker = Linker::new(&engine);
        wasi::link(&mut linker)?;
        let instance = linker.instantiate_and_start(&mut store, &module)?;
        let start = instance.get_typed_func::<(), ()>(&store, "_start")?;
        start.call(&mut store, ())
    })();
    let ending = match result {
        Ok(()) => Ending::Exit(0),
        Err(error) => match error.i32_exit_status() {
            Some(status) => Ending::Exit(status as u8),
            None => Ending::Trap(format!("{error}")),
        },
    };
    (ending, store.into_data())
}
