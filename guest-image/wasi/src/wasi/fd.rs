//! The fd functions: reading, writing, seeking, stat, flags and rights,
//! directory listings, preopens and the fd table itself.

use alloc::string::String;
use alloc::vec::Vec;

use super::{
    bytes, bytes_mut, filetype, iovecs, put, range, rights, Errno, Fd, Kind, Wasi, FILETYPE_CHARACTER_DEVICE,
    FILETYPE_DIRECTORY,
};
use crate::errno;
use crate::vfs::{SetTime, Stat};
use crate::{Input, Output, Platform};

const WHENCE_SET: i32 = 0;
const WHENCE_CUR: i32 = 1;
const WHENCE_END: i32 = 2;

/// fstflags (typenames.witx).
pub const FSTFLAGS_ATIM: i32 = 1 << 0;
pub const FSTFLAGS_ATIM_NOW: i32 = 1 << 1;
pub const FSTFLAGS_MTIM: i32 = 1 << 2;
pub const FSTFLAGS_MTIM_NOW: i32 = 1 << 3;

/// An open file's inode and position, if the fd has `right` (EBADF for a
/// missing FD_READ or FD_WRITE, ENOTCAPABLE for others); `dir` and `stdio`
/// are the errors for an fd that is a directory or a stream.
fn file<P: Platform>(wasi: &mut Wasi<P>, fd: i32, right: u64, dir: Errno, stdio: Errno) -> Result<(u64, u64), Errno> {
    let fd = wasi.fd(fd)?;
    let (ino, pos) = match fd.kind {
        Kind::File { ino, pos } => (ino, pos),
        Kind::Dir { .. } => return Err(dir),
        _ => return Err(stdio),
    };
    if fd.base & right != right {
        return Err(if right & (rights::FD_READ | rights::FD_WRITE) != 0 { errno::BADF } else { errno::NOTCAPABLE });
    }
    Ok((ino, pos))
}

fn set_pos<P: Platform>(wasi: &mut Wasi<P>, fd: i32, to: u64) {
    if let Ok(Fd { kind: Kind::File { pos, .. }, .. }) = wasi.fd(fd) {
        *pos = to;
    }
}

/// Reads a file into the iovecs from `at`; the bytes read.
fn read_file<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    ino: u64,
    mut at: u64,
    iovs: &[(u32, u32)],
) -> Result<u64, Errno> {
    let now = wasi.now();
    let mut total = 0;
    for (ptr, len) in iovs {
        let n = wasi.fs.read(ino, at, bytes_mut(mem, *ptr, *len)?, now)?;
        at += n as u64;
        total += n as u64;
        if n < *len as usize {
            break;
        }
    }
    Ok(total)
}

/// Writes the iovecs to a file from `at` (or at its end for `append`,
/// each time); the bytes written and where the writing ended. A disk that
/// fills part way ends it early; ENOSPC only when nothing was written.
fn write_file<P: Platform>(
    mem: &[u8],
    wasi: &mut Wasi<P>,
    ino: u64,
    mut at: u64,
    append: bool,
    iovs: &[(u32, u32)],
) -> Result<(u64, u64), Errno> {
    let now = wasi.now();
    let mut total = 0;
    for (ptr, len) in iovs {
        if append {
            at = wasi.fs.node(ino).size;
        }
        let n = match wasi.fs.write(ino, at, bytes(mem, *ptr, *len)?, now) {
            Ok(n) => n,
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        };
        at += n as u64;
        total += n as u64;
        if n < *len as usize {
            break;
        }
    }
    Ok((total, at))
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
    range(mem, read_ptr, 4)?;
    let entry = wasi.fd(fd)?;
    let total = if let Kind::Stdin = entry.kind {
        if entry.base & rights::FD_READ == 0 {
            return Err(errno::BADF);
        }
        // A job about to wait for its stdin shows what it wrote first (a
        // prompt, the answer to the last line), as a terminal's stdio would.
        if wasi.devices.stdin.would_wait() {
            wasi.flush_outputs();
        }
        let mut total = 0;
        for &(ptr, len) in iovs.iter() {
            let n = wasi.devices.stdin.read(bytes_mut(mem, ptr, len)?);
            total += n as u64;
            if n < len as usize {
                break;
            }
        }
        total
    } else {
        let (ino, pos) = file(wasi, fd, rights::FD_READ, errno::ISDIR, errno::BADF)?;
        let total = read_file(mem, wasi, ino, pos, &iovs)?;
        set_pos(wasi, fd, pos + total);
        total
    };
    put(mem, read_ptr, &(total as u32).to_le_bytes())
}

pub fn fd_pread<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    iovs: u32,
    count: u32,
    offset: i64,
    read_ptr: u32,
) -> Result<(), Errno> {
    let iovs = iovecs(mem, iovs, count)?;
    range(mem, read_ptr, 4)?;
    // A stream has no offsets: ESPIPE, as pread on a pipe.
    let (ino, _) = file(wasi, fd, rights::FD_READ, errno::ISDIR, errno::SPIPE)?;
    let offset = u64::try_from(offset).map_err(|_| errno::INVAL)?;
    let total = read_file(mem, wasi, ino, offset, &iovs)?;
    put(mem, read_ptr, &(total as u32).to_le_bytes())
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
    range(mem, written_ptr, 4)?;
    let entry = wasi.fd(fd)?;
    let total = match entry.kind {
        Kind::Stdout | Kind::Stderr => {
            if entry.base & rights::FD_WRITE == 0 {
                return Err(errno::BADF);
            }
            let to_stdout = matches!(entry.kind, Kind::Stdout);
            let mut total = 0;
            for &(ptr, len) in iovs.iter() {
                let data = bytes(mem, ptr, len)?;
                if to_stdout {
                    wasi.devices.stdout.write(data)
                } else {
                    wasi.devices.stderr.write(data)
                }
                total += u64::from(len);
            }
            total
        }
        _ => {
            let append = entry.flags & super::fdflags::APPEND != 0;
            // A directory is never open for writing: EBADF, as write(2) says.
            let (ino, pos) = file(wasi, fd, rights::FD_WRITE, errno::BADF, errno::BADF)?;
            let (total, end) = write_file(mem, wasi, ino, pos, append, &iovs)?;
            set_pos(wasi, fd, end);
            total
        }
    };
    put(mem, written_ptr, &(total as u32).to_le_bytes())
}

/// Writes at `offset` without moving the fd's position (even in append
/// mode: the spec's fd_pwrite takes the offset as given).
pub fn fd_pwrite<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    iovs: u32,
    count: u32,
    offset: i64,
    written_ptr: u32,
) -> Result<(), Errno> {
    let iovs = iovecs(mem, iovs, count)?;
    range(mem, written_ptr, 4)?;
    let (ino, _) = file(wasi, fd, rights::FD_WRITE, errno::BADF, errno::SPIPE)?;
    let offset = u64::try_from(offset).map_err(|_| errno::INVAL)?;
    let (total, _) = write_file(mem, wasi, ino, offset, false, &iovs)?;
    put(mem, written_ptr, &(total as u32).to_le_bytes())
}

/// A stream is ESPIPE (lseek on a pipe); a directory is EBADF (wasmtime's
/// answer: it has no position to move). Moving to 0 from the current
/// position needs only FD_TELL (it is `fd_tell`), anything else FD_SEEK.
pub fn fd_seek<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    offset: i64,
    whence: i32,
    result_ptr: u32,
) -> Result<(), Errno> {
    range(mem, result_ptr, 8)?;
    let right = if offset == 0 && whence == WHENCE_CUR { rights::FD_TELL } else { rights::FD_SEEK };
    let (ino, pos) = file(wasi, fd, right, errno::BADF, errno::SPIPE)?;
    let base = match whence {
        WHENCE_SET => 0,
        WHENCE_CUR => pos,
        WHENCE_END => wasi.fs.node(ino).size,
        _ => return Err(errno::INVAL),
    };
    let new = i64::try_from(base).ok().and_then(|b| b.checked_add(offset)).filter(|n| *n >= 0).ok_or(errno::INVAL)?;
    set_pos(wasi, fd, new as u64);
    put(mem, result_ptr, &(new as u64).to_le_bytes())
}

pub fn fd_tell<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, result: u32) -> Result<(), Errno> {
    fd_seek(mem, wasi, fd, 0, WHENCE_CUR, result)
}

/// Closes any fd, a preopened directory or a standard stream included:
/// its number is then free for the next open.
pub fn fd_close<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<(), Errno> {
    wasi.fd(fd)?;
    let entry = wasi.fds[fd as usize].take().expect("just checked");
    release(wasi, entry)
}

fn release<P: Platform>(wasi: &mut Wasi<P>, fd: Fd) -> Result<(), Errno> {
    match fd.kind {
        Kind::File { ino, .. } | Kind::Dir { ino, .. } => wasi.fs.close(ino),
        _ => Ok(()),
    }
}

/// Moves fd `from` to number `to`, closing what `to` was. Both must be
/// open (EBADF), as wasmtime requires: WASI has no dup2 onto a free number.
pub fn fd_renumber<P: Platform>(wasi: &mut Wasi<P>, from: i32, to: i32) -> Result<(), Errno> {
    wasi.fd(from)?;
    wasi.fd(to)?;
    if from == to {
        return Ok(());
    }
    let moved = wasi.fds[from as usize].take().expect("just checked");
    let old = wasi.fds[to as usize].replace(moved).expect("just checked");
    release(wasi, old)
}

pub fn fd_fdstat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    let entry = wasi.fd(fd)?;
    let (base, inheriting, flags) = (entry.base, entry.inheriting, entry.flags);
    let filetype = match &entry.kind {
        Kind::Stdin | Kind::Stdout | Kind::Stderr => FILETYPE_CHARACTER_DEVICE,
        Kind::Dir { .. } => FILETYPE_DIRECTORY,
        Kind::File { ino, .. } => {
            let ino = *ino;
            filetype(wasi.fs.node(ino).kind())
        }
    };
    let mut stat = [0u8; 24];
    stat[0] = filetype;
    stat[2..4].copy_from_slice(&flags.to_le_bytes());
    stat[8..16].copy_from_slice(&base.to_le_bytes());
    stat[16..24].copy_from_slice(&inheriting.to_le_bytes());
    put(mem, ptr, &stat)
}

/// Sets the fd's flags, all five kept as given: writes and reads here are
/// already as synchronous as the job can observe (nothing it can see is
/// lost before the job ends), so the sync flags need no more.
pub fn fd_fdstat_set_flags<P: Platform>(wasi: &mut Wasi<P>, fd: i32, flags: i32) -> Result<(), Errno> {
    let entry = wasi.fd(fd)?;
    let flags = u16::try_from(flags).ok().filter(|f| f & !super::fdflags::ALL == 0).ok_or(errno::INVAL)?;
    if entry.base & rights::FD_FDSTAT_SET_FLAGS == 0 {
        return Err(errno::NOTCAPABLE);
    }
    entry.flags = flags;
    Ok(())
}

/// Rights only shrink: asking for one the fd lacks is ENOTCAPABLE.
pub fn fd_fdstat_set_rights<P: Platform>(wasi: &mut Wasi<P>, fd: i32, base: i64, inheriting: i64) -> Result<(), Errno> {
    let entry = wasi.fd(fd)?;
    let (base, inheriting) = (base as u64 & rights::ALL, inheriting as u64 & rights::ALL);
    if base & !entry.base != 0 || inheriting & !entry.inheriting != 0 {
        return Err(errno::NOTCAPABLE);
    }
    entry.base = base;
    entry.inheriting = inheriting;
    Ok(())
}

pub fn filestat(stat: &Stat) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[8..16].copy_from_slice(&stat.ino.to_le_bytes());
    out[16] = filetype(stat.kind);
    out[24..32].copy_from_slice(&stat.nlink.to_le_bytes());
    out[32..40].copy_from_slice(&stat.size.to_le_bytes());
    out[40..48].copy_from_slice(&stat.atim.to_le_bytes());
    out[48..56].copy_from_slice(&stat.mtim.to_le_bytes());
    out[56..64].copy_from_slice(&stat.ctim.to_le_bytes());
    out
}

/// The inode of an fd on the filesystem that has `right` (ENOTCAPABLE).
fn inode<P: Platform>(wasi: &mut Wasi<P>, fd: i32, right: u64) -> Result<Option<u64>, Errno> {
    let entry = wasi.fd(fd)?;
    if entry.base & right == 0 {
        return Err(errno::NOTCAPABLE);
    }
    Ok(match entry.kind {
        Kind::File { ino, .. } | Kind::Dir { ino, .. } => Some(ino),
        _ => None,
    })
}

pub fn fd_filestat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    let stat = match inode(wasi, fd, rights::FD_FILESTAT_GET)? {
        Some(ino) => filestat(&wasi.fs.stat(ino)),
        None => {
            let mut stat = [0u8; 64];
            stat[16] = FILETYPE_CHARACTER_DEVICE;
            stat[24..32].copy_from_slice(&1u64.to_le_bytes());
            stat
        }
    };
    put(mem, ptr, &stat)
}

pub fn fd_filestat_set_size<P: Platform>(wasi: &mut Wasi<P>, fd: i32, size: i64) -> Result<(), Errno> {
    let (ino, _) = file(wasi, fd, rights::FD_FILESTAT_SET_SIZE, errno::BADF, errno::BADF)?;
    let size = u64::try_from(size).map_err(|_| errno::INVAL)?;
    let now = wasi.now();
    wasi.fs.set_size(ino, size, now)
}

/// The times to set from `fstflags`: a time and "now" for the same field
/// at once is EINVAL, as are unknown flags.
pub fn set_times(atim: i64, mtim: i64, flags: i32) -> Result<(SetTime, SetTime), Errno> {
    if flags & !(FSTFLAGS_ATIM | FSTFLAGS_ATIM_NOW | FSTFLAGS_MTIM | FSTFLAGS_MTIM_NOW) != 0 {
        return Err(errno::INVAL);
    }
    let pick = |time: i64, given: i32, now: i32| match (flags & given != 0, flags & now != 0) {
        (true, true) => Err(errno::INVAL),
        (true, false) => Ok(SetTime::At(time as u64)),
        (false, true) => Ok(SetTime::Now),
        (false, false) => Ok(SetTime::Keep),
    };
    Ok((pick(atim, FSTFLAGS_ATIM, FSTFLAGS_ATIM_NOW)?, pick(mtim, FSTFLAGS_MTIM, FSTFLAGS_MTIM_NOW)?))
}

pub fn fd_filestat_set_times<P: Platform>(
    wasi: &mut Wasi<P>,
    fd: i32,
    atim: i64,
    mtim: i64,
    flags: i32,
) -> Result<(), Errno> {
    let (atim, mtim) = set_times(atim, mtim, flags)?;
    let ino = inode(wasi, fd, rights::FD_FILESTAT_SET_TIMES)?.ok_or(errno::NOTCAPABLE)?;
    let now = wasi.now();
    wasi.fs.set_times(ino, atim, mtim, now)
}

/// Makes the file at least `offset + len` long (posix_fallocate: a zero
/// length is EINVAL). The blocks themselves are taken when written.
pub fn fd_allocate<P: Platform>(wasi: &mut Wasi<P>, fd: i32, offset: i64, len: i64) -> Result<(), Errno> {
    let (ino, _) = file(wasi, fd, rights::FD_ALLOCATE, errno::BADF, errno::SPIPE)?;
    let (offset, len) =
        (u64::try_from(offset).map_err(|_| errno::INVAL)?, u64::try_from(len).map_err(|_| errno::INVAL)?);
    if len == 0 {
        return Err(errno::INVAL);
    }
    let end = offset.checked_add(len).filter(|e| *e <= i64::MAX as u64).ok_or(errno::FBIG)?;
    if end > wasi.fs.node(ino).size {
        let now = wasi.now();
        wasi.fs.set_size(ino, end, now)?;
    }
    Ok(())
}

/// Advice is accepted and needs nothing (read-ahead is always on); an
/// unknown advice is EINVAL, a stream ESPIPE (posix_fadvise on a pipe).
pub fn fd_advise<P: Platform>(wasi: &mut Wasi<P>, fd: i32, offset: i64, len: i64, advice: i32) -> Result<(), Errno> {
    file(wasi, fd, rights::FD_ADVISE, errno::BADF, errno::SPIPE)?;
    if !(0..=5).contains(&advice) || offset < 0 || len < 0 {
        return Err(errno::INVAL);
    }
    Ok(())
}

/// `fd_sync` and `fd_datasync`: everything written is already as durable
/// as a job can see (its filesystem is saved when it ends), so this checks
/// the fd and its right.
pub fn fd_sync<P: Platform>(wasi: &mut Wasi<P>, fd: i32, right: u64) -> Result<(), Errno> {
    let entry = wasi.fd(fd)?;
    match entry.kind {
        Kind::File { .. } | Kind::Dir { .. } if entry.base & right == 0 => Err(errno::NOTCAPABLE),
        _ => Ok(()),
    }
}

fn preopen_name<P: Platform>(wasi: &mut Wasi<P>, fd: i32) -> Result<String, Errno> {
    match &wasi.fd(fd)?.kind {
        Kind::Dir { preopen: Some(name), .. } => Ok(name.clone()),
        _ => Err(errno::BADF),
    }
}

pub fn fd_prestat_get<P: Platform>(mem: &mut [u8], wasi: &mut Wasi<P>, fd: i32, ptr: u32) -> Result<(), Errno> {
    let name = preopen_name(wasi, fd)?;
    let mut prestat = [0u8; 8];
    prestat[4..].copy_from_slice(&(name.len() as u32).to_le_bytes());
    put(mem, ptr, &prestat)
}

/// A buffer shorter than the name is ENAMETOOLONG, as wasmtime answers,
/// rather than a name cut short that would then be taken for another.
pub fn fd_prestat_dir_name<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    ptr: u32,
    len: u32,
) -> Result<(), Errno> {
    let name = preopen_name(wasi, fd)?;
    if (len as usize) < name.len() {
        return Err(errno::NAMETOOLONG);
    }
    put(mem, ptr, name.as_bytes())
}

/// Lists a directory from `cookie` on: ".", "..", then its entries by
/// name; each dirent's `d_next` is the cookie of the one after it. The
/// listing is taken when a read starts from cookie 0 and kept with the fd,
/// so later cookies resume it exactly. Per the spec, a buffer that fills
/// up ends in a cut-off entry and `bufused == buf_len` says there is more.
pub fn fd_readdir<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    buf: u32,
    buf_len: u32,
    cookie: i64,
    used_ptr: u32,
) -> Result<(), Errno> {
    range(mem, buf, buf_len)?;
    range(mem, used_ptr, 4)?;
    let entry = wasi.fd(fd)?;
    let base = entry.base;
    let Kind::Dir { ino, listing, .. } = &mut entry.kind else { return Err(errno::NOTDIR) };
    if base & rights::FD_READDIR == 0 {
        return Err(errno::NOTCAPABLE);
    }
    let ino = *ino;
    if cookie == 0 || listing.is_none() {
        let fs = &wasi.fs;
        // A removed directory's parent may be gone: ".." is then itself.
        let parent = Some(fs.parent(ino)).filter(|p| fs.exists(*p)).unwrap_or(ino);
        let mut names: Vec<(String, u64, u8)> =
            alloc::vec![(String::from("."), ino, FILETYPE_DIRECTORY), (String::from(".."), parent, FILETYPE_DIRECTORY)];
        for (name, child) in fs.entries(ino)? {
            names.push((String::from(name.as_str()), *child, filetype(fs.node(*child).kind())));
        }
        let Ok(Fd { kind: Kind::Dir { listing, .. }, .. }) = wasi.fd(fd) else { unreachable!("checked above") };
        *listing = Some(names);
    }
    let Ok(Fd { kind: Kind::Dir { listing: Some(names), .. }, .. }) = wasi.fd(fd) else { unreachable!("just set") };
    let mut out = Vec::new();
    let start = usize::try_from(cookie as u64).unwrap_or(usize::MAX);
    for (i, (name, ino, kind)) in names.iter().enumerate().skip(start) {
        if out.len() >= buf_len as usize {
            break;
        }
        let mut dirent = [0u8; 24];
        dirent[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        dirent[8..16].copy_from_slice(&ino.to_le_bytes());
        dirent[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
        dirent[20] = *kind;
        out.extend_from_slice(&dirent);
        out.extend_from_slice(name.as_bytes());
    }
    out.truncate(buf_len as usize);
    put(mem, buf, &out)?;
    put(mem, used_ptr, &(out.len() as u32).to_le_bytes())
}
