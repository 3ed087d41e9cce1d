//! The path functions: each resolves its path beneath a directory fd
//! (vfs/path.rs: never out of it), checks the fd's right, and does the
//! change with the filesystem's POSIX rules.

use super::fd::{filestat, set_times};
use super::{bytes, fdflags, put, range, rights, Errno, Fd, Kind, Wasi};
use crate::errno;
use crate::vfs::{FileType, Parent};
use crate::Platform;

const LOOKUP_SYMLINK_FOLLOW: i32 = 1;

/// oflags (typenames.witx).
pub const OFLAGS_CREAT: i32 = 1 << 0;
pub const OFLAGS_DIRECTORY: i32 = 1 << 1;
pub const OFLAGS_EXCL: i32 = 1 << 2;
pub const OFLAGS_TRUNC: i32 = 1 << 3;

/// A directory fd's inode, if it has `right`: ENOTDIR for an fd that is
/// not a directory, ENOTCAPABLE for a missing right.
fn dir<P: Platform>(wasi: &mut Wasi<P>, fd: i32, right: u64) -> Result<u64, Errno> {
    let entry = wasi.fd(fd)?;
    let Kind::Dir { ino, .. } = entry.kind else { return Err(errno::NOTDIR) };
    if entry.base & right == 0 {
        return Err(errno::NOTCAPABLE);
    }
    Ok(ino)
}

fn path(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Errno> {
    bytes(mem, ptr, len)
}

/// A path ending in "/" that names no directory: EEXIST when something is
/// there, ENOENT when nothing is (what Linux answers for link and symlink).
fn trailing_slash_target<P: Platform>(wasi: &Wasi<P>, at: &Parent) -> Result<(), Errno> {
    if at.trailing_slash {
        return Err(match wasi.fs.lookup(at.dir, at.name)? {
            Some(_) => errno::EXIST,
            None => errno::NOENT,
        });
    }
    Ok(())
}

pub fn path_create_directory<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    path_ptr: (u32, u32),
) -> Result<(), Errno> {
    let base = dir(wasi, fd, rights::PATH_CREATE_DIRECTORY)?;
    let at = wasi.fs.resolve_parent(base, path(mem, path_ptr.0, path_ptr.1)?, errno::EXIST)?;
    let now = wasi.now();
    wasi.fs.mkdir(at.dir, at.name, now).map(|_| ())
}

pub fn path_filestat_get<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    flags: i32,
    path_ptr: (u32, u32),
    buf: u32,
) -> Result<(), Errno> {
    let base = dir(wasi, fd, rights::PATH_FILESTAT_GET)?;
    let ino = wasi.fs.resolve(base, path(mem, path_ptr.0, path_ptr.1)?, flags & LOOKUP_SYMLINK_FOLLOW != 0)?;
    let stat = filestat(&wasi.fs.stat(ino));
    put(mem, buf, &stat)
}

#[allow(clippy::too_many_arguments)]
pub fn path_filestat_set_times<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    flags: i32,
    path_ptr: (u32, u32),
    atim: i64,
    mtim: i64,
    fstflags: i32,
) -> Result<(), Errno> {
    let (atim, mtim) = set_times(atim, mtim, fstflags)?;
    let base = dir(wasi, fd, rights::PATH_FILESTAT_SET_TIMES)?;
    let ino = wasi.fs.resolve(base, path(mem, path_ptr.0, path_ptr.1)?, flags & LOOKUP_SYMLINK_FOLLOW != 0)?;
    let now = wasi.now();
    wasi.fs.set_times(ino, atim, mtim, now)
}

/// A hard link: the old path follows a symlink only with SYMLINK_FOLLOW
/// (linkat's AT_SYMLINK_FOLLOW); a directory cannot be linked (EPERM).
pub fn path_link<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    old_fd: i32,
    old_flags: i32,
    old_path: (u32, u32),
    new_fd: i32,
    new_path: (u32, u32),
) -> Result<(), Errno> {
    let from = dir(wasi, old_fd, rights::PATH_LINK_SOURCE)?;
    let to = dir(wasi, new_fd, rights::PATH_LINK_TARGET)?;
    let ino = wasi.fs.resolve(from, path(mem, old_path.0, old_path.1)?, old_flags & LOOKUP_SYMLINK_FOLLOW != 0)?;
    let at = wasi.fs.resolve_parent(to, path(mem, new_path.0, new_path.1)?, errno::EXIST)?;
    if wasi.fs.node(ino).kind() == FileType::Dir {
        return Err(errno::PERM);
    }
    trailing_slash_target(wasi, &at)?;
    let now = wasi.now();
    wasi.fs.link(ino, at.dir, at.name, now)
}

/// Opens (and with CREAT makes) a file or directory. The rights asked for
/// must be among the directory's inheriting rights (ENOTCAPABLE); the fd
/// gets those that make sense for what it names: no read or write on a
/// directory, no change to a file on a read-only mount (asking to write
/// one, or to truncate it, is EROFS, as open(2) says).
#[allow(clippy::too_many_arguments)]
pub fn path_open<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    dirflags: i32,
    path_ptr: (u32, u32),
    oflags: i32,
    base_rights: i64,
    inheriting: i64,
    flags: i32,
    fd_ptr: u32,
) -> Result<(), Errno> {
    // Where the new fd goes first: an open whose fd the module cannot be
    // told would leave a file created and an fd taken that nothing closes.
    range(mem, fd_ptr, 4)?;
    wasi.check_fd_room()?;
    let (base_rights, inheriting) = (base_rights as u64 & rights::ALL, inheriting as u64 & rights::ALL);
    let flags = u16::try_from(flags).ok().filter(|f| f & !fdflags::ALL == 0).ok_or(errno::INVAL)?;
    if oflags & !(OFLAGS_CREAT | OFLAGS_DIRECTORY | OFLAGS_EXCL | OFLAGS_TRUNC) != 0 {
        return Err(errno::INVAL);
    }
    let entry = wasi.fd(fd)?;
    let Kind::Dir { ino: base, .. } = entry.kind else { return Err(errno::NOTDIR) };
    let mut needed = rights::PATH_OPEN;
    if oflags & OFLAGS_CREAT != 0 {
        needed |= rights::PATH_CREATE_FILE;
    }
    if oflags & OFLAGS_TRUNC != 0 {
        needed |= rights::PATH_FILESTAT_SET_SIZE;
    }
    if entry.base & needed != needed || base_rights & !entry.inheriting != 0 || inheriting & !entry.inheriting != 0 {
        return Err(errno::NOTCAPABLE);
    }
    let follow = dirflags & LOOKUP_SYMLINK_FOLLOW != 0;
    let path = path(mem, path_ptr.0, path_ptr.1)?;
    let now = wasi.now();
    let ino = if oflags & OFLAGS_CREAT != 0 {
        // As Linux: O_CREAT with O_DIRECTORY is EINVAL, and a name ending
        // in "/" cannot be created as a file (EISDIR).
        if oflags & OFLAGS_DIRECTORY != 0 {
            return Err(errno::INVAL);
        }
        let at = wasi.fs.resolve_parent(base, path, errno::ISDIR)?;
        match wasi.fs.lookup(at.dir, at.name)? {
            Some(_) if oflags & OFLAGS_EXCL != 0 => return Err(errno::EXIST),
            Some(_) => wasi.fs.resolve(base, path, follow)?,
            None if at.trailing_slash => return Err(errno::ISDIR),
            None => wasi.fs.create_file(at.dir, at.name, now)?,
        }
    } else {
        wasi.fs.resolve(base, path, follow)?
    };
    let writable = wasi.fs.writable(ino);
    let base_rights = match wasi.fs.node(ino).kind() {
        FileType::Dir => {
            // Neither written, truncated nor created as a file (open(2)).
            if oflags & (OFLAGS_TRUNC | OFLAGS_CREAT) != 0 || base_rights & rights::FD_WRITE != 0 {
                return Err(errno::ISDIR);
            }
            base_rights & rights::DIR
        }
        // A symlink reached without following it: O_NOFOLLOW's ELOOP.
        FileType::Symlink => return Err(errno::LOOP),
        FileType::File if oflags & OFLAGS_DIRECTORY != 0 => return Err(errno::NOTDIR),
        FileType::File => {
            let wants_change = base_rights & rights::FD_WRITE != 0 || oflags & OFLAGS_TRUNC != 0;
            if wants_change && !writable {
                return Err(errno::ROFS);
            }
            if oflags & OFLAGS_TRUNC != 0 {
                wasi.fs.set_size(ino, 0, now)?;
            }
            let allowed = if writable { rights::FILE } else { rights::FILE & !rights::FILE_CHANGE };
            base_rights & allowed
        }
    };
    let is_dir = wasi.fs.node(ino).kind() == FileType::Dir;
    let kind = if is_dir { Kind::Dir { ino, preopen: None, listing: None } } else { Kind::File { ino, pos: 0 } };
    let inheriting = if is_dir { inheriting } else { 0 };
    wasi.fs.open(ino);
    let new = wasi.add_fd(Fd { kind, base: base_rights, inheriting, flags });
    put(mem, fd_ptr, &new.to_le_bytes())
}

/// The target of a symlink, cut to the buffer if longer (readlink(2)).
pub fn path_readlink<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    path_ptr: (u32, u32),
    buf: u32,
    buf_len: u32,
    used_ptr: u32,
) -> Result<(), Errno> {
    range(mem, buf, buf_len)?;
    range(mem, used_ptr, 4)?;
    let base = dir(wasi, fd, rights::PATH_READLINK)?;
    let ino = wasi.fs.resolve(base, path(mem, path_ptr.0, path_ptr.1)?, false)?;
    let target = wasi.fs.readlink(ino)?.as_bytes();
    let n = target.len().min(buf_len as usize);
    let target = target[..n].to_vec();
    put(mem, buf, &target)?;
    put(mem, used_ptr, &(n as u32).to_le_bytes())
}

pub fn path_remove_directory<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    path_ptr: (u32, u32),
) -> Result<(), Errno> {
    let base = dir(wasi, fd, rights::PATH_REMOVE_DIRECTORY)?;
    // rmdir(".") is EINVAL on Linux.
    let at = wasi.fs.resolve_parent(base, path(mem, path_ptr.0, path_ptr.1)?, errno::INVAL)?;
    let now = wasi.now();
    wasi.fs.rmdir(at.dir, at.name, now)
}

/// rename(2): a trailing slash on either path says the source must be a
/// directory (ENOTDIR otherwise); "." or ".." as either last component is
/// EBUSY, as Linux answers.
pub fn path_rename<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    old_path: (u32, u32),
    new_fd: i32,
    new_path: (u32, u32),
) -> Result<(), Errno> {
    let from = dir(wasi, fd, rights::PATH_RENAME_SOURCE)?;
    let to = dir(wasi, new_fd, rights::PATH_RENAME_TARGET)?;
    let src = wasi.fs.resolve_parent(from, path(mem, old_path.0, old_path.1)?, errno::BUSY)?;
    let dst = wasi.fs.resolve_parent(to, path(mem, new_path.0, new_path.1)?, errno::BUSY)?;
    let ino = wasi.fs.lookup(src.dir, src.name)?.ok_or(errno::NOENT)?;
    if (src.trailing_slash || dst.trailing_slash) && wasi.fs.node(ino).kind() != FileType::Dir {
        return Err(errno::NOTDIR);
    }
    let now = wasi.now();
    wasi.fs.rename(src.dir, src.name, dst.dir, dst.name, now)
}

pub fn path_symlink<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    old_path: (u32, u32),
    fd: i32,
    new_path: (u32, u32),
) -> Result<(), Errno> {
    let base = dir(wasi, fd, rights::PATH_SYMLINK)?;
    let target = core::str::from_utf8(bytes(mem, old_path.0, old_path.1)?).map_err(|_| errno::ILSEQ)?;
    let at = wasi.fs.resolve_parent(base, path(mem, new_path.0, new_path.1)?, errno::EXIST)?;
    trailing_slash_target(wasi, &at)?;
    let now = wasi.now();
    let target = alloc::string::String::from(target);
    wasi.fs.symlink(at.dir, at.name, &target, now).map(|_| ())
}

/// unlink(2) of a name that is not a directory; a trailing slash says the
/// name must be a directory, so on anything else it is ENOTDIR (and on a
/// directory EISDIR, as without it).
pub fn path_unlink_file<P: Platform>(
    mem: &mut [u8],
    wasi: &mut Wasi<P>,
    fd: i32,
    path_ptr: (u32, u32),
) -> Result<(), Errno> {
    let base = dir(wasi, fd, rights::PATH_UNLINK_FILE)?;
    let at = wasi.fs.resolve_parent(base, path(mem, path_ptr.0, path_ptr.1)?, errno::ISDIR)?;
    if at.trailing_slash {
        let ino = wasi.fs.lookup(at.dir, at.name)?.ok_or(errno::NOENT)?;
        if wasi.fs.node(ino).kind() != FileType::Dir {
            return Err(errno::NOTDIR);
        }
    }
    let now = wasi.now();
    wasi.fs.unlink(at.dir, at.name, now)
}
