//! The WASI preview 1 functions (`wasi_snapshot_preview1`, typenames.witx
//! and wasi_snapshot_preview1.witx of the WebAssembly/WASI repository) over
//! the module's linear memory and the platform's devices: args and
//! environment from the job disk, stdin, stdout and stderr on the devices,
//! clocks and entropy, and the job's filesystem (vfs.rs) through fds with
//! rights. Every pointer and length comes from the untrusted module and is
//! bounds-checked against its linear memory (EFAULT). Each function's
//! `Err(errno)` is its WASI result; the engine's glue registers them under
//! their WASI names. The fd functions are in fd.rs, the path ones in path.rs.
//!
//! Errno choices the spec leaves open follow Linux, and wasmtime where it
//! differs from Linux on purpose (noted where they are made). Rights: an fd
//! lacking FD_READ or FD_WRITE is EBADF on read or write (POSIX's "not open
//! for reading/writing", as wasmtime answers); any other missing right is
//! ENOTCAPABLE.

mod fd;
mod path;

use alloc::string::String;
use alloc::vec::Vec;

use crate::errno;
pub use crate::errno::Errno;
use crate::vfs::{FileType, Fs};
use crate::{Clock, Entropy, Input, Output, Platform};
pub use fd::*;
pub use path::*;

/// Rights (typenames.witx `rights`), one bit each.
pub mod rights {
    pub const FD_DATASYNC: u64 = 1 << 0;
    pub const FD_READ: u64 = 1 << 1;
    pub const FD_SEEK: u64 = 1 << 2;
    pub const FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
    pub const FD_SYNC: u64 = 1 << 4;
    pub const FD_TELL: u64 = 1 << 5;
    pub const FD_WRITE: u64 = 1 << 6;
    pub const FD_ADVISE: u64 = 1 << 7;
    pub const FD_ALLOCATE: u64 = 1 << 8;
    pub const PATH_CREATE_DIRECTORY: u64 = 1 << 9;
    pub const PATH_CREATE_FILE: u64 = 1 << 10;
    pub const PATH_LINK_SOURCE: u64 = 1 << 11;
    pub const PATH_LINK_TARGET: u64 = 1 << 12;
    pub const PATH_OPEN: u64 = 1 << 13;
    pub const FD_READDIR: u64 = 1 << 14;
    pub const PATH_READLINK: u64 = 1 << 15;
    pub const PATH_RENAME_SOURCE: u64 = 1 << 16;
    pub const PATH_RENAME_TARGET: u64 = 1 << 17;
    pub const PATH_FILESTAT_GET: u64 = 1 << 18;
    pub const PATH_FILESTAT_SET_SIZE: u64 = 1 << 19;
    pub const PATH_FILESTAT_SET_TIMES: u64 = 1 << 20;
    pub const FD_FILESTAT_GET: u64 = 1 << 21;
    pub const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
    pub const FD_FILESTAT_SET_TIMES: u64 = 1 << 23;
    pub const PATH_SYMLINK: u64 = 1 << 24;
    pub const PATH_REMOVE_DIRECTORY: u64 = 1 << 25;
    pub const PATH_UNLINK_FILE: u64 = 1 << 26;
    pub const POLL_FD_READWRITE: u64 = 1 << 27;
    pub const SOCK_SHUTDOWN: u64 = 1 << 28;
    pub const SOCK_ACCEPT: u64 = 1 << 29;

    /// What a regular file's fd can do.
    pub const FILE: u64 = FD_DATASYNC
        | FD_READ
        | FD_SEEK
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_TELL
        | FD_WRITE
        | FD_ADVISE
        | FD_ALLOCATE
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | POLL_FD_READWRITE;
    /// What a file on a read-only mount cannot do.
    pub const FILE_CHANGE: u64 = FD_WRITE | FD_ALLOCATE | FD_FILESTAT_SET_SIZE | FD_FILESTAT_SET_TIMES;
    /// What a directory's fd can do. Whether a change is allowed depends on
    /// where it lands (a read-only directory may lead to a writable mount),
    /// so read-only directories have these rights too and changes under
    /// them fail with EROFS.
    pub const DIR: u64 = FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_DATASYNC
        | PATH_CREATE_DIRECTORY
        | PATH_CREATE_FILE
        | PATH_LINK_SOURCE
        | PATH_LINK_TARGET
        | PATH_OPEN
        | FD_READDIR
        | PATH_READLINK
        | PATH_RENAME_SOURCE
        | PATH_RENAME_TARGET
        | PATH_FILESTAT_GET
        | PATH_FILESTAT_SET_SIZE
        | PATH_FILESTAT_SET_TIMES
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_TIMES
        | PATH_SYMLINK
        | PATH_REMOVE_DIRECTORY
        | PATH_UNLINK_FILE;
    /// Every right there is; bits above are no right and are ignored where
    /// asked for (a module may pass -1 for "all": wasmtime takes that too).
    pub const ALL: u64 = (1 << 30) - 1;
    /// What a directory passes on to what is opened beneath it: all there
    /// is, each fd then keeping what makes sense for what it is.
    pub const INHERITING: u64 = ALL;
    pub const STDIN: u64 = FD_READ | FD_FDSTAT_SET_FLAGS | FD_FILESTAT_GET | POLL_FD_READWRITE;
    pub const STDOUT: u64 = FD_WRITE | FD_FDSTAT_SET_FLAGS | FD_FILESTAT_GET | POLL_FD_READWRITE;
}

/// fdflags (typenames.witx).
pub mod fdflags {
    pub const APPEND: u16 = 1 << 0;
    pub const DSYNC: u16 = 1 << 1;
    pub const NONBLOCK: u16 = 1 << 2;
    pub const RSYNC: u16 = 1 << 3;
    pub const SYNC: u16 = 1 << 4;
    pub const ALL: u16 = APPEND | DSYNC | NONBLOCK | RSYNC | SYNC;
}

pub const FILETYPE_CHARACTER_DEVICE: u8 = 2;
pub const FILETYPE_DIRECTORY: u8 = 3;
pub const FILETYPE_REGULAR_FILE: u8 = 4;
pub const FILETYPE_SYMBOLIC_LINK: u8 = 7;

/// The most fds a job may have open at once (Linux's default hard limit
/// of open files).
pub const FDS_MAX: usize = 1 << 16;

/// One entry of a directory listing: (name, inode, filetype).
type Listing = Vec<(String, u64, u8)>;

pub enum Kind {
    Stdin,
    Stdout,
    Stderr,
    File {
        ino: u64,
        pos: u64,
    },
    Dir {
        ino: u64,
        /// The guest path of a preopened directory.
        preopen: Option<String>,
        /// The entries `fd_readdir` hands out, taken when it starts from
        /// cookie 0, so that cookies (indices) resume where they left off.
        listing: Option<Listing>,
    },
}

pub struct Fd {
    pub kind: Kind,
    pub base: u64,
    pub inheriting: u64,
    pub flags: u16,
}

/// The devices a job's WASI functions use, handed over by the platform.
pub struct Devices<P: Platform> {
    pub stdin: P::Input,
    pub stdout: P::Output,
    pub stderr: P::Output,
    pub clock: P::Clock,
    pub entropy: P::Entropy,
}

/// One job's WASI state: its arguments, environment, filesystem and fds.
pub struct Wasi<P: Platform> {
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    fds: Vec<Option<Fd>>,
    pub fs: Fs<P::Disk>,
    pub devices: Devices<P>,
}

/// A preopen the job disk names that the filesystem does not hold as a
/// directory: the host built the two disks inconsistently.
#[derive(Debug, PartialEq, Eq)]
pub struct PreopenError(pub String);

impl core::fmt::Display for PreopenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "preopened directory {:?} is not a directory of the job's filesystem", self.0)
    }
}

pub fn filetype(kind: FileType) -> u8 {
    match kind {
        FileType::File => FILETYPE_REGULAR_FILE,
        FileType::Dir => FILETYPE_DIRECTORY,
        FileType::Symlink => FILETYPE_SYMBOLIC_LINK,
    }
}

impl<P: Platform> Wasi<P> {
    /// Fds 0, 1 and 2 are stdin, stdout and stderr; fd 3 on are the
    /// `preopens`, guest paths of directories in `fs`.
    pub fn new(
        args: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        mut fs: Fs<P::Disk>,
        preopens: &[String],
        devices: Devices<P>,
    ) -> Result<Wasi<P>, PreopenError> {
        let stdio = |kind, base| Some(Fd { kind, base, inheriting: 0, flags: 0 });
        let mut fds = alloc::vec![
            stdio(Kind::Stdin, rights::STDIN),
            stdio(Kind::Stdout, rights::STDOUT),
            stdio(Kind::Stderr, rights::STDOUT)
        ];
        for path in preopens {
            let ino = fs.find_dir(path).ok_or_else(|| PreopenError(path.clone()))?;
            fs.open(ino);
            let kind = Kind::Dir { ino, preopen: Some(path.clone()), listing: None };
            fds.push(Some(Fd { kind, base: rights::DIR, inheriting: rights::INHERITING, flags: 0 }));
        }
        Ok(Wasi { args, env, fds, fs, devices })
    }

    fn fd(&mut self, fd: i32) -> Result<&mut Fd, Errno> {
        let index = usize::try_from(fd).map_err(|_| errno::BADF)?;
        self.fds.get_mut(index).and_then(Option::as_mut).ok_or(errno::BADF)
    }

    /// EMFILE when every fd number a job may have is taken: open files are
    /// a resource the job has a fixed amount of (each holds memory).
    fn check_fd_room(&self) -> Result<(), Errno> {
        if self.fds.len() >= FDS_MAX && self.fds.iter().all(Option::is_some) {
            return Err(errno::MFILE);
        }
        Ok(())
    }

    /// The lowest free fd number gets `fd`, as POSIX gives out fds.
    fn add_fd(&mut self, fd: Fd) -> u32 {
        match self.fds.iter().position(Option::is_none) {
            Some(free) => {
                self.fds[free] = Some(fd);
                free as u32
            }
            None => {
                self.fds.push(Some(fd));
                (self.fds.len() - 1) as u32
            }
        }
    }

    pub fn flush_outputs(&mut self) {
        self.devices.stdout.flush();
        self.devices.stderr.flush();
    }

    fn now(&mut self) -> u64 {
        self.devices.clock.wall_ns()
    }
}

// Linear memory access, bounds-checked.
fn range(mem: &[u8], ptr: u32, len: u32) -> Result<core::ops::Range<usize>, Errno> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(errno::FAULT)?;
    (end <= mem.len()).then_some(start..end).ok_or(errno::FAULT)
}

fn bytes(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Errno> {
    Ok(&mem[range(mem, ptr, len)?])
}

fn bytes_mut(mem: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
    let r = range(mem, ptr, len)?;
    Ok(&mut mem[r])
}

fn put(mem: &mut [u8], ptr: u32, data: &[u8]) -> Result<(), Errno> {
    bytes_mut(mem, ptr, data.len() as u32)?.copy_from_slice(data);
    Ok(())
}

/// The (pointer, length) pairs of an iovec array, every one checked to lie
/// in memory before anything is done with any, and their total length
/// countable in the 32 bits the result has (EINVAL otherwise, writev's
/// answer when the lengths overflow its count). Taken out of memory first:
/// a read may overwrite the array itself.
fn iovecs(mem: &[u8], ptr: u32, count: u32) -> Result<IoVecs, Errno> {
    let table = bytes(mem, ptr, count.checked_mul(8).ok_or(errno::FAULT)?)?;
    let pairs = table
        .chunks_exact(8)
        .map(|e| (u32::from_le_bytes(e[..4].try_into().unwrap()), u32::from_le_bytes(e[4..].try_into().unwrap())));
    let iovs = if count as usize <= FEW_IOVECS {
        let mut few = [(0, 0); FEW_IOVECS];
        for (slot, pair) in few.iter_mut().zip(pairs) {
            *slot = pair;
        }
        IoVecs::Few(few, count as usize)
    } else {
        IoVecs::Many(pairs.collect())
    };
    if iovs.iter().map(|(_, len)| u64::from(*len)).sum::<u64>() > u64::from(u32::MAX) {
        return Err(errno::INVAL);
    }
    for (ptr, len) in iovs.iter() {
        range(mem, *ptr, *len)?;
    }
    Ok(iovs)
}

/// Most calls pass an iovec or two: those are kept without allocating
/// (every read and write takes this path).
const FEW_IOVECS: usize = 8;

enum IoVecs {
    Few([(u32, u32); FEW_IOVECS], usize),
    Many(Vec<(u32, u32)>),
}

impl core::ops::Deref for IoVecs {
    type Target = [(u32, u32)];

    fn deref(&self) -> &[(u32, u32)] {
        match self {
            IoVecs::Few(few, len) => &few[..*len],
            IoVecs::Many(many) => many,
        }
    }
}

/// Writes NUL-terminated strings and the pointers to them (args_get, environ_get).
fn put_strings(mem: &mut [u8], strings: &[Vec<u8>], pointers: u32, buffer: u32) -> Result<(), Errno> {
    let mut at = u64::from(buffer);
    for (i, s) in strings.iter().enumerate() {
        let string = u32::try_from(at).map_err(|_| errno::FAULT)?;
        put(mem, offset(pointers, 4 * i)?, &string.to_le_bytes())?;
        put(mem, string, s)?;
        put(mem, offset(string, s.len())?, &[0])?;
        at += s.len() as u64 + 1;
    }
    Ok(())
}

/// `ptr + by` as a pointer into linear memory: an address past 4 GiB is
/// EFAULT, where u32 arithmetic would wrap around to its start.
fn offset(ptr: u32, by: usize) -> Result<u32, Errno> {
    u32::try_from(u64::from(ptr) + by as u64).map_err(|_| errno::FAULT)
}

fn put_sizes(mem: &mut [u8], strings: &[Vec<u8>], count_ptr: u32, size_ptr: u32) -> Result<(), Errno> {
    let size: usize = strings.iter().map(|s| s.len() + 1).sum();
    put(mem, count_ptr, &(strings.len() as u32).to_le_bytes())?;
    put(mem, size_ptr, &(size as u32).to_le_bytes())
}

pub fn args_sizes_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, argc: u32, size: u32) -> Result<(), Errno> {
    put_sizes(mem, &wasi.args, argc, size)
}

pub fn args_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, argv: u32, buf: u32) -> Result<(), Errno> {
    put_strings(mem, &wasi.args, argv, buf)
}

pub fn environ_sizes_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, count: u32, size: u32) -> Result<(), Errno> {
    put_sizes(mem, &wasi.env, count, size)
}

pub fn environ_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, environ: u32, buf: u32) -> Result<(), Errno> {
    put_strings(mem, &wasi.env, environ, buf)
}

fn clock_now<P: Platform>(wasi: &mut Wasi<P>, id: i32) -> Result<u64, Errno> {
    match id {
        0 => Ok(wasi.devices.clock.wall_ns()),
        1..=3 => Ok(wasi.devices.clock.monotonic_ns()),
        _ => Err(errno::INVAL),
    }
}

pub fn clock_res_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, id: i32, ptr: u32) -> Result<(), Errno> {
    clock_now(wasi, id).and_then(|_| put(mem, ptr, &1u64.to_le_bytes()))
}

pub fn clock_time_get<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    id: i32,
    _precision: i64,
    ptr: u32,
) -> Result<(), Errno> {
    clock_now(wasi, id).and_then(|t| put(mem, ptr, &t.to_le_bytes()))
}

pub fn random_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, ptr: u32, len: u32) -> Result<(), Errno> {
    bytes_mut(mem, ptr, len).map(|buf| wasi.devices.entropy.fill(buf))
}

const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;

/// Waits for the earliest clock subscription or for stdin's bytes when
/// nothing else is ready. Other fd subscriptions are ready at once: files
/// always are (POSIX), output never blocks; stdin is ready once bytes have
/// come or its stream has ended.
/// An fd that is not open, or not a file or stream, is an event with EBADF
/// (`event.error`), as the spec puts per-subscription errors.
pub fn poll_oneoff<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    subs: u32,
    events: u32,
    count: u32,
    nevents_ptr: u32,
) -> Result<(), Errno> {
    if count == 0 {
        return Err(errno::INVAL);
    }
    let table = bytes(mem, subs, count.checked_mul(48).ok_or(errno::FAULT)?)?.to_vec();
    range(mem, events, count.checked_mul(32).ok_or(errno::FAULT)?)?;
    let now = wasi.devices.clock.monotonic_ns();
    let mut subscriptions = Vec::new();
    for s in table.chunks_exact(48) {
        let userdata = u64::from_le_bytes(s[..8].try_into().unwrap());
        let tag = s[8];
        let deadline = match tag {
            EVENTTYPE_CLOCK => {
                let clock = u32::from_le_bytes(s[16..20].try_into().unwrap());
                let timeout = u64::from_le_bytes(s[24..32].try_into().unwrap());
                let absolute = u16::from_le_bytes(s[40..42].try_into().unwrap()) & 1 != 0;
                if clock > 3 {
                    return Err(errno::INVAL);
                }
                Some(match (absolute, clock) {
                    (false, _) => now.saturating_add(timeout),
                    (true, 0) => now.saturating_add(timeout.saturating_sub(wasi.devices.clock.wall_ns())),
                    (true, _) => timeout,
                })
            }
            EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE => None,
            _ => return Err(errno::INVAL),
        };
        let fd = u32::from_le_bytes(s[16..20].try_into().unwrap());
        subscriptions.push((userdata, tag, deadline, fd));
    }
    let is_stdin = |wasi: &mut Wasi<P>, fd: u32| matches!(wasi.fd(fd as i32).map(|f| &f.kind), Ok(Kind::Stdin));
    let mut stdin_read = false;
    let mut ready_io = false;
    for &(_, tag, _, fd) in &subscriptions {
        match tag {
            EVENTTYPE_CLOCK => {}
            EVENTTYPE_FD_READ if is_stdin(wasi, fd) => stdin_read = true,
            _ => ready_io = true,
        }
    }
    let earliest = subscriptions.iter().filter_map(|s| s.2).min();
    // Wait for the earliest deadline, or for stdin's first bytes: the
    // device cannot wake this wait, so it looks again in growing steps
    // (50 µs to 10 ms: a prompt's answer shows at once, an idle wait
    // costs little).
    let mut step = 50_000u64;
    if !ready_io {
        loop {
            if stdin_read && !wasi.devices.stdin.would_wait() {
                break;
            }
            let now = wasi.devices.clock.monotonic_ns();
            wasi.flush_outputs();
            if !stdin_read {
                wasi.devices.clock.sleep_until(earliest.unwrap_or(now));
                break;
            }
            if earliest.is_some_and(|deadline| deadline <= now) {
                break;
            }
            let until = now.saturating_add(step);
            wasi.devices.clock.sleep_until(earliest.map_or(until, |deadline| deadline.min(until)));
            step = (step * 2).min(10_000_000);
        }
    }
    let now = wasi.devices.clock.monotonic_ns();
    let mut written = 0u32;
    for (userdata, tag, deadline, fd) in subscriptions {
        let (mut error, mut nbytes) = (0u16, 0u64);
        match tag {
            EVENTTYPE_CLOCK if deadline.is_some_and(|d| d > now) => continue,
            EVENTTYPE_CLOCK => {}
            EVENTTYPE_FD_READ if is_stdin(wasi, fd) && wasi.devices.stdin.would_wait() => continue,
            _ => match wasi.fd(fd as i32).map(|f| (f.base, &f.kind)) {
                Ok((_, Kind::Dir { .. })) => error = errno::BADF,
                Ok((base, _)) if base & rights::POLL_FD_READWRITE == 0 => error = errno::NOTCAPABLE,
                Ok((_, Kind::File { ino, pos })) if tag == EVENTTYPE_FD_READ => {
                    let (ino, pos) = (*ino, *pos);
                    nbytes = wasi.fs.node(ino).size.saturating_sub(pos);
                }
                Ok(_) => {}
                Err(e) => error = e,
            },
        }
        let mut event = [0u8; 32];
        event[..8].copy_from_slice(&userdata.to_le_bytes());
        event[8..10].copy_from_slice(&error.to_le_bytes());
        event[10] = tag;
        event[16..24].copy_from_slice(&nbytes.to_le_bytes());
        put(mem, offset(events, 32 * written as usize)?, &event)?;
        written += 1;
    }
    put(mem, nevents_ptr, &written.to_le_bytes())
}

/// `sock_accept`, `sock_recv`, `sock_send` and `sock_shutdown`: a job has
/// no sockets, so an open fd is ENOTSOCK (POSIX's answer for a socket call
/// on a file) and any other EBADF.
pub fn sock_call<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<(), Errno> {
    wasi.fd(fd)?;
    Err(errno::NOTSOCK)
}

#[cfg(test)]
mod tests;
