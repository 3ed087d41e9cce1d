//! The guest's side of the WASI layer in mvm-wasi: the devices behind its
//! traits (virtio consoles, the filesystem disk, TSC clocks with the vCPU
//! halted, the host's entropy port) and the registration of every function
//! with wasmtime's linker. `proc_raise` answers ENOSYS (a job has no
//! signals); the socket functions find no sockets (mvm-wasi's `sock_call`).

use alloc::collections::BTreeSet;
use alloc::string::String;
use core::fmt;

use mvm_wasi::errno;
use mvm_wasi::wasi::{self as w, rights, Wasi};
use mvm_wasi::{BlockDevice, Clock, Platform};
use wasmtime::{Caller, Extern, Linker, Memory, Module};

use crate::entropy::Entropy;
use crate::virtio::blk::{Blk, BlkError};
use crate::virtio::console::{InputStream, OutputStream};

const MODULE: &str = "wasi_snapshot_preview1";

pub struct Guest;

impl Platform for Guest {
    type Disk = Blk;
    type Input = Input;
    type Output = Output;
    type Clock = Tsc;
    type Entropy = Entropy;
}

pub type State = Wasi<Guest>;

/// Where a byte stream goes: its virtio console, or COM1 when the VM has
/// none (a job booted by hand).
pub enum Output {
    Console(OutputStream),
    Com1,
}

impl mvm_wasi::Output for Output {
    fn write(&mut self, data: &[u8]) {
        match self {
            Output::Console(stream) => stream.write(data),
            Output::Com1 => crate::console::print(format_args!("{}", String::from_utf8_lossy(data))),
        }
    }

    fn flush(&mut self) {
        if let Output::Console(stream) = self {
            stream.flush();
        }
    }
}

/// Where stdin comes from: the first virtio console's receive queue, or,
/// when the VM has none (a job booted by hand), a stream that has ended
/// before it began.
pub enum Input {
    Console(InputStream),
    Ended,
}

impl mvm_wasi::Input for Input {
    fn would_wait(&mut self) -> bool {
        match self {
            Input::Console(stream) => stream.would_wait(),
            Input::Ended => false,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        match self {
            Input::Console(stream) => stream.read(buf),
            Input::Ended => 0,
        }
    }
}

/// The TSC clocks; a wait halts the vCPU.
pub struct Tsc;

impl Clock for Tsc {
    fn wall_ns(&mut self) -> u64 {
        crate::time::wall_ns()
    }

    fn monotonic_ns(&mut self) -> u64 {
        crate::time::monotonic_ns()
    }

    fn sleep_until(&mut self, deadline_ns: u64) {
        crate::idle::sleep_until(deadline_ns);
    }
}

impl mvm_wasi::Entropy for Entropy {
    fn fill(&mut self, buf: &mut [u8]) {
        Entropy::fill(self, buf);
    }
}

impl BlockDevice for Blk {
    type Error = BlkError;

    fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        Blk::read(self, sector, buf)
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        Blk::write(self, sector, buf)
    }
}

/// `proc_exit`'s status, carried out of the module as an error.
#[derive(Debug)]
pub struct Exit(pub i32);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl core::error::Error for Exit {}

fn memory_of(caller: &mut Caller<'_, State>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::Error::msg("the module exports no memory named \"memory\"")),
    }
}

fn code(result: Result<(), w::Errno>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(errno) => i32::from(errno),
    }
}

/// Defines a WASI function whose body gets the module's memory and the
/// runtime state, and whose `Err(errno)` becomes the function's result.
macro_rules! wasi {
    ($linker:expr, $name:literal, |$mem:ident, $wasi:ident $(, $arg:ident: $ty:ty)*| $body:expr) => {
        if $linker.wants($name) {
            $linker.linker.func_wrap(MODULE, $name, |mut caller: Caller<'_, State>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                let memory = memory_of(&mut caller)?;
                let ($mem, $wasi) = memory.data_and_store_mut(&mut caller);
                Ok(code($body))
            })?;
        }
    };
}

/// The linker, and the WASI functions the module imports: only those are
/// defined. Each definition is code of its own (wasmtime makes one per
/// function), and under PVM first running a page of code costs a fault, so
/// a module that imports a few functions pays for those few.
struct Imports<'a> {
    linker: &'a mut Linker<State>,
    names: BTreeSet<&'a str>,
}

impl Imports<'_> {
    fn wants(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

pub fn link(linker: &mut Linker<State>, module: &Module) -> wasmtime::Result<()> {
    let names = module.imports().filter(|import| import.module() == MODULE).map(|import| import.name()).collect();
    let linker = &mut Imports { linker, names };
    wasi!(linker, "args_sizes_get", |mem, wasi, argc: u32, size: u32| w::args_sizes_get(mem, wasi, argc, size));
    wasi!(linker, "args_get", |mem, wasi, argv: u32, buf: u32| w::args_get(mem, wasi, argv, buf));
    wasi!(linker, "environ_sizes_get", |mem, wasi, count: u32, size: u32| w::environ_sizes_get(mem, wasi, count, size));
    wasi!(linker, "environ_get", |mem, wasi, environ: u32, buf: u32| w::environ_get(mem, wasi, environ, buf));
    wasi!(linker, "clock_res_get", |mem, wasi, id: i32, ptr: u32| w::clock_res_get(mem, wasi, id, ptr));
    wasi!(linker, "clock_time_get", |mem, wasi, id: i32, precision: i64, ptr: u32| w::clock_time_get(
        mem, wasi, id, precision, ptr
    ));
    wasi!(linker, "random_get", |mem, wasi, ptr: u32, len: u32| w::random_get(mem, wasi, ptr, len));
    wasi!(linker, "fd_write", |mem, wasi, fd: i32, iovs: u32, count: u32, written: u32| w::fd_write(
        mem, wasi, fd, iovs, count, written
    ));
    wasi!(linker, "fd_read", |mem, wasi, fd: i32, iovs: u32, count: u32, read: u32| w::fd_read(
        mem, wasi, fd, iovs, count, read
    ));
    wasi!(linker, "fd_pread", |mem, wasi, fd: i32, iovs: u32, count: u32, offset: i64, read: u32| w::fd_pread(
        mem, wasi, fd, iovs, count, offset, read
    ));
    wasi!(linker, "fd_pwrite", |mem, wasi, fd: i32, iovs: u32, count: u32, offset: i64, written: u32| w::fd_pwrite(
        mem, wasi, fd, iovs, count, offset, written
    ));
    wasi!(linker, "fd_seek", |mem, wasi, fd: i32, offset: i64, whence: i32, result: u32| w::fd_seek(
        mem, wasi, fd, offset, whence, result
    ));
    wasi!(linker, "fd_tell", |mem, wasi, fd: i32, result: u32| w::fd_tell(mem, wasi, fd, result));
    wasi!(linker, "fd_close", |_mem, wasi, fd: i32| w::fd_close(wasi, fd));
    wasi!(linker, "fd_renumber", |_mem, wasi, from: i32, to: i32| w::fd_renumber(wasi, from, to));
    wasi!(linker, "fd_fdstat_get", |mem, wasi, fd: i32, ptr: u32| w::fd_fdstat_get(mem, wasi, fd, ptr));
    wasi!(linker, "fd_fdstat_set_flags", |_mem, wasi, fd: i32, flags: i32| w::fd_fdstat_set_flags(wasi, fd, flags));
    wasi!(linker, "fd_fdstat_set_rights", |_mem, wasi, fd: i32, base: i64, inheriting: i64| {
        w::fd_fdstat_set_rights(wasi, fd, base, inheriting)
    });
    wasi!(linker, "fd_filestat_get", |mem, wasi, fd: i32, ptr: u32| w::fd_filestat_get(mem, wasi, fd, ptr));
    wasi!(linker, "fd_filestat_set_size", |_mem, wasi, fd: i32, size: i64| w::fd_filestat_set_size(wasi, fd, size));
    wasi!(linker, "fd_filestat_set_times", |_mem, wasi, fd: i32, atim: i64, mtim: i64, flags: i32| {
        w::fd_filestat_set_times(wasi, fd, atim, mtim, flags)
    });
    wasi!(linker, "fd_allocate", |_mem, wasi, fd: i32, offset: i64, len: i64| w::fd_allocate(wasi, fd, offset, len));
    wasi!(linker, "fd_advise", |_mem, wasi, fd: i32, offset: i64, len: i64, advice: i32| w::fd_advise(
        wasi, fd, offset, len, advice
    ));
    wasi!(linker, "fd_prestat_get", |mem, wasi, fd: i32, ptr: u32| w::fd_prestat_get(mem, wasi, fd, ptr));
    wasi!(linker, "fd_prestat_dir_name", |mem, wasi, fd: i32, ptr: u32, len: u32| w::fd_prestat_dir_name(
        mem, wasi, fd, ptr, len
    ));
    wasi!(linker, "fd_readdir", |mem, wasi, fd: i32, buf: u32, len: u32, cookie: i64, used: u32| w::fd_readdir(
        mem, wasi, fd, buf, len, cookie, used
    ));
    wasi!(linker, "fd_sync", |_mem, wasi, fd: i32| w::fd_sync(wasi, fd, rights::FD_SYNC));
    wasi!(linker, "fd_datasync", |_mem, wasi, fd: i32| w::fd_sync(wasi, fd, rights::FD_DATASYNC));
    wasi!(linker, "path_open", |mem,
                                wasi,
                                fd: i32,
                                dirflags: i32,
                                path: u32,
                                path_len: u32,
                                oflags: i32,
                                base: i64,
                                inheriting: i64,
                                fdflags: i32,
                                opened: u32| {
        w::path_open(mem, wasi, fd, dirflags, (path, path_len), oflags, base, inheriting, fdflags, opened)
    });
    wasi!(linker, "path_filestat_get", |mem, wasi, fd: i32, flags: i32, path: u32, path_len: u32, buf: u32| {
        w::path_filestat_get(mem, wasi, fd, flags, (path, path_len), buf)
    });
    wasi!(linker, "path_filestat_set_times", |mem,
                                              wasi,
                                              fd: i32,
                                              flags: i32,
                                              path: u32,
                                              path_len: u32,
                                              atim: i64,
                                              mtim: i64,
                                              fstflags: i32| {
        w::path_filestat_set_times(mem, wasi, fd, flags, (path, path_len), atim, mtim, fstflags)
    });
    wasi!(linker, "path_create_directory", |mem, wasi, fd: i32, path: u32, path_len: u32| {
        w::path_create_directory(mem, wasi, fd, (path, path_len))
    });
    wasi!(linker, "path_unlink_file", |mem, wasi, fd: i32, path: u32, path_len: u32| {
        w::path_unlink_file(mem, wasi, fd, (path, path_len))
    });
    wasi!(linker, "path_remove_directory", |mem, wasi, fd: i32, path: u32, path_len: u32| {
        w::path_remove_directory(mem, wasi, fd, (path, path_len))
    });
    wasi!(linker, "path_link", |mem,
                                wasi,
                                old_fd: i32,
                                old_flags: i32,
                                old_path: u32,
                                old_len: u32,
                                new_fd: i32,
                                new_path: u32,
                                new_len: u32| {
        w::path_link(mem, wasi, old_fd, old_flags, (old_path, old_len), new_fd, (new_path, new_len))
    });
    wasi!(linker, "path_rename", |mem,
                                  wasi,
                                  fd: i32,
                                  old_path: u32,
                                  old_len: u32,
                                  new_fd: i32,
                                  new_path: u32,
                                  new_len: u32| {
        w::path_rename(mem, wasi, fd, (old_path, old_len), new_fd, (new_path, new_len))
    });
    wasi!(linker, "path_symlink", |mem, wasi, old_path: u32, old_len: u32, fd: i32, new_path: u32, new_len: u32| {
        w::path_symlink(mem, wasi, (old_path, old_len), fd, (new_path, new_len))
    });
    wasi!(linker, "path_readlink", |mem,
                                    wasi,
                                    fd: i32,
                                    path: u32,
                                    path_len: u32,
                                    buf: u32,
                                    buf_len: u32,
                                    used: u32| {
        w::path_readlink(mem, wasi, fd, (path, path_len), buf, buf_len, used)
    });
    wasi!(linker, "poll_oneoff", |mem, wasi, subs: u32, events: u32, count: u32, nevents: u32| {
        w::poll_oneoff(mem, wasi, subs, events, count, nevents)
    });
    wasi!(linker, "sock_accept", |_mem, wasi, fd: i32, _flags: i32, _new_fd: u32| w::sock_call(wasi, fd));
    wasi!(linker, "sock_recv", |_mem, wasi, fd: i32, _iovs: u32, _count: u32, _flags: i32, _len: u32, _out: u32| {
        w::sock_call(wasi, fd)
    });
    wasi!(linker, "sock_send", |_mem, wasi, fd: i32, _iovs: u32, _count: u32, _flags: i32, _len: u32| {
        w::sock_call(wasi, fd)
    });
    wasi!(linker, "sock_shutdown", |_mem, wasi, fd: i32, _how: i32| w::sock_call(wasi, fd));
    if linker.wants("sched_yield") {
        linker.linker.func_wrap(MODULE, "sched_yield", || -> i32 { 0 })?;
    }
    if linker.wants("proc_exit") {
        linker.linker.func_wrap(MODULE, "proc_exit", |code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Exit(code)))
        })?;
    }
    if linker.wants("proc_raise") {
        linker.linker.func_wrap(MODULE, "proc_raise", |_signal: i32| -> i32 { i32::from(errno::NOSYS) })?;
    }
    Ok(())
}
