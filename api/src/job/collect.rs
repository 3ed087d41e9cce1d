//! Reading the filesystem disk back after the job, as hostile input: the
//! guest wrote its metadata, so nothing in it is trusted beyond what
//! [`Metadata::decode`] checked (a tree of valid names, extents inside the
//! image) and what is checked here (entries of the mount being copied
//! only, caps on bytes, entries and depth).
//!
//! Two ways back:
//! - the `/out` shorthand is merged into the outputs directory, as it
//!   always was: only regular files and directories (a symlink stops the
//!   collection with an error), modes 0644 and 0755 less the umask, an
//!   existing file replaced (unlinked, then created with `O_EXCL`), at
//!   most `outputs_max_mib` of data. Files written before an error stay.
//! - a rw `[[files.mount]]` is rebuilt whole into a staging directory
//!   beside it (`.NAME.mvm-RANDOM`, same filesystem), with its files,
//!   directories and symlinks (created as links, never followed),
//!   permission bits (less set-user-ID and set-group-ID) and times; then swapped into place in one step
//!   (`renameat2(RENAME_EXCHANGE)`; a file mount: `rename` over it) and
//!   the old tree removed. Entries are mvm's user's, except that mvm run
//!   by root gives them the owner of the tree they replace. Any failure
//!   before the swap removes the staging
//!   copy: the host tree is then exactly as it was. Hard links come back as
//!   separate copies (each counts towards the cap), so that no link can
//!   join the tree to a file outside it.
//!
//! Every host path is reached from a directory descriptor one component at
//! a time with `O_NOFOLLOW`, so a symlink already in a destination is
//! refused, never followed; the destinations themselves, canonical since
//! the job file was read, are opened following no symlink ([`resolve`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use mvm_wasi::fsimage::{FormatError, Inode, Kind, Limits, Metadata, Superblock, BLOCK, NAME_MAX};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tracing::warn;

use super::copy::{copy_range, CopyError, Span};
use super::image::MAX_ENTRIES;
use super::resolve;

/// The deepest directory nesting brought back: each level holds a
/// descriptor while its entries are written.
pub const MAX_DEPTH: usize = 256;
/// Extents of all files together that a job's image may hold: 16 GiB of
/// data written as separate single blocks.
const MAX_EXTENTS: u64 = 1 << 22;
/// The largest metadata read, so a hostile superblock cannot make the host
/// allocate the whole disk: what the caps allow, in fsimage.rs's layout
/// (its header, then [`MAX_ENTRIES`] inodes of 51 bytes (fixed fields, kind,
/// a count), as many entries of the longest name (2 + 255 + 8 bytes) and
/// [`MAX_EXTENTS`] extents of 20 bytes): about 381 MiB. Symlink targets
/// and the mount table have no cap of their own and fit in what names
/// shorter than 255 bytes leave.
const MAX_METADATA: u64 = 12 + MAX_ENTRIES * (51 + 2 + NAME_MAX as u64 + 8) + MAX_EXTENTS * 20;
/// The permission bits a write-back restores: never set-user-ID nor
/// set-group-ID, which the guest chooses freely and which, on a file mvm
/// (perhaps root) owns, would run with mvm's rights.
const KEPT_PERM: u32 = 0o1777;
const BLOCK_U64: u64 = BLOCK as u64;
const MIB: u64 = 1 << 20;
/// The most copied between two looks at whether mvm was interrupted.
const INTERRUPT_STEP: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read the filesystem image {}", .path.display())]
    ReadImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the filesystem image the job left is invalid: {0}")]
    Invalid(FormatError),
    #[error("the filesystem image's metadata is {0} bytes, more than mvm reads")]
    MetadataTooLarge(u64),
    #[error("the filesystem image has no mount {0}")]
    NoMount(u32),
    #[error("{}: {problem}", .path.display())]
    Entry { path: PathBuf, problem: EntryProblem },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outputs exceed outputs_max_mib ({max_mib} MiB)")]
    OutputsTooLarge { max_mib: u64 },
    #[error("the mount's files exceed {max_mib} MiB, the size of the job's disk")]
    MountTooLarge { max_mib: u64 },
    #[error("mvm was interrupted; the host tree was left as it was")]
    Interrupted,
}

/// Why one entry of the image is refused. Refusal stops the collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("a symbolic link; only regular files and directories come back from /out")]
    Symlink,
    #[error("belongs to another mount")]
    OtherMount,
    #[error("a file where the mount's directory should be")]
    RootNotDir,
    #[error("not a regular file, but the mount is a file")]
    RootNotFile,
    #[error("more than {MAX_DEPTH} directories deep")]
    TooDeep,
    #[error("its path goes through a symbolic link or a non-directory in the destination")]
    NotADirectory,
    #[error("a directory is in the way of this file in the destination")]
    DirectoryInTheWay,
}

/// The image, open, and its checked metadata.
pub struct Image {
    path: PathBuf,
    file: File,
    total_blocks: u64,
    meta: Metadata,
    /// Inode number to index in `meta.inodes`.
    by_ino: BTreeMap<u64, usize>,
}

impl Image {
    /// Reads and checks the superblock and metadata of the image at `path`.
    pub fn open(path: &Path) -> Result<Image, CollectError> {
        let read_err = |source| CollectError::ReadImage { path: path.to_owned(), source };
        let file = File::open(path).map_err(read_err)?;
        let disk_blocks = file.metadata().map_err(read_err)?.len() / BLOCK_U64;
        let mut block = vec![0u8; BLOCK];
        file.read_exact_at(&mut block, 0).map_err(read_err)?;
        let sb = Superblock::decode(&block, disk_blocks).map_err(CollectError::Invalid)?;
        if sb.meta_len > MAX_METADATA {
            return Err(CollectError::MetadataTooLarge(sb.meta_len));
        }
        let mut bytes = vec![0u8; sb.meta_len as usize];
        file.read_exact_at(&mut bytes, sb.meta_start * BLOCK_U64).map_err(read_err)?;
        let max_extents = MAX_EXTENTS.min(sb.total_blocks);
        let limits = Limits { max_inodes: MAX_ENTRIES, max_entries: MAX_ENTRIES, max_extents };
        let meta = Metadata::decode(&bytes, sb.total_blocks, limits).map_err(CollectError::Invalid)?;
        let by_ino = meta.inodes.iter().enumerate().map(|(i, inode)| (inode.ino, i)).collect();
        Ok(Image { path: path.to_owned(), file, total_blocks: sb.total_blocks, meta, by_ino })
    }

    /// The image's size in bytes: the cap of what a rw mount brings back.
    pub fn size(&self) -> u64 {
        self.total_blocks * BLOCK_U64
    }

    fn inode(&self, ino: u64) -> &Inode {
        // Metadata::decode checked that every entry names an inode.
        &self.meta.inodes[self.by_ino[&ino]]
    }

    fn mount_root(&self, mount: u32) -> Result<&Inode, CollectError> {
        let root = self.meta.mounts.get(mount as usize).ok_or(CollectError::NoMount(mount))?.root;
        Ok(self.inode(root))
    }

    /// Copies a file inode's data into `out` (empty): each extent's bytes up
    /// to the file's size, the rest left as holes.
    fn copy_file(&self, inode: &Inode, out: &File, dest: &Path) -> Result<(), CollectError> {
        let Kind::File(extents) = &inode.kind else { unreachable!("only files are copied") };
        let write_err = |source| CollectError::Write { path: dest.to_owned(), source };
        let read_err = |source| CollectError::ReadImage { path: self.path.clone(), source };
        for extent in extents {
            let from = extent.logical * BLOCK_U64;
            if from >= inode.size {
                break;
            }
            let len = (u64::from(extent.count) * BLOCK_U64).min(inode.size - from);
            let mut keep_going = |_| !INTERRUPTED.load(Ordering::Relaxed);
            let start = extent.start * BLOCK_U64;
            copy_range(&self.file, out, Span { from: start, at: from, len }, INTERRUPT_STEP, true, &mut keep_going)
                .map_err(|e| match e {
                    CopyError::Read(source) => read_err(source),
                    CopyError::Write(source) | CopyError::Kernel(source) => write_err(source),
                    // Superblock::decode checked the image holds every block.
                    CopyError::Ended => read_err(io::ErrorKind::UnexpectedEof.into()),
                    CopyError::Stopped => CollectError::Interrupted,
                })?;
        }
        out.set_len(inode.size).map_err(write_err)
    }
}

/// What [`collect_outputs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputSummary {
    /// The files written, relative to the destination, in path order.
    pub files: Vec<OutputFile>,
    /// All file data written, hard-linked copies included: what the cap counts.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Merges what lies under mount `mount` (the `/out` shorthand) into `dest`
/// (created if missing), writing at most `max_bytes` of file data.
pub fn collect_outputs(image: &Image, mount: u32, dest: &Path, max_bytes: u64) -> Result<OutputSummary, CollectError> {
    let root = image.mount_root(mount)?;
    if !matches!(root.kind, Kind::Dir(_)) {
        return Err(CollectError::Entry { path: dest.to_owned(), problem: EntryProblem::RootNotDir });
    }
    // `dest` was made canonical when the job file was read: a symlink on
    // its way now was planted since, and is refused.
    let dest_fd = resolve::create_dirs(dest).map_err(|e| fs_err(e, dest))?;
    let mut out = Outputs { image, mount, dest, max_bytes, summary: OutputSummary::default() };
    out.dir(dest_fd.as_fd(), root, Path::new(""), 0)?;
    out.summary.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out.summary)
}

/// The checks both walks down a mount's tree (outputs and write-back) make
/// at each entry of the hostile image, before anything is written for it:
/// the mount the inode belongs to and, for a directory at `depth + 1`, the
/// depth cap. (The entry cap needs no count here: decoding refused an image
/// with more than [`MAX_ENTRIES`] entries in all, and a walk meets each
/// entry of its mount once.) Gives the entry's inode.
fn checked_entry(
    image: &Image,
    mount: u32,
    ino: u64,
    depth: usize,
    entry_err: impl Fn(EntryProblem) -> CollectError,
) -> Result<&Inode, CollectError> {
    let inode = image.inode(ino);
    if inode.mount != mount {
        return Err(entry_err(EntryProblem::OtherMount));
    }
    if matches!(inode.kind, Kind::Dir(_)) && depth + 1 > MAX_DEPTH {
        return Err(entry_err(EntryProblem::TooDeep));
    }
    Ok(inode)
}

struct Outputs<'a> {
    image: &'a Image,
    mount: u32,
    dest: &'a Path,
    max_bytes: u64,
    summary: OutputSummary,
}

impl Outputs<'_> {
    fn dir(&mut self, fd: BorrowedFd<'_>, dir: &Inode, rel: &Path, depth: usize) -> Result<(), CollectError> {
        let Kind::Dir(entries) = &dir.kind else { unreachable!("called on directories") };
        for (name, ino) in entries {
            let rel = rel.join(name);
            let entry_err = |problem| CollectError::Entry { path: self.dest.join(&rel), problem };
            let inode = checked_entry(self.image, self.mount, *ino, depth, entry_err)?;
            match &inode.kind {
                Kind::Dir(_) => {
                    let child = open_dir(fd, name.as_str(), true).map_err(|e| fs_err(e, &self.dest.join(&rel)))?;
                    self.dir(child.as_fd(), inode, &rel, depth + 1)?;
                }
                Kind::File(_) => {
                    let total = self.summary.bytes.saturating_add(inode.size);
                    if total > self.max_bytes {
                        return Err(CollectError::OutputsTooLarge { max_mib: self.max_bytes.div_ceil(MIB) });
                    }
                    let path = self.dest.join(&rel);
                    let out = replace_file(fd, name, 0o644).map_err(|e| fs_err(e, &path))?;
                    self.image.copy_file(inode, &out, &path)?;
                    self.summary.bytes = total;
                    self.summary.files.push(OutputFile { path: rel, bytes: inode.size });
                }
                Kind::Symlink(_) => return Err(entry_err(EntryProblem::Symlink)),
            }
        }
        Ok(())
    }
}

/// What [`write_back`] brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteBackSummary {
    pub files: u64,
    pub bytes: u64,
}

/// Replaces `host` (a directory or file, as validation found it) with the
/// final tree of mount `mount`, atomically, bringing back at most
/// `max_bytes` of file data. On error `host` is as it was.
pub fn write_back(image: &Image, mount: u32, host: &Path, max_bytes: u64) -> Result<WriteBackSummary, CollectError> {
    // Held for the whole write-back, so that an interrupted mvm waits for
    // the staging copy to be removed (see `interrupt`).
    let _running = writing();
    check_interrupted()?;
    let root = image.mount_root(mount)?;
    let (Some(parent), Some(name)) = (host.parent(), host.file_name()) else {
        return Err(write_err(host, io::ErrorKind::InvalidInput.into()));
    };
    // `host` is canonical (see `resolve`).
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let parent_fd = resolve::open(parent, dir_flags).map_err(|e| fs_err(e, parent))?;
    let host_stat =
        rustix::fs::statat(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| write_err(host, e.into()))?;
    let is_dir = rustix::fs::FileType::from_raw_mode(host_stat.st_mode) == rustix::fs::FileType::Directory;
    let (staging, made) = make_staging(parent_fd.as_fd(), name, is_dir).map_err(|e| write_err(parent, e.into()))?;
    // What mvm creates is its user's: when that is root and the tree is
    // another user's, the tree keeps its owner. (Only root may give files
    // away; anyone else writing another's tree makes the new one its own.)
    let staged_uid = rustix::fs::statat(&parent_fd, &staging, AtFlags::SYMLINK_NOFOLLOW).map(|s| s.st_uid);
    let owner = (staged_uid.ok() == Some(0) && (host_stat.st_uid, host_stat.st_gid) != (0, 0))
        .then_some((host_stat.st_uid, host_stat.st_gid));
    let mut rebuild = Rebuild { image, mount, max_bytes, owner, summary: WriteBackSummary::default() };
    let staged = match made {
        Staged::Dir(fd) => {
            if !matches!(root.kind, Kind::Dir(_)) {
                Err(CollectError::Entry { path: host.to_owned(), problem: EntryProblem::RootNotDir })
            } else {
                rebuild.dir(fd.as_fd(), root, host, 0).and_then(|()| rebuild.finish(fd.as_fd(), root, host))
            }
        }
        Staged::File(file) => match root.kind {
            Kind::File(_) => rebuild.file(&file, root, host).and_then(|()| rebuild.finish(file.as_fd(), root, host)),
            _ => Err(CollectError::Entry { path: host.to_owned(), problem: EntryProblem::RootNotFile }),
        },
    };
    let swapped = staged.and_then(|()| {
        let flags = if is_dir { RenameFlags::EXCHANGE } else { RenameFlags::empty() };
        rustix::fs::renameat_with(&parent_fd, &staging, &parent_fd, name, flags).map_err(|e| write_err(host, e.into()))
    });
    // After an exchange the staging name holds the old tree; after a
    // failure, the partial copy. Either way it goes.
    if is_dir || swapped.is_err() {
        if let Err(e) = remove_tree(parent_fd.as_fd(), &staging) {
            warn!(path = %parent.join(&staging).display(), error = %e, "cannot remove a staging copy");
        }
    }
    swapped.map(|()| rebuild.summary)
}

struct Rebuild<'a> {
    image: &'a Image,
    mount: u32,
    max_bytes: u64,
    /// The uid and gid to give every entry, when not mvm's own.
    owner: Option<(u32, u32)>,
    summary: WriteBackSummary,
}

impl Rebuild<'_> {
    fn dir(&mut self, fd: BorrowedFd<'_>, dir: &Inode, path: &Path, depth: usize) -> Result<(), CollectError> {
        let Kind::Dir(entries) = &dir.kind else { unreachable!("called on directories") };
        for (name, ino) in entries {
            check_interrupted()?;
            let path = path.join(name);
            let entry_err = |problem| CollectError::Entry { path: path.clone(), problem };
            let inode = checked_entry(self.image, self.mount, *ino, depth, entry_err)?;
            match &inode.kind {
                Kind::Dir(_) => {
                    rustix::fs::mkdirat(fd, name.as_str(), Mode::from_raw_mode(0o700)).map_err(|e| fs_err(e, &path))?;
                    let child = open_dir(fd, name.as_str(), false).map_err(|e| fs_err(e, &path))?;
                    self.dir(child.as_fd(), inode, &path, depth + 1)?;
                    self.finish(child.as_fd(), inode, &path)?;
                }
                Kind::File(_) => {
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let out = rustix::fs::openat(fd, name.as_str(), flags, Mode::from_raw_mode(0o600))
                        .map_err(|e| fs_err(e, &path))?;
                    let out = File::from(out);
                    self.file(&out, inode, &path)?;
                    self.finish(out.as_fd(), inode, &path)?;
                }
                Kind::Symlink(target) => {
                    rustix::fs::symlinkat(target.as_str(), fd, name.as_str()).map_err(|e| fs_err(e, &path))?;
                    if let Some((uid, gid)) = self.owner {
                        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
                        rustix::fs::chownat(fd, name.as_str(), Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| fs_err(e, &path))?;
                    }
                    let times = timestamps(inode);
                    rustix::fs::utimensat(fd, name.as_str(), &times, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| fs_err(e, &path))?;
                }
            }
        }
        Ok(())
    }

    fn file(&mut self, out: &File, inode: &Inode, path: &Path) -> Result<(), CollectError> {
        let total = self.summary.bytes.saturating_add(inode.size);
        if total > self.max_bytes {
            return Err(CollectError::MountTooLarge { max_mib: self.max_bytes.div_ceil(MIB) });
        }
        self.image.copy_file(inode, out, path)?;
        self.summary.bytes = total;
        self.summary.files += 1;
        Ok(())
    }

    /// Permission bits and times, set last: a directory's own entries
    /// change its mtime, and its bits may forbid adding them.
    fn finish(&self, fd: BorrowedFd<'_>, inode: &Inode, path: &Path) -> Result<(), CollectError> {
        let err = |e: Errno| write_err(path, e.into());
        // Before the bits: a change of owner may clear some of them.
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(err)?;
        }
        rustix::fs::futimens(fd, &timestamps(inode)).map_err(err)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(u32::from(inode.perm) & KEPT_PERM)).map_err(err)
    }
}

pub(super) enum Staged {
    Dir(OwnedFd),
    File(File),
}

/// `.NAME.mvm-` followed by 16 hex digits: the staging copy of `NAME`.
fn staging_name(name: &OsStr, random: u64) -> PathBuf {
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(format!("{STAGING_INFIX}{random:016x}"));
    PathBuf::from(staging)
}

const STAGING_INFIX: &str = ".mvm-";
/// The longest name a rw mount's host path may end in: its staging name
/// adds `.`, [`STAGING_INFIX`] and 16 hex digits, and must still be a name
/// (255 bytes at most).
pub const MAX_RW_NAME: usize = NAME_MAX - 1 - STAGING_INFIX.len() - 16;

/// Makes an empty directory or file named `.NAME.mvm-RANDOM` in `parent`;
/// on error, nothing.
pub(super) fn make_staging(parent: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> Result<(PathBuf, Staged), Errno> {
    let mut bytes = [0u8; 8];
    for _ in 0..16 {
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
        let staging = staging_name(name, u64::from_le_bytes(bytes));
        let made = if is_dir {
            rustix::fs::mkdirat(parent, &staging, Mode::from_raw_mode(0o700))
                .and_then(|()| {
                    open_dir(parent, &staging, false).inspect_err(|_| {
                        // Made, but cannot be used (out of descriptors):
                        // nothing else would remove it.
                        let _ = rustix::fs::unlinkat(parent, &staging, AtFlags::REMOVEDIR);
                    })
                })
                .map(Staged::Dir)
        } else {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(parent, &staging, flags, Mode::from_raw_mode(0o600))
                .map(|fd| Staged::File(File::from(fd)))
        };
        match made {
            Err(Errno::EXIST) => continue,
            result => return result.map(|made| (staging, made)),
        }
    }
    Err(Errno::EXIST)
}

/// Removes the staging copies of `host` that a write-back killed outright
/// (SIGKILL) left beside it: the host tree itself is whole either way,
/// since it is only ever swapped. Returns how many were removed.
pub fn remove_stale_staging(host: &Path) -> usize {
    let (Some(parent), Some(name)) = (host.parent(), host.file_name()) else { return 0 };
    let prefix = staging_name(name, 0);
    let prefix = &prefix.as_os_str().as_bytes()[..prefix.as_os_str().len() - 16];
    // `host` is canonical: a symlink on its way now was planted since.
    let Ok(parent_fd) = resolve::open(parent, OFlags::RDONLY | OFlags::DIRECTORY) else { return 0 };
    let Ok(dir) = rustix::fs::Dir::read_from(&parent_fd) else { return 0 };
    let stale: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| {
            n.len() == prefix.len() + 16
                && n.starts_with(prefix)
                && n[prefix.len()..].iter().all(|b| b.is_ascii_hexdigit())
        })
        .map(|n| PathBuf::from(OsStr::from_bytes(&n)))
        .collect();
    let mut removed = 0;
    for name in stale {
        match remove_tree(parent_fd.as_fd(), &name) {
            Ok(()) => removed += 1,
            Err(e) => warn!(path = %parent.join(&name).display(), error = %e, "cannot remove a staging copy"),
        }
    }
    removed
}

/// Removes `name` in `parent` and everything beneath it, by descriptor
/// (never following a link), making directories writable as it goes. A
/// directory on another filesystem than `parent` (a mount point, mounted
/// since the tree was staged) is never entered: its files are not the
/// tree's. It stays, and the removal fails with `EXDEV`.
fn remove_tree(parent: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
    let dev = rustix::fs::fstat(parent)?.st_dev;
    remove_tree_on(parent, name, dev)
}

fn remove_tree_on(parent: BorrowedFd<'_>, name: &Path, dev: u64) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    if rustix::fs::fstat(&fd)?.st_dev != dev {
        return Err(Errno::XDEV);
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(PathBuf::from(OsStr::from_bytes(n)));
        }
    }
    for child in names {
        remove_tree_on(fd.as_fd(), &child, dev)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn timestamps(inode: &Inode) -> Timestamps {
    let spec = |ns: u64| Timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as _ };
    Timestamps { last_access: spec(inode.atim), last_modification: spec(inode.mtim) }
}

fn write_err(path: &Path, source: io::Error) -> CollectError {
    CollectError::Write { path: path.to_owned(), source }
}

/// Errors from walking a destination: the ones a hostile layout causes
/// name the entry; the rest are plain write failures.
fn fs_err(errno: Errno, path: &Path) -> CollectError {
    match errno {
        Errno::LOOP | Errno::NOTDIR => {
            CollectError::Entry { path: path.to_owned(), problem: EntryProblem::NotADirectory }
        }
        Errno::ISDIR => CollectError::Entry { path: path.to_owned(), problem: EntryProblem::DirectoryInTheWay },
        e => write_err(path, e.into()),
    }
}

/// Opens directory `name` in `dir`, refusing a symlink or non-directory;
/// with `create`, making it first when missing.
fn open_dir<P: rustix::path::Arg + Copy>(dir: BorrowedFd<'_>, name: P, create: bool) -> Result<OwnedFd, Errno> {
    if create {
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

/// Replaces whatever non-directory is at `name` with a new, empty file.
/// Only a name that `O_EXCL` found free is opened: something already there
/// (a file, a hard or symbolic link) is unlinked first, never opened.
fn replace_file(dir: BorrowedFd<'_>, name: &str, mode: u32) -> Result<File, Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode)).map(File::from);
    match create() {
        Err(Errno::EXIST) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            create()
        }
        result => result,
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WRITING: Mutex<()> = Mutex::new(());

fn writing() -> MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_interrupted() -> Result<(), CollectError> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(CollectError::Interrupted);
    }
    Ok(())
}

/// Stops any write-back: one in progress removes its staging copy and
/// fails (unless it already swapped, in which case it finishes removing
/// the old tree), and none starts after. Returns once the host trees are
/// settled, so that the caller may exit (on SIGINT or SIGTERM).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::Relaxed);
    std::mem::forget(writing());
}
