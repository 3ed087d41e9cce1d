//! Unpacking the output image: a ustar archive the guest wrote of its `/out`.
//!
//! The archive comes from an untrusted job, so it is read as hostile input.
//! Only regular files and directories are accepted, with relative names made
//! of ordinary components; anything else stops extraction with an error that
//! names the entry. Sizes are checked against the image before any data is
//! read, and the total against the job's outputs cap before it is written.
//!
//! Nothing is ever written outside the destination, even when the destination
//! already holds symbolic links: every path is walked one component at a
//! time from a directory descriptor with `openat(O_NOFOLLOW)` and `mkdirat`,
//! so a symlink at any component is refused rather than followed, and there
//! is no window in which a checked path can be swapped for a link. The
//! archive's modes and owners are ignored: directories are made 0755 and
//! files 0644 (both less the umask), owned by whoever runs the extraction.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::archive::{ArchiveError, EntryProblem, HeaderProblem};

const BLOCK: u64 = 512;
const MIB: u64 = 1 << 20;

/// What [`extract_outputs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputSummary {
    /// The files written, relative to the destination, in path order. A name
    /// the archive holds twice is listed once, with the size of its last copy.
    pub files: Vec<OutputFile>,
    /// All file data written, duplicates included: what the cap counts.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Unpacks the archive in `image` into `dest` (created if missing), writing
/// at most `max_bytes` of file data.
///
/// A file that already exists in `dest` under an entry's name is replaced:
/// the old directory entry is unlinked (a symlink there is removed, never
/// followed) and a new file is created with `O_EXCL`, so data never goes
/// through a pre-existing link, hard or symbolic. An existing directory is
/// reused. An all-zero image is an empty archive.
///
/// Extraction stops at the first refused entry. Entries before it have been
/// written and stay in `dest`; the entry itself leaves nothing behind except,
/// when its data cannot be read or written, a partial file.
pub fn extract_outputs(image: &Path, dest: &Path, max_bytes: u64) -> Result<OutputSummary, ArchiveError> {
    let read_err = |source| ArchiveError::Read { path: image.to_owned(), source };
    let file = File::open(image).map_err(read_err)?;
    let image_len = file.metadata().map_err(read_err)?.len();
    let mut reader = BufReader::new(file);

    std::fs::create_dir_all(dest).map_err(|source| write_err(dest, source))?;
    // `dest` itself is the user's choice and may be a symlink; only what is
    // below it is walked without following links.
    let root_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(dest, root_flags, Mode::empty()).map_err(|e| write_err(dest, e.into()))?;

    let mut files = BTreeMap::new();
    let mut bytes = 0u64;
    let mut offset = 0u64;
    while offset < image_len {
        if image_len - offset < BLOCK {
            return Err(ArchiveError::Header { offset, problem: HeaderProblem::Truncated });
        }
        let mut block = [0u8; BLOCK as usize];
        reader.read_exact(&mut block).map_err(read_err)?;
        let Some(header) = parse_header(&block).map_err(|problem| ArchiveError::Header { offset, problem })? else {
            // A zero block ends the archive; POSIX writes two, one suffices.
            break;
        };
        let entry_err =
            |problem| ArchiveError::Entry { offset, name: String::from_utf8_lossy(&header.name).into_owned(), problem };
        let kind = entry_kind(header.typeflag).map_err(entry_err)?;
        let components = split_path(&header.name, kind).map_err(entry_err)?;
        let available = image_len - offset - BLOCK;
        if header.size > available {
            return Err(entry_err(EntryProblem::Truncated { declared: header.size, available }));
        }
        let rel: PathBuf = components.iter().collect();
        match kind {
            Kind::Dir => {
                if header.size != 0 {
                    return Err(entry_err(EntryProblem::DirectoryWithData(header.size)));
                }
                open_dirs(root.as_fd(), &components).map_err(|e| fs_err(e, dest, &rel, entry_err))?;
            }
            Kind::File => {
                if bytes.saturating_add(header.size) > max_bytes {
                    return Err(ArchiveError::OutputsTooLarge { max_mib: max_bytes.div_ceil(MIB) });
                }
                let (name, parents) = components.split_last().expect("split_path never returns an empty path");
                let parent = open_dirs(root.as_fd(), parents).map_err(|e| fs_err(e, dest, &rel, entry_err))?;
                let mut out = create_file(parent.as_fd(), name).map_err(|e| fs_err(e, dest, &rel, entry_err))?;
                let copied = io::copy(&mut (&mut reader).take(header.size), &mut out)
                    .map_err(|source| write_err(&dest.join(&rel), source))?;
                if copied != header.size {
                    return Err(read_err(io::ErrorKind::UnexpectedEof.into()));
                }
                bytes += header.size;
                files.insert(rel, header.size);
            }
        }
        // Padding past the end of the image is not an error: the data is all
        // there. The offset then passes the end, which ends the loop.
        let skip = header.size.div_ceil(BLOCK) * BLOCK - header.size;
        reader.seek_relative(skip as i64).map_err(read_err)?;
        offset += BLOCK + header.size + skip;
    }
    let files = files.into_iter().map(|(path, bytes)| OutputFile { path, bytes }).collect();
    Ok(OutputSummary { files, bytes })
}

fn write_err(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Write { path: path.to_owned(), source }
}

/// Errors from walking the destination: the ones a hostile layout causes
/// name the entry; the rest are plain write failures.
fn fs_err(errno: Errno, dest: &Path, rel: &Path, entry_err: impl Fn(EntryProblem) -> ArchiveError) -> ArchiveError {
    match errno {
        Errno::LOOP | Errno::NOTDIR => entry_err(EntryProblem::NotADirectory),
        Errno::ISDIR => entry_err(EntryProblem::DirectoryInTheWay),
        e => write_err(&dest.join(rel), e.into()),
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens (creating as needed) the directory `components` below `root`,
/// refusing a symlink or non-directory at every step.
fn open_dirs(root: BorrowedFd<'_>, components: &[&OsStr]) -> Result<OwnedFd, Errno> {
    let mut dir = rustix::fs::openat(root, ".", dir_flags(), Mode::empty())?;
    for name in components {
        match rustix::fs::mkdirat(&dir, *name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        dir = rustix::fs::openat(&dir, *name, dir_flags(), Mode::empty())?;
    }
    Ok(dir)
}

/// Replaces whatever non-directory is at `name` with a new, empty file.
/// Only a name that `O_EXCL` found free is opened: something already there
/// (a file, a hard or symbolic link) is unlinked first, never opened.
fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> Result<File, Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644)).map(File::from);
    match create() {
        Err(Errno::EXIST) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            create()
        }
        result => result,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

fn entry_kind(typeflag: u8) -> Result<Kind, EntryProblem> {
    let refused = match typeflag {
        b'0' | 0 => return Ok(Kind::File),
        b'5' => return Ok(Kind::Dir),
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'x' => "PAX extended header",
        b'g' => "PAX global header",
        b'L' => "GNU long name",
        b'K' => "GNU long link name",
        other => return Err(EntryProblem::UnknownType(other)),
    };
    Err(EntryProblem::Type(refused))
}

/// The name's components, each an ordinary file name. A directory may end
/// in one '/'; nothing else may be empty, '.' or '..'.
fn split_path(name: &[u8], kind: Kind) -> Result<Vec<&OsStr>, EntryProblem> {
    if name.is_empty() {
        return Err(EntryProblem::EmptyName);
    }
    if name.contains(&0) {
        return Err(EntryProblem::Nul);
    }
    if name[0] == b'/' {
        return Err(EntryProblem::Absolute);
    }
    let name = match name.strip_suffix(b"/") {
        Some(_) if kind == Kind::File => return Err(EntryProblem::TrailingSlash),
        Some(stripped) => stripped,
        None => name,
    };
    name.split(|&b| b == b'/')
        .map(|c| match c {
            b"" => Err(EntryProblem::EmptyComponent),
            b"." | b".." => Err(EntryProblem::DotComponent),
            c => Ok(OsStr::from_bytes(c)),
        })
        .collect()
}

/// The fields of a ustar header that extraction uses.
struct Header {
    /// `prefix/name`, or `name` when the prefix is empty; trailing NULs
    /// dropped but any NUL inside kept, so that it can be refused.
    name: Vec<u8>,
    typeflag: u8,
    size: u64,
}

/// Parses one 512-byte block: `None` for the all-zero block that ends an
/// archive, an error for a block that is not a valid POSIX ustar header.
fn parse_header(block: &[u8; BLOCK as usize]) -> Result<Option<Header>, HeaderProblem> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored = octal(&block[148..156], "chksum")?;
    // The checksum is the sum of all bytes with its own field read as spaces.
    let computed = block.iter().map(|&b| u64::from(b)).sum::<u64>()
        - block[148..156].iter().map(|&b| u64::from(b)).sum::<u64>()
        + 8 * u64::from(b' ');
    if stored != computed {
        return Err(HeaderProblem::Checksum { stored, computed });
    }
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(HeaderProblem::NotUstar);
    }
    let size = octal(&block[124..136], "size")?;
    let name = trim_nuls(&block[0..100]);
    let prefix = trim_nuls(&block[345..500]);
    let name = if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() };
    Ok(Some(Header { name, typeflag: block[156], size }))
}

fn trim_nuls(field: &[u8]) -> &[u8] {
    let end = field.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &field[..end]
}

/// A ustar numeric field: octal digits, optionally led by spaces and ended
/// by NULs or spaces. GNU's base-256 form and empty fields are refused.
fn octal(field: &[u8], name: &'static str) -> Result<u64, HeaderProblem> {
    let bad = HeaderProblem::BadNumber { field: name };
    let start = field.iter().position(|&b| b != b' ').ok_or(bad.clone())?;
    let field = &field[start..];
    let digits = field.iter().position(|&b| !(b'0'..=b'7').contains(&b)).unwrap_or(field.len());
    if digits == 0 || field[digits..].iter().any(|&b| b != 0 && b != b' ') {
        return Err(bad);
    }
    field[..digits]
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(8).and_then(|n| n.checked_add(u64::from(d - b'0'))).ok_or(bad.clone()))
}
