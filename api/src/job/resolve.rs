//! Opening again, after the job file was read, host paths that were made
//! canonical then. Meanwhile another job's write-back may have put a
//! symlink in any component (a rw mount's symlinks come back as links), so
//! these opens follow no symlink at all: one planted since makes the open
//! fail (`ELOOP`, or `ENOTDIR` when creating), never leads it elsewhere.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// Opens the canonical `path` with `flags`, following no symlink in any
/// component, the last one included.
pub fn open(path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(CWD, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve)
}

/// Opens the canonical directory `path`, making (mode 0755, less the
/// umask) whatever of it is missing, one component at a time from `/`,
/// following no symlink.
pub fn create_dirs(path: &Path) -> Result<OwnedFd, Errno> {
    if !path.is_absolute() {
        return Err(Errno::INVAL);
    }
    let mut dir = rustix::fs::open("/", DIR_FLAGS, Mode::empty())?;
    for component in path.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            // Not canonical.
            _ => return Err(Errno::INVAL),
        };
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        dir = rustix::fs::openat(dir.as_fd(), name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
    }
    Ok(dir)
}
