//! The filesystem disk: everything the job sees under `/`, built on the host
//! before the VM starts, in the format of [`mvm_wasi::fsimage`].
//!
//! The job's mounts, in mount-table order, are the `/in` shorthand (its
//! input files), the `/out` shorthand (an empty writable directory), then
//! each `[[files.mount]]` in file order; the same order gives the preopened
//! directories (fd 3, 4, ...), with `/` last unless a mount is at `/`.
//! Directories that only lead to mount points belong to no mount
//! ([`NO_MOUNT`]), so the guest keeps them read-only.
//!
//! Each mount's host path, canonical since validation, is opened following
//! no symlink (one planted since is refused, see `resolve`); its tree is
//! walked by directory descriptor: every entry is looked
//! at with `statat(AT_SYMLINK_NOFOLLOW)`, then opened with `O_NOFOLLOW` and
//! checked with `fstat` to be the very inode looked at, so a tree changed
//! while it is staged cannot make mvm read outside it or through a link.
//! Symlinks are recorded as symlinks (their targets never followed on the
//! host); hard links within one mount stay hard links; device files,
//! sockets and FIFOs are refused, since the job would silently miss them,
//! and so is anything on another filesystem than its directory (a mount
//! point), which a write-back would otherwise empty.
//!
//! Layout: the superblock in block 0, each file's data in contiguous runs
//! of blocks from block 1 on (its holes left out, as they read as zeros),
//! the metadata after the data, then
//! `disk_mib` of free room. The file is sparse: the free room costs nothing
//! on the host until the job writes into it.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mvm_wasi::fsimage::{Extent, Inode, Kind, Metadata, Mount, Superblock, BLOCK, NO_MOUNT, ROOT};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat};
use rustix::io::Errno;
use tracing::info;

use super::collect::MAX_DEPTH;
use super::copy::{copy_range, CopyError, Span};
use super::resolve;
use super::spec::{guest_inside, Input, JobSpec, IN_DIR, OUT_DIR};

/// The most inodes and directory entries a job's tree may hold, as the
/// guest keeps its metadata in RAM.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Staging more than this logs progress at info level, once per step.
const PROGRESS_STEP: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const BLOCK_U64: u64 = BLOCK as u64;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot write the filesystem image {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{label}: cannot read {}", .path.display())]
    Read {
        label: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{label}: {}: {problem}", .path.display())]
    Entry { label: String, path: PathBuf, problem: EntryProblem },
    #[error("the job's files hold more than {MAX_ENTRIES} entries; mount less")]
    TooManyEntries,
    #[error("{label}: {}: more than {MAX_DEPTH} directories deep, more than a job's tree may be", .path.display())]
    TooDeep { label: String, path: PathBuf },
    #[error("the filesystem image would be too large ({blocks} blocks of {BLOCK} bytes)")]
    TooLarge { blocks: u64 },
}

/// Why one host entry cannot be staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("its name is not UTF-8, which the job's filesystem needs; rename it")]
    NameNotUtf8,
    #[error("a {0} cannot be given to a job; remove it or mount a tree without it")]
    Unsupported(&'static str),
    #[error("a symbolic link whose target is not UTF-8, which the job's filesystem needs")]
    BadTarget,
    #[error("it changed while being staged; run the job again")]
    Changed,
    #[error(
        "on another filesystem than the mounted tree (a mount point inside it); unmount it, or mount a tree \
         without it"
    )]
    OtherFilesystem,
    #[error(
        "its path now goes through a symbolic link, which it did not when the job file was read; \
         mvm follows none there: check what changed it"
    )]
    Symlinked,
}

/// What one mount shows, before it is staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `/in` shorthand: these files, by their names, in one directory.
    Files(Vec<Input>),
    /// The `/out` shorthand: an empty directory.
    Empty,
    /// A host directory, taken recursively.
    Dir(PathBuf),
    /// A host file.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMount {
    /// Absolute and normalized (see [`MountSpec`](super::spec::MountSpec)).
    pub guest: String,
    pub read_only: bool,
    pub source: Source,
    /// How errors name the mount: `files.inputs` or
    /// `job.toml:LINE: files.mount[N]`.
    pub label: String,
}

/// The job's mounts in mount-table order (see the module description).
pub fn mounts(spec: &JobSpec) -> Vec<ImageMount> {
    let mut mounts = Vec::new();
    if let Some(inputs) = &spec.inputs {
        mounts.push(ImageMount {
            guest: IN_DIR.into(),
            read_only: true,
            source: Source::Files(inputs.clone()),
            label: "files.inputs".into(),
        });
    }
    if spec.outputs.is_some() {
        mounts.push(ImageMount {
            guest: OUT_DIR.into(),
            read_only: false,
            source: Source::Empty,
            label: "files.outputs".into(),
        });
    }
    mounts.extend(spec.mounts.iter().map(|m| ImageMount {
        guest: m.guest.clone(),
        read_only: m.read_only,
        source: if m.is_dir { Source::Dir(m.host.clone()) } else { Source::File(m.host.clone()) },
        label: m.label(),
    }));
    mounts
}

/// The guest paths of the preopened directories, in fd order: each mount,
/// then `/` unless a mount already is `/`. A file mount is no directory and
/// cannot be preopened; it is reached through `/`.
pub fn preopens(mounts: &[ImageMount]) -> Vec<String> {
    let mut preopens: Vec<String> =
        mounts.iter().filter(|m| !matches!(m.source, Source::File(_))).map(|m| m.guest.clone()).collect();
    if !mounts.iter().any(|m| m.guest == "/") {
        preopens.push("/".into());
    }
    preopens
}

/// What [`build_image`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    /// Blocks the initial contents use: superblock, data and metadata.
    pub used_blocks: u64,
    pub total_blocks: u64,
}

/// Writes the filesystem image of `mounts` at `image` (created or
/// truncated), with `disk_mib` of free room after its contents.
pub fn build_image(image: &Path, mounts: &[ImageMount], disk_mib: u64) -> Result<ImageSummary, ImageError> {
    let write_err = |source| ImageError::Write { path: image.to_owned(), source };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(image).map_err(write_err)?;
    let mut builder = Builder {
        image: image.to_owned(),
        file,
        next_block: 1,
        inodes: Vec::new(),
        mount_points: mounts.iter().map(|m| m.guest.clone()).collect(),
        links: HashMap::new(),
        entries: 0,
        copied: 0,
        now: now_ns(),
    };
    let mut table = vec![Mount { root: 0, read_only: true }; mounts.len()];
    // Shallow mounts first, so that a deeper one is placed over the tree of
    // the mount it lies in (whose scan left its place empty).
    let mut order: Vec<usize> = (0..mounts.len()).collect();
    order.sort_by_key(|&i| depth(&mounts[i].guest));
    if !mounts.iter().any(|m| m.guest == "/") {
        builder.new_dir(NO_MOUNT, 0o755)?;
    }
    for i in order {
        let mount = &mounts[i];
        let index = i as u32;
        let parent = if mount.guest == "/" { None } else { Some(builder.leading_dirs(&mount.guest)?) };
        let root = match &mount.source {
            Source::Empty => builder.new_dir(index, 0o755)?,
            Source::Files(files) => builder.files(mount, index, files)?,
            Source::Dir(path) => builder.host_root(mount, index, path, true)?,
            Source::File(path) => builder.host_root(mount, index, path, false)?,
        };
        if let Some(parent) = parent {
            let name = mount.guest.rsplit('/').next().expect("a guest path has a last component");
            builder.set_entry(parent, name, root);
        }
        table[i] = Mount { root, read_only: mount.read_only };
    }
    debug_assert_eq!(builder.inodes.first().map(|i| i.ino), Some(ROOT));
    builder.finish(table, disk_mib)
}

/// Counts `n` more bytes staged into `copied`, logging every
/// [`PROGRESS_STEP`].
fn progress(copied: &mut u64, n: u64) {
    let before = *copied / PROGRESS_STEP;
    *copied += n;
    if *copied / PROGRESS_STEP > before {
        info!(staged_mib = *copied / MIB, "staging job files");
    }
}

fn depth(guest: &str) -> usize {
    guest.split('/').filter(|c| !c.is_empty()).count()
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Nanoseconds since the epoch from a stat time (before 1970: 0).
fn stat_ns(sec: i64, nsec: i64) -> u64 {
    u64::try_from(sec).map_or(0, |s| s.saturating_mul(1_000_000_000).saturating_add(nsec.clamp(0, 999_999_999) as u64))
}

struct Builder {
    image: PathBuf,
    file: File,
    /// The next block free for file data.
    next_block: u64,
    /// Inode `n` at index `n - 1`.
    inodes: Vec<Inode>,
    /// Every mount's guest path: a scan leaves these places empty.
    mount_points: Vec<String>,
    /// Files already staged, by host (device, inode) and mount: a second
    /// name is a hard link to the same image inode.
    links: HashMap<(u64, u64, u32), u64>,
    entries: u64,
    copied: u64,
    now: u64,
}

impl Builder {
    fn count_entry(&mut self) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(ImageError::TooManyEntries);
        }
        Ok(())
    }

    fn push(&mut self, mount: u32, perm: u16, size: u64, times: [u64; 3], kind: Kind) -> Result<u64, ImageError> {
        self.count_entry()?;
        let ino = self.inodes.len() as u64 + 1;
        let [atim, mtim, ctim] = times;
        self.inodes.push(Inode { ino, mount, perm, size, atim, mtim, ctim, kind });
        Ok(ino)
    }

    fn new_dir(&mut self, mount: u32, perm: u16) -> Result<u64, ImageError> {
        self.push(mount, perm, 0, [self.now; 3], Kind::Dir(Vec::new()))
    }

    fn entries_of(&mut self, dir: u64) -> &mut Vec<(String, u64)> {
        match &mut self.inodes[dir as usize - 1].kind {
            Kind::Dir(entries) => entries,
            _ => unreachable!("entries are only added to directories"),
        }
    }

    /// Names `ino` as `name` in `dir`, a name not there yet (a scan meets
    /// each name of a host directory once).
    fn push_entry(&mut self, dir: u64, name: &str, ino: u64) {
        self.entries_of(dir).push((name.to_owned(), ino));
    }

    /// Names `ino` as `name` in `dir`, replacing what was there (only a
    /// directory made to lead to a deeper mount can be).
    fn set_entry(&mut self, dir: u64, name: &str, ino: u64) {
        let entries = self.entries_of(dir);
        match entries.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = ino,
            None => entries.push((name.to_owned(), ino)),
        }
    }

    /// The directory that will hold the mount at `guest`: walked down from
    /// the root, through mounted directories where they are, making
    /// read-only [`NO_MOUNT`] directories where nothing is.
    fn leading_dirs(&mut self, guest: &str) -> Result<u64, ImageError> {
        let components: Vec<&str> = guest.split('/').filter(|c| !c.is_empty()).collect();
        let mut dir = ROOT;
        for name in &components[..components.len() - 1] {
            let existing = self.entries_of(dir).iter().find(|(n, _)| n == name).map(|e| e.1);
            // Only a directory can be there: a scan leaves out whatever
            // else lies on the way to a mount (see `left_for_mount`).
            dir = match existing {
                Some(ino) => ino,
                None => {
                    let made = self.new_dir(NO_MOUNT, 0o755)?;
                    self.set_entry(dir, name, made);
                    made
                }
            };
        }
        Ok(dir)
    }

    /// Whether the scan of a mount should leave `guest` out: another mount
    /// goes there, or (for anything but a directory) one goes beneath it.
    fn left_for_mount(&self, guest: &str, is_dir: bool) -> bool {
        self.mount_points.iter().any(|m| m == guest || (!is_dir && guest_inside(m, guest)))
    }

    /// The `/in` shorthand: one directory of the named files.
    fn files(&mut self, mount: &ImageMount, index: u32, files: &[Input]) -> Result<u64, ImageError> {
        let dir = self.new_dir(index, 0o755)?;
        for Input { name, path, .. } in files {
            let read_err = |source| ImageError::Read { label: mount.label.clone(), path: path.clone(), source };
            let entry_err = |problem| ImageError::Entry { label: mount.label.clone(), path: path.clone(), problem };
            if self.left_for_mount(&join_guest(&mount.guest, name), false) {
                continue;
            }
            let file = File::from(reopen(path).map_err(|e| resolve_err(e, read_err, entry_err))?);
            let stat = rustix::fs::fstat(&file).map_err(|e| read_err(e.into()))?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(entry_err(EntryProblem::Unsupported("non-regular file")));
            }
            let ino = self.file(mount, index, path, &file, &stat)?;
            // Validation made the names unique.
            self.push_entry(dir, name, ino);
        }
        Ok(dir)
    }

    /// A `[[files.mount]]`'s host directory or file, by the canonical path
    /// validation resolved, following no symlink (see `resolve`). It must
    /// still be of the type validation saw, which fixed the preopens.
    fn host_root(&mut self, mount: &ImageMount, index: u32, path: &Path, is_dir: bool) -> Result<u64, ImageError> {
        let read_err = |source| ImageError::Read { label: mount.label.clone(), path: path.to_owned(), source };
        let entry_err = |problem| ImageError::Entry { label: mount.label.clone(), path: path.to_owned(), problem };
        let fd = reopen(path).map_err(|e| resolve_err(e, read_err, entry_err))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory if is_dir => self.dir(mount, index, path, &mount.guest, fd, &stat),
            FileType::RegularFile if !is_dir => self.file(mount, index, path, &File::from(fd), &stat),
            FileType::Directory | FileType::RegularFile => Err(entry_err(EntryProblem::Changed)),
            other => Err(ImageError::Entry {
                label: mount.label.clone(),
                path: path.to_owned(),
                problem: EntryProblem::Unsupported(type_name(other)),
            }),
        }
    }

    /// A host directory, open as `fd`, and everything beneath it.
    fn dir(
        &mut self,
        mount: &ImageMount,
        index: u32,
        path: &Path,
        guest: &str,
        fd: OwnedFd,
        dir_stat: &Stat,
    ) -> Result<u64, ImageError> {
        let read_err =
            |p: &Path, e: Errno| ImageError::Read { label: mount.label.clone(), path: p.to_owned(), source: e.into() };
        let ino = self.push(index, perm(dir_stat), 0, times(dir_stat), Kind::Dir(Vec::new()))?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(|e| read_err(path, e))? {
            let entry = entry.map_err(|e| read_err(path, e))?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        }
        // Sorted, so that the image depends only on the tree.
        names.sort();
        for name in names {
            let child_path = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let entry_err =
                |problem| ImageError::Entry { label: mount.label.clone(), path: child_path.clone(), problem };
            // Linux's NAME_MAX is the format's: only the encoding can differ.
            let Ok(utf8) = name.to_str() else { return Err(entry_err(EntryProblem::NameNotUtf8)) };
            let child_guest = join_guest(guest, utf8);
            let stat = match rustix::fs::statat(&fd, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed since the directory was read.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(read_err(&child_path, e)),
            };
            let kind = FileType::from_raw_mode(stat.st_mode);
            if self.left_for_mount(&child_guest, kind == FileType::Directory) {
                continue;
            }
            // A mount point (or a file of another filesystem): a rw tree's
            // write-back would empty it when removing the old tree, and an
            // ro tree would reach beyond what was named.
            if stat.st_dev != dir_stat.st_dev {
                return Err(entry_err(EntryProblem::OtherFilesystem));
            }
            let child = match kind {
                FileType::Directory => {
                    // As deep as a write-back may bring back, and no deeper
                    // than the descriptors this walk holds open allow.
                    if depth(&child_guest) - depth(&mount.guest) > MAX_DEPTH {
                        return Err(ImageError::TooDeep { label: mount.label.clone(), path: child_path });
                    }
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let child_fd = open_same(fd.as_fd(), &name, flags, &stat).map_err(|e| match e {
                        Some(e) => read_err(&child_path, e),
                        None => entry_err(EntryProblem::Changed),
                    })?;
                    self.dir(mount, index, &child_path, &child_guest, child_fd, &stat)?
                }
                FileType::RegularFile => {
                    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                    let child_fd = open_same(fd.as_fd(), &name, flags, &stat).map_err(|e| match e {
                        Some(e) => read_err(&child_path, e),
                        None => entry_err(EntryProblem::Changed),
                    })?;
                    self.file(mount, index, &child_path, &File::from(child_fd), &stat)?
                }
                FileType::Symlink => {
                    let target =
                        rustix::fs::readlinkat(&fd, &*name, Vec::new()).map_err(|e| read_err(&child_path, e))?;
                    // Linux holds no empty target nor one over PATH_MAX - 1,
                    // the format's TARGET_MAX: only the encoding can differ.
                    let target = target.into_string().map_err(|_| entry_err(EntryProblem::BadTarget))?;
                    let size = target.len() as u64;
                    self.push(index, perm(&stat), size, times(&stat), Kind::Symlink(target))?
                }
                other => return Err(entry_err(EntryProblem::Unsupported(type_name(other)))),
            };
            self.push_entry(ino, utf8, child);
        }
        Ok(ino)
    }

    /// A regular file's inode, its data copied into the image; a second
    /// name of a file already staged in this mount is a hard link.
    fn file(
        &mut self,
        mount: &ImageMount,
        index: u32,
        path: &Path,
        file: &File,
        stat: &Stat,
    ) -> Result<u64, ImageError> {
        let key = (stat.st_dev, stat.st_ino, index);
        if stat.st_nlink > 1 {
            if let Some(&ino) = self.links.get(&key) {
                // One more name, no more inode: counted all the same.
                self.count_entry()?;
                return Ok(ino);
            }
        }
        let size = stat.st_size as u64;
        let mut extents = Vec::new();
        for (first, end) in data_runs(file, size) {
            let mut logical = first;
            while logical < end {
                let count = (end - logical).min(u64::from(u32::MAX));
                let start = self.next_block;
                self.next_block = start.checked_add(count).ok_or(ImageError::TooLarge { blocks: u64::MAX })?;
                extents.push(Extent { logical, start, count: count as u32 });
                let from = logical * BLOCK_U64;
                self.copy(mount, path, file, from, start * BLOCK_U64, (count * BLOCK_U64).min(size - from))?;
                logical += count;
            }
        }
        let ino = self.push(index, perm(stat), size, times(stat), Kind::File(extents))?;
        if stat.st_nlink > 1 {
            self.links.insert(key, ino);
        }
        Ok(ino)
    }

    /// Copies exactly `len` bytes of `src` from `from` into the image at
    /// `at`.
    fn copy(
        &mut self,
        mount: &ImageMount,
        path: &Path,
        src: &File,
        from: u64,
        at: u64,
        len: u64,
    ) -> Result<(), ImageError> {
        let read_err = |source| ImageError::Read { label: mount.label.clone(), path: path.to_owned(), source };
        let (image, file) = (&self.image, &self.file);
        let copied = &mut self.copied;
        let mut progress = |n| {
            progress(copied, n);
            true
        };
        copy_range(src, file, Span { from, at, len }, 1 << 30, true, &mut progress).map_err(|e| match e {
            CopyError::Read(source) | CopyError::Kernel(source) => read_err(source),
            CopyError::Write(source) => ImageError::Write { path: image.clone(), source },
            CopyError::Ended | CopyError::Stopped => {
                ImageError::Entry { label: mount.label.clone(), path: path.to_owned(), problem: EntryProblem::Changed }
            }
        })
    }

    /// Sorts every directory, writes the metadata after the data and the
    /// superblock, and sizes the file for the free room.
    fn finish(mut self, mounts: Vec<Mount>, disk_mib: u64) -> Result<ImageSummary, ImageError> {
        for inode in &mut self.inodes {
            if let Kind::Dir(entries) = &mut inode.kind {
                entries.sort();
            }
        }
        let meta = Metadata { mounts, inodes: self.inodes }.encode();
        let meta_start = self.next_block;
        let used_blocks = meta_start.checked_add((meta.len() as u64).div_ceil(BLOCK_U64));
        let total_blocks = used_blocks.and_then(|u| u.checked_add(disk_mib.checked_mul(MIB / BLOCK_U64)?));
        let (Some(used_blocks), Some(total_blocks)) = (used_blocks, total_blocks) else {
            return Err(ImageError::TooLarge { blocks: u64::MAX });
        };
        if total_blocks.checked_mul(BLOCK_U64).is_none() {
            return Err(ImageError::TooLarge { blocks: total_blocks });
        }
        let sb = Superblock { total_blocks, meta_start, meta_len: meta.len() as u64 };
        let write_err = |source| ImageError::Write { path: self.image.clone(), source };
        self.file.write_all_at(&meta, meta_start * BLOCK_U64).map_err(write_err)?;
        self.file.write_all_at(&sb.encode(), 0).map_err(write_err)?;
        self.file.set_len(total_blocks * BLOCK_U64).map_err(write_err)?;
        Ok(ImageSummary { used_blocks, total_blocks })
    }
}

/// The runs of blocks (first, end) of `file`, `size` bytes long, that may
/// hold data: holes are left out of the image (they read as zeros there
/// too); where the filesystem cannot tell them (no SEEK_DATA), all of it.
fn data_runs(file: &File, size: u64) -> Vec<(u64, u64)> {
    let all = vec![(0, size.div_ceil(BLOCK_U64))];
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(data) if data < size => data,
            // No data from `at` to the end.
            Ok(_) | Err(Errno::NXIO) => break,
            Err(_) => return all,
        };
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data)).map_or(size, |hole| hole.min(size));
        let (first, end) = (data / BLOCK_U64, hole.div_ceil(BLOCK_U64));
        match runs.last_mut() {
            Some(last) if last.1 >= first => last.1 = last.1.max(end),
            _ => runs.push((first, end)),
        }
        at = hole.max(data + 1);
    }
    runs
}

/// Opens a host path validation made canonical, following no symlink.
/// Not waiting: it may have become a FIFO.
fn reopen(path: &Path) -> Result<OwnedFd, Errno> {
    resolve::open(path, OFlags::RDONLY | OFlags::NONBLOCK)
}

/// A symlink met by [`reopen`] was planted after validation.
fn resolve_err(
    errno: Errno,
    read_err: impl FnOnce(io::Error) -> ImageError,
    entry_err: impl FnOnce(EntryProblem) -> ImageError,
) -> ImageError {
    match errno {
        Errno::LOOP => entry_err(EntryProblem::Symlinked),
        e => read_err(e.into()),
    }
}

/// Opens `name` in `dir` and checks with `fstat` that it is the inode
/// `seen` described; `None`: it is another (the tree changed meanwhile).
fn open_same(dir: BorrowedFd<'_>, name: &CStr, flags: OFlags, seen: &Stat) -> Result<OwnedFd, Option<Errno>> {
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR | Errno::NOENT => None,
        e => Some(e),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(Some)?;
    if (stat.st_dev, stat.st_ino) != (seen.st_dev, seen.st_ino) {
        return Err(None);
    }
    Ok(fd)
}

fn join_guest(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn perm(stat: &Stat) -> u16 {
    (stat.st_mode & 0o7777) as u16
}

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // The stat field types differ by architecture.
fn times(stat: &Stat) -> [u64; 3] {
    [
        stat_ns(stat.st_atime as i64, stat.st_atime_nsec as i64),
        stat_ns(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        stat_ns(stat.st_ctime as i64, stat.st_ctime_nsec as i64),
    ]
}

fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}
