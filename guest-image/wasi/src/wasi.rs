//! The WASI preview 1 functions a job may import, over the module's linear
//! memory and the platform's devices: args and environment from the job
//! disk, stdout and stderr on its outputs, its clocks and entropy, `/in` and
//! `/out` (see fs.rs), and `poll_oneoff` clock waits slept through. Every
//! pointer and length comes from the untrusted module and is bounds-checked
//! against its linear memory (EFAULT). Each function's `Err(errno)` is its
//! WASI result; the engine's glue registers them under their WASI names.

use alloc::string::String;
use alloc::vec::Vec;

use crate::fs::{components, errno, Node};
use crate::tar::InputFile;
use crate::{BlockDevice, Clock, Entropy, Input, Output, Platform, SECTOR};

const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR_FILE: u8 = 4;
const ALL_RIGHTS: u64 = (1 << 30) - 1;
const OFLAGS_CREAT: i32 = 1;
const OFLAGS_DIRECTORY: i32 = 2;
const OFLAGS_EXCL: i32 = 4;
const OFLAGS_TRUNC: i32 = 8;
const FDFLAGS_APPEND: i32 = 1;
/// The most one read from an input file asks of the disk.
const INPUT_READ_MAX: usize = 1 << 20;

enum Fd {
    Stdin,
    Stdout,
    Stderr,
    InDir,
    /// A directory under /out, by path (empty: /out itself).
    OutDir(Vec<String>),
    InFile {
        index: usize,
        pos: u64,
    },
    OutFile {
        path: Vec<String>,
        pos: u64,
        append: bool,
    },
}

/// The devices a job's WASI functions use, handed over by the platform.
pub struct Devices<P: Platform> {
    pub job_disk: P::Disk,
    pub stdin: P::Input,
    pub stdout: P::Output,
    pub stderr: P::Output,
    pub clock: P::Clock,
    pub entropy: P::Entropy,
}

/// One job's WASI state: its arguments, environment, files and fds.
pub struct Wasi<P: Platform> {
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    fds: Vec<Option<Fd>>,
    inputs: Vec<InputFile>,
    pub devices: Devices<P>,
    pub out: Node,
}

pub type Errno = u16;

impl<P: Platform> Wasi<P> {
    pub fn new(args: Vec<Vec<u8>>, env: Vec<Vec<u8>>, inputs: Vec<InputFile>, devices: Devices<P>) -> Wasi<P> {
        let fds = alloc::vec![
            Some(Fd::Stdin),
            Some(Fd::Stdout),
            Some(Fd::Stderr),
            Some(Fd::InDir),
            Some(Fd::OutDir(Vec::new()))
        ];
        Wasi { args, env, fds, inputs, devices, out: Node::dir() }
    }

    fn fd(&mut self, fd: i32) -> Result<&mut Fd, Errno> {
        let index = usize::try_from(fd).map_err(|_| errno::BADF)?;
        self.fds.get_mut(index).and_then(Option::as_mut).ok_or(errno::BADF)
    }

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

    fn read_input(&mut self, index: usize, pos: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let file = &self.inputs[index];
        let len = (buf.len() as u64).min(file.size.saturating_sub(pos)).min(INPUT_READ_MAX as u64) as usize;
        if len == 0 {
            return Ok(0);
        }
        let start = file.offset + pos;
        let first_sector = start / SECTOR as u64;
        let skip = (start % SECTOR as u64) as usize;
        let mut scratch = alloc::vec![0u8; (skip + len).next_multiple_of(SECTOR)];
        self.devices.job_disk.read(first_sector, &mut scratch).map_err(|_| errno::IO)?;
        buf[..len].copy_from_slice(&scratch[skip..skip + len]);
        Ok(len)
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

/// The (pointer, length) pairs of an iovec array.
fn iovecs(mem: &[u8], ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
    let table = bytes(mem, ptr, count.checked_mul(8).ok_or(errno::FAULT)?)?;
    Ok(table
        .chunks_exact(8)
        .map(|e| (u32::from_le_bytes(e[..4].try_into().unwrap()), u32::from_le_bytes(e[4..].try_into().unwrap())))
        .collect())
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

fn filestat(filetype: u8, size: u64, ino: u64) -> [u8; 64] {
    let mut stat = [0u8; 64];
    stat[8..16].copy_from_slice(&ino.to_le_bytes());
    stat[16] = filetype;
    stat[24..32].copy_from_slice(&1u64.to_le_bytes());
    stat[32..40].copy_from_slice(&size.to_le_bytes());
    stat
}

pub fn fd_write<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    iovs: u32,
    count: u32,
    written_ptr: u32,
) -> Result<(), Errno> {
    let iovs = iovecs(mem, iovs, count)?;
    // What is written is counted in 32 bits: more in one call is EINVAL
    // (writev's answer when the lengths overflow its count).
    if iovs.iter().map(|(_, len)| u64::from(*len)).sum::<u64>() > u64::from(u32::MAX) {
        return Err(errno::INVAL);
    }
    let mut written = 0u32;
    match wasi.fd(fd)? {
        Fd::Stdout | Fd::Stderr => {
            let to_stdout = matches!(wasi.fd(fd)?, Fd::Stdout);
            for (ptr, len) in iovs {
                let data = bytes(mem, ptr, len)?;
                if to_stdout {
                    wasi.devices.stdout.write(data)
                } else {
                    wasi.devices.stderr.write(data)
                }
                written += len;
            }
        }
        Fd::OutFile { path, append, .. } => {
            let (path, append) = (path.clone(), *append);
            let Some(Node::File(content)) = wasi.out.lookup_mut(&path) else { return Err(errno::BADF) };
            let mut at = if append { content.len() } else { *pos_of(&mut wasi.fds, fd)? as usize };
            for (ptr, len) in iovs {
                let data = bytes(mem, ptr, len)?;
                if content.len() < at {
                    content.resize(at, 0);
                }
                let overlap = (content.len() - at).min(data.len());
                content[at..at + overlap].copy_from_slice(&data[..overlap]);
                content.extend_from_slice(&data[overlap..]);
                at += data.len();
                written += len;
            }
            *pos_of(&mut wasi.fds, fd)? = at as u64;
        }
        Fd::Stdin | Fd::InFile { .. } => return Err(errno::BADF),
        Fd::InDir | Fd::OutDir(_) => return Err(errno::ISDIR),
    }
    put(mem, written_ptr, &written.to_le_bytes())
}

fn pos_of(fds: &mut [Option<Fd>], fd: i32) -> Result<&mut u64, Errno> {
    match fds.get_mut(fd as usize).and_then(Option::as_mut) {
        Some(Fd::InFile { pos, .. }) | Some(Fd::OutFile { pos, .. }) => Ok(pos),
        _ => Err(errno::BADF),
    }
}

pub fn fd_read<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    iovs: u32,
    count: u32,
    read_ptr: u32,
) -> Result<(), Errno> {
    let iovs = iovecs(mem, iovs, count)?;
    let mut total = 0u32;
    match wasi.fd(fd)? {
        Fd::Stdin => {
            for (ptr, len) in iovs {
                let n = wasi.devices.stdin.read(bytes_mut(mem, ptr, len)?);
                total += n as u32;
                if n < len as usize {
                    break;
                }
            }
        }
        Fd::InFile { index, pos } => {
            let (index, mut at) = (*index, *pos);
            for (ptr, len) in iovs {
                let buf = bytes_mut(mem, ptr, len)?;
                let n = wasi.read_input(index, at, buf)?;
                at += n as u64;
                total += n as u32;
                if n < len as usize {
                    break;
                }
            }
            *pos_of(&mut wasi.fds, fd)? = at;
        }
        Fd::OutFile { path, pos, .. } => {
            let (path, mut at) = (path.clone(), *pos as usize);
            let Some(Node::File(content)) = wasi.out.lookup(&path) else { return Err(errno::BADF) };
            for (ptr, len) in iovs {
                let available = content.get(at..).unwrap_or_default();
                let n = available.len().min(len as usize);
                put(mem, ptr, &available[..n])?;
                at += n;
                total += n as u32;
            }
            *pos_of(&mut wasi.fds, fd)? = at as u64;
        }
        Fd::Stdout | Fd::Stderr => return Err(errno::BADF),
        Fd::InDir | Fd::OutDir(_) => return Err(errno::ISDIR),
    }
    put(mem, read_ptr, &total.to_le_bytes())
}

fn file_size<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<u64, Errno> {
    match wasi.fd(fd)? {
        Fd::InFile { index, .. } => {
            let index = *index;
            Ok(wasi.inputs[index].size)
        }
        Fd::OutFile { path, .. } => {
            let path = path.clone();
            match wasi.out.lookup(&path) {
                Some(Node::File(content)) => Ok(content.len() as u64),
                _ => Err(errno::BADF),
            }
        }
        _ => Err(errno::SPIPE),
    }
}

pub fn fd_seek<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    offset: i64,
    whence: i32,
    result_ptr: u32,
) -> Result<(), Errno> {
    let size = file_size(wasi, fd)?;
    let pos = pos_of(&mut wasi.fds, fd)?;
    let base = match whence {
        0 => 0,
        1 => *pos as i64,
        2 => size as i64,
        _ => return Err(errno::INVAL),
    };
    let new = base.checked_add(offset).filter(|n| *n >= 0).ok_or(errno::INVAL)?;
    // A refused call moves nothing.
    put(mem, result_ptr, &(new as u64).to_le_bytes())?;
    *pos = new as u64;
    Ok(())
}

fn filestat_of<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<[u8; 64], Errno> {
    Ok(match wasi.fd(fd)? {
        Fd::Stdin | Fd::Stdout | Fd::Stderr => filestat(FILETYPE_CHARACTER_DEVICE, 0, fd as u64),
        Fd::InDir | Fd::OutDir(_) => filestat(FILETYPE_DIRECTORY, 0, fd as u64),
        Fd::InFile { index, .. } => {
            let index = *index;
            filestat(FILETYPE_REGULAR_FILE, wasi.inputs[index].size, 100 + index as u64)
        }
        Fd::OutFile { .. } => filestat(FILETYPE_REGULAR_FILE, file_size(wasi, fd)?, 1_000 + fd as u64),
    })
}

pub fn fd_fdstat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    let (filetype, flags) = match wasi.fd(fd)? {
        Fd::Stdin | Fd::Stdout | Fd::Stderr => (FILETYPE_CHARACTER_DEVICE, 0u16),
        Fd::InDir | Fd::OutDir(_) => (FILETYPE_DIRECTORY, 0),
        Fd::InFile { .. } => (FILETYPE_REGULAR_FILE, 0),
        Fd::OutFile { append, .. } => (FILETYPE_REGULAR_FILE, u16::from(*append)),
    };
    let mut stat = [0u8; 24];
    stat[0] = filetype;
    stat[2..4].copy_from_slice(&flags.to_le_bytes());
    stat[8..16].copy_from_slice(&ALL_RIGHTS.to_le_bytes());
    stat[16..24].copy_from_slice(&ALL_RIGHTS.to_le_bytes());
    put(mem, ptr, &stat)
}

fn preopen_name<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<&'static [u8], Errno> {
    match (fd, wasi.fd(fd)?) {
        (3, Fd::InDir) => Ok(b"/in"),
        // fd 4 is /out itself: it cannot be closed, so never reused.
        (4, Fd::OutDir(_)) => Ok(b"/out"),
        _ => Err(errno::BADF),
    }
}

pub fn path_open<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
    oflags: i32,
    fdflags: i32,
    fd_ptr: u32,
) -> Result<(), Errno> {
    // Where the new fd goes first: an open whose fd the module cannot be
    // told would leave a file created and an fd taken that nothing closes.
    range(mem, fd_ptr, 4)?;
    let parts = components(bytes(mem, path.0, path.1)?)?;
    let new_fd = match wasi.fd(dirfd)? {
        Fd::InDir => {
            if oflags & (OFLAGS_CREAT | OFLAGS_TRUNC | OFLAGS_EXCL) != 0 || fdflags & FDFLAGS_APPEND != 0 {
                return Err(errno::ROFS);
            }
            match &parts[..] {
                [] => Fd::InDir,
                [name] => {
                    let index = wasi.inputs.iter().position(|f| &f.name == name).ok_or(errno::NOENT)?;
                    if oflags & OFLAGS_DIRECTORY != 0 {
                        return Err(errno::NOTDIR);
                    }
                    Fd::InFile { index, pos: 0 }
                }
                _ => return Err(errno::NOENT),
            }
        }
        Fd::OutDir(base) => {
            let mut full = base.clone();
            full.extend(parts);
            open_out(wasi, full, oflags, fdflags)?
        }
        _ => return Err(errno::NOTDIR),
    };
    let fd = wasi.add_fd(new_fd);
    put(mem, fd_ptr, &fd.to_le_bytes())
}

fn open_out<P: Platform>(wasi: &mut Wasi<P>, path: Vec<String>, oflags: i32, fdflags: i32) -> Result<Fd, Errno> {
    let append = fdflags & FDFLAGS_APPEND != 0;
    match wasi.out.lookup_mut(&path) {
        Some(_) if oflags & OFLAGS_CREAT != 0 && oflags & OFLAGS_EXCL != 0 => Err(errno::EXIST),
        Some(Node::Dir(_)) if oflags & (OFLAGS_TRUNC | OFLAGS_CREAT) != 0 && oflags & OFLAGS_DIRECTORY == 0 => {
            Err(errno::ISDIR)
        }
        Some(Node::Dir(_)) => Ok(Fd::OutDir(path)),
        Some(Node::File(_)) if oflags & OFLAGS_DIRECTORY != 0 => Err(errno::NOTDIR),
        Some(Node::File(content)) => {
            if oflags & OFLAGS_TRUNC != 0 {
                content.clear();
            }
            Ok(Fd::OutFile { path, pos: 0, append })
        }
        None if oflags & OFLAGS_CREAT != 0 && oflags & OFLAGS_DIRECTORY == 0 => {
            let parent = wasi.out.parent_mut(&path)?;
            parent.insert(path.last().expect("non-empty").clone(), Node::File(Vec::new()));
            Ok(Fd::OutFile { path, pos: 0, append })
        }
        None => Err(errno::NOENT),
    }
}

/// Resolves `path` under directory `dirfd` for stat, mkdir and unlink.
fn out_path<P: Platform>(
    mem: &[u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
) -> Result<Option<Vec<String>>, Errno> {
    let parts = components(bytes(mem, path.0, path.1)?)?;
    match wasi.fd(dirfd)? {
        Fd::OutDir(base) => {
            let mut full = base.clone();
            full.extend(parts);
            Ok(Some(full))
        }
        Fd::InDir => Ok(None),
        _ => Err(errno::NOTDIR),
    }
}

pub fn path_filestat_get<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
    buf: u32,
) -> Result<(), Errno> {
    let stat = match out_path(mem, wasi, dirfd, path)? {
        Some(full) => match wasi.out.lookup(&full) {
            Some(Node::Dir(_)) => filestat(FILETYPE_DIRECTORY, 0, 2),
            Some(Node::File(content)) => filestat(FILETYPE_REGULAR_FILE, content.len() as u64, 3),
            None => return Err(errno::NOENT),
        },
        None => {
            let parts = components(bytes(mem, path.0, path.1)?)?;
            match &parts[..] {
                [] => filestat(FILETYPE_DIRECTORY, 0, 1),
                [name] => {
                    let index = wasi.inputs.iter().position(|f| &f.name == name).ok_or(errno::NOENT)?;
                    filestat(FILETYPE_REGULAR_FILE, wasi.inputs[index].size, 100 + index as u64)
                }
                _ => return Err(errno::NOENT),
            }
        }
    };
    put(mem, buf, &stat)
}

pub fn path_create_directory<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
) -> Result<(), Errno> {
    let full = out_path(mem, wasi, dirfd, path)?.ok_or(errno::ROFS)?;
    let parent = wasi.out.parent_mut(&full)?;
    let name = full.last().expect("non-empty").clone();
    if parent.contains_key(&name) {
        return Err(errno::EXIST);
    }
    parent.insert(name, Node::dir());
    Ok(())
}

fn path_remove<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
    directory: bool,
) -> Result<(), Errno> {
    let full = out_path(mem, wasi, dirfd, path)?.ok_or(errno::ROFS)?;
    let parent = wasi.out.parent_mut(&full)?;
    let name = full.last().expect("non-empty");
    match (parent.get(name), directory) {
        (None, _) => return Err(errno::NOENT),
        (Some(Node::Dir(entries)), true) if !entries.is_empty() => return Err(errno::NOTEMPTY),
        (Some(Node::Dir(_)), false) => return Err(errno::ISDIR),
        (Some(Node::File(_)), true) => return Err(errno::NOTDIR),
        _ => {}
    }
    parent.remove(name);
    Ok(())
}

pub fn fd_readdir<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    buf: u32,
    buf_len: u32,
    cookie: i64,
    used_ptr: u32,
) -> Result<(), Errno> {
    let cookie = cookie as u64;
    let names: Vec<(Vec<u8>, u8)> = match wasi.fd(fd)? {
        Fd::InDir => wasi.inputs.iter().map(|f| (f.name.as_bytes().to_vec(), FILETYPE_REGULAR_FILE)).collect(),
        Fd::OutDir(path) => {
            let path = path.clone();
            match wasi.out.lookup(&path) {
                Some(Node::Dir(entries)) => entries
                    .iter()
                    .map(|(name, node)| {
                        let kind =
                            if matches!(node, Node::Dir(_)) { FILETYPE_DIRECTORY } else { FILETYPE_REGULAR_FILE };
                        (name.as_bytes().to_vec(), kind)
                    })
                    .collect(),
                _ => return Err(errno::BADF),
            }
        }
        _ => return Err(errno::NOTDIR),
    };
    let mut out = Vec::new();
    let all = [(b".".to_vec(), FILETYPE_DIRECTORY), (b"..".to_vec(), FILETYPE_DIRECTORY)].into_iter().chain(names);
    for (i, (name, kind)) in all.enumerate().skip(cookie.min(u64::from(u32::MAX)) as usize) {
        let mut dirent = [0u8; 24];
        dirent[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        dirent[8..16].copy_from_slice(&(i as u64 + 10).to_le_bytes());
        dirent[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
        dirent[20] = kind;
        out.extend_from_slice(&dirent);
        out.extend_from_slice(&name);
        if out.len() >= buf_len as usize {
            break;
        }
    }
    // A full buffer tells the caller to ask again from the last cookie it saw.
    out.truncate(buf_len as usize);
    put(mem, buf, &out)?;
    put(mem, used_ptr, &(out.len() as u32).to_le_bytes())
}

/// Waits for the earliest clock subscription; other subscriptions are ready
/// at once (stdin is at its end, output never blocks).
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
    let now = wasi.devices.clock.monotonic_ns();
    let deadlines: Vec<(u64, u8, Option<u64>)> = table
        .chunks_exact(48)
        .map(|s| {
            let userdata = u64::from_le_bytes(s[..8].try_into().unwrap());
            let tag = s[8];
            let deadline = (tag == 0).then(|| {
                let clock = u32::from_le_bytes(s[16..20].try_into().unwrap());
                let timeout = u64::from_le_bytes(s[24..32].try_into().unwrap());
                let absolute = u16::from_le_bytes(s[40..42].try_into().unwrap()) & 1 != 0;
                match (absolute, clock) {
                    (false, _) => now.saturating_add(timeout),
                    (true, 0) => now.saturating_add(timeout.saturating_sub(wasi.devices.clock.wall_ns())),
                    (true, _) => timeout,
                }
            });
            (userdata, tag, deadline)
        })
        .collect();
    let io_ready = deadlines.iter().any(|(_, tag, _)| *tag != 0);
    if !io_ready {
        let earliest = deadlines.iter().filter_map(|d| d.2).min().unwrap_or(now);
        wasi.flush_outputs();
        wasi.devices.clock.sleep_until(earliest);
    }
    let now = wasi.devices.clock.monotonic_ns();
    let mut written = 0u32;
    for (userdata, tag, deadline) in deadlines {
        if deadline.is_some_and(|d| d > now) {
            continue;
        }
        let mut event = [0u8; 32];
        event[..8].copy_from_slice(&userdata.to_le_bytes());
        event[10] = tag;
        put(mem, offset(events, 32 * written as usize)?, &event)?;
        written += 1;
    }
    put(mem, nevents_ptr, &written.to_le_bytes())
}

/// Closes a file; the standard streams and the preopened directories stay.
pub fn fd_close<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<(), Errno> {
    wasi.fd(fd)?;
    if fd <= 4 {
        return Err(errno::NOTCAPABLE);
    }
    wasi.fds[fd as usize] = None;
    Ok(())
}

fn clock_now<P: Platform>(wasi: &mut Wasi<P>, id: i32) -> Result<u64, Errno> {
    match id {
        0 => Ok(wasi.devices.clock.wall_ns()),
        1..=3 => Ok(wasi.devices.clock.monotonic_ns()),
        _ => Err(errno::INVAL),
    }
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

pub fn fd_tell<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, result: u32) -> Result<(), Errno> {
    fd_seek(mem, wasi, fd, 0, 1, result)
}

pub fn fd_filestat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    filestat_of(wasi, fd).and_then(|s| put(mem, ptr, &s))
}

pub fn fd_prestat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    preopen_name(wasi, fd).and_then(|name| {
        let mut prestat = [0u8; 8];
        prestat[4..].copy_from_slice(&(name.len() as u32).to_le_bytes());
        put(mem, ptr, &prestat)
    })
}

pub fn fd_prestat_dir_name<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    ptr: u32,
    len: u32,
) -> Result<(), Errno> {
    preopen_name(wasi, fd).and_then(|name| put(mem, ptr, &name[..name.len().min(len as usize)]))
}

/// `fd_sync` and `fd_datasync`: nothing to sync, so EBADF or success.
pub fn fd_sync<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<(), Errno> {
    wasi.fd(fd).map(|_| ())
}

pub fn path_unlink_file<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
) -> Result<(), Errno> {
    path_remove(mem, wasi, dirfd, path, false)
}

pub fn path_remove_directory<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    dirfd: i32,
    path: (u32, u32),
) -> Result<(), Errno> {
    path_remove(mem, wasi, dirfd, path, true)
}

#[cfg(test)]
mod tests;
