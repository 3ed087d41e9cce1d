//! The two disk images that carry a job across the VM boundary, and their
//! errors.
//!
//! Both are plain POSIX ustar archives written at offset 0 of a raw disk image
//! that the guest sees as a virtio-blk device. The guest parses ustar headers
//! itself (name, mode, size in octal, typeflag `0` or `5`, the `ustar\0`
//! magic, prefix), so nothing here writes GNU long names or PAX headers.
//!
//! The input image holds, in this order: `job/module.cwasm` (the module's
//! code, compiled on the host by [`compile`](super::compile)), `job/args`
//! (argv, each element followed by a NUL byte), `job/env` (`KEY=VALUE`, each
//! followed by a NUL byte), then `in/<file name>` for every input file. The
//! output image starts zero-filled; the guest writes a ustar archive of `/out`
//! into it and [`extract_outputs`](super::extract_outputs) reads it back.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use tracing::info;

use super::compile::CompiledModule;

/// Disk images are padded to whole pages: virtio-blk only needs 512-byte
/// sectors, but a page multiple never splits a guest page-cache page.
pub const IMAGE_ALIGN: u64 = 4096;

/// The longest input file name: `in/<name>` must fit a ustar header, and with
/// `in` as the 155-byte prefix the name field (100 bytes) holds the rest.
pub const MAX_INPUT_NAME: usize = 100;

/// Staging more input than this logs progress at info level.
const PROGRESS_THRESHOLD: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("input {}: not a regular file", .path.display())]
    InputNotFile { path: PathBuf },
    #[error("input {}: its file name is not UTF-8", .path.display())]
    InputNameNotUtf8 { path: PathBuf },
    #[error("input {}: file name {name:?} is longer than {MAX_INPUT_NAME} bytes, the most a ustar header holds; rename the file", .path.display())]
    InputNameTooLong { path: PathBuf, name: String },
    #[error("input {}: another input is also named {name:?}, and both would be /in/{name}", .path.display())]
    DuplicateInput { path: PathBuf, name: String },
    #[error("input {}: it changed size while being staged; stage it again", .path.display())]
    InputChanged { path: PathBuf },
    #[error("cache entry {}: it shrank while being staged; run the job again", .path.display())]
    CachedCodeChanged { path: PathBuf },
    #[error("{what} {value:?} contains a NUL byte, which separates entries in the input image")]
    ContainsNul { what: &'static str, value: String },
    #[error("an image of {size} bytes is too large")]
    ImageTooLarge { size: u64 },
    #[error("output image: bad tar header at byte {offset}: {problem}")]
    Header { offset: u64, problem: HeaderProblem },
    #[error("output entry {name:?} (header at byte {offset}): {problem}")]
    Entry { offset: u64, name: String, problem: EntryProblem },
    #[error("outputs exceed outputs_max_mib ({max_mib} MiB)")]
    OutputsTooLarge { max_mib: u64 },
}

/// Why a header in the output image cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("checksum mismatch (header says {stored}, bytes sum to {computed})")]
    Checksum { stored: u64, computed: u64 },
    #[error("no ustar magic; only POSIX ustar archives are accepted")]
    NotUstar,
    #[error("the {field} field is not an octal number")]
    BadNumber { field: &'static str },
    #[error("the image ends inside this header")]
    Truncated,
}

/// Why one entry of the output image is refused. Refusal stops extraction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("empty name")]
    EmptyName,
    #[error("NUL byte inside the name")]
    Nul,
    #[error("absolute path")]
    Absolute,
    #[error("'.' or '..' path component")]
    DotComponent,
    #[error("empty path component")]
    EmptyComponent,
    #[error("a regular file whose name ends in '/'")]
    TrailingSlash,
    #[error("{0} entries are not allowed, only regular files and directories")]
    Type(&'static str),
    #[error("unknown type flag {0:#04x}")]
    UnknownType(u8),
    #[error("a directory with {0} bytes of data")]
    DirectoryWithData(u64),
    #[error("declares {declared} bytes but the image holds only {available} after its header")]
    Truncated { declared: u64, available: u64 },
    #[error("its path goes through a symbolic link or a non-directory in the destination")]
    NotADirectory,
    #[error("a directory is in the way of this file in the destination")]
    DirectoryInTheWay,
}

/// Writes the input image at `image` (created or truncated) and returns its
/// size in bytes, a multiple of [`IMAGE_ALIGN`].
///
/// `module` is staged as `job/module.cwasm`; a cached one is streamed from
/// its file. `argv` is the whole argument vector, argv[0] (the module's file
/// name, see [`JobSpec::argv`](super::JobSpec::argv)) first. `inputs` are staged under
/// `in/` by file name; they are streamed, never held in memory, and each must
/// still have the size it had when its header was written.
pub fn write_input_image(
    image: &Path,
    module: CompiledModule,
    argv: &[String],
    env: &[(String, String)],
    inputs: &[PathBuf],
) -> Result<u64, ArchiveError> {
    let argv_bytes = nul_terminated("argument", argv.iter().map(String::as_str))?;
    let env_pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_bytes = nul_terminated("environment variable", env_pairs.iter().map(String::as_str))?;

    // Check and size every input before writing anything, so a missing or
    // misnamed input fails fast and the progress total is known.
    let mut staged: Vec<StagedInput> = Vec::with_capacity(inputs.len());
    for path in inputs {
        let input = StagedInput::check(path)?;
        if staged.iter().any(|s| s.name == input.name) {
            return Err(ArchiveError::DuplicateInput { path: input.path, name: input.name });
        }
        staged.push(input);
    }
    let total: u64 = staged.iter().map(|s| s.size).sum();

    let file = File::create(image).map_err(|source| write_err(image, source))?;
    let mut builder = tar::Builder::new(BufWriter::new(file));
    match module {
        CompiledModule::Fresh(code) => append_bytes(&mut builder, image, "job/module.cwasm", &code)?,
        CompiledModule::Cached(entry) => {
            let (path, file, len) = entry.into_parts();
            let header = ustar_header("job/module.cwasm", len, image)?;
            // Already verified against its checksum, so no progress to report.
            let mut quiet = Progress::new(0);
            let mut reader = ExactReader { file, remaining: len, progress: &mut quiet, failure: None };
            if let Err(source) = builder.append(&header, &mut reader) {
                return Err(match reader.failure {
                    Some(Failure::Shrank) => ArchiveError::CachedCodeChanged { path },
                    Some(Failure::Read(source)) => ArchiveError::Read { path, source },
                    None => write_err(image, source),
                });
            }
        }
    }
    append_bytes(&mut builder, image, "job/args", &argv_bytes)?;
    append_bytes(&mut builder, image, "job/env", &env_bytes)?;

    let mut progress = Progress::new(total);
    for input in staged {
        let header = ustar_header(&format!("in/{}", input.name), input.size, image)?;
        let file = File::open(&input.path).map_err(|source| ArchiveError::Read { path: input.path.clone(), source })?;
        let mut reader = ExactReader { file, remaining: input.size, progress: &mut progress, failure: None };
        if let Err(source) = builder.append(&header, &mut reader) {
            return Err(match reader.failure {
                Some(Failure::Shrank) => ArchiveError::InputChanged { path: input.path },
                Some(Failure::Read(source)) => ArchiveError::Read { path: input.path, source },
                None => write_err(image, source),
            });
        }
    }

    let mut file = builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(|source| write_err(image, source))?;
    let len = file.stream_position().map_err(|source| write_err(image, source))?;
    let size = image_size(len)?;
    file.set_len(size).map_err(|source| write_err(image, source))?;
    Ok(size)
}

/// Creates the output image at `image` (created or truncated): `size` zero
/// bytes rounded up to [`IMAGE_ALIGN`], as a sparse file. The caller sizes it
/// for the outputs cap plus room for tar headers.
pub fn create_output_image(image: &Path, size: u64) -> Result<(), ArchiveError> {
    let size = image_size(size)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .map_err(|source| write_err(image, source))?;
    file.set_len(size).map_err(|source| write_err(image, source))
}

/// `len` rounded up to [`IMAGE_ALIGN`], and never less than one page.
fn image_size(len: u64) -> Result<u64, ArchiveError> {
    len.max(1).checked_next_multiple_of(IMAGE_ALIGN).ok_or(ArchiveError::ImageTooLarge { size: len })
}

fn write_err(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Write { path: path.to_owned(), source }
}

/// Each item followed by a NUL byte; an item with a NUL inside would split in
/// two in the guest, so it is refused.
fn nul_terminated<'a>(what: &'static str, items: impl Iterator<Item = &'a str>) -> Result<Vec<u8>, ArchiveError> {
    let mut out = Vec::new();
    for item in items {
        if item.contains('\0') {
            return Err(ArchiveError::ContainsNul { what, value: item.to_owned() });
        }
        out.extend_from_slice(item.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// A plain ustar header for a read-only regular file: mode 0444, owner 0:0,
/// mtime 0, so the image depends only on the job's contents.
fn ustar_header(name: &str, size: u64, image: &Path) -> Result<Header, ArchiveError> {
    let mut header = Header::new_ustar();
    header.set_path(name).map_err(|source| write_err(image, source))?;
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o444);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

fn append_bytes(
    builder: &mut tar::Builder<BufWriter<File>>,
    image: &Path,
    name: &str,
    data: &[u8],
) -> Result<(), ArchiveError> {
    let header = ustar_header(name, data.len() as u64, image)?;
    builder.append(&header, data).map_err(|source| write_err(image, source))
}

/// An input file checked and measured, waiting for its turn in the archive.
/// It is opened only then, so that staging many inputs holds one descriptor.
struct StagedInput {
    path: PathBuf,
    name: String,
    size: u64,
}

impl StagedInput {
    fn check(path: &Path) -> Result<StagedInput, ArchiveError> {
        let name = path
            .file_name()
            .ok_or_else(|| ArchiveError::InputNotFile { path: path.to_owned() })?
            .to_str()
            .ok_or_else(|| ArchiveError::InputNameNotUtf8 { path: path.to_owned() })?
            .to_owned();
        if name.len() > MAX_INPUT_NAME {
            return Err(ArchiveError::InputNameTooLong { path: path.to_owned(), name });
        }
        let meta = std::fs::metadata(path).map_err(|source| ArchiveError::Read { path: path.to_owned(), source })?;
        if !meta.is_file() {
            return Err(ArchiveError::InputNotFile { path: path.to_owned() });
        }
        Ok(StagedInput { path: path.to_owned(), name, size: meta.len() })
    }
}

enum Failure {
    Shrank,
    Read(io::Error),
}

/// Yields exactly `remaining` bytes of `file`, because the tar header already
/// promised that many: a file that grew is cut at its staged size, one that
/// shrank is an error. `tar` reports any failure as one `io::Error`, so the
/// reader keeps its own to tell input failures from image write failures.
struct ExactReader<'a> {
    file: File,
    remaining: u64,
    progress: &'a mut Progress,
    failure: Option<Failure>,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.file.read(&mut buf[..want]) {
            Ok(0) if want > 0 => {
                self.failure = Some(Failure::Shrank);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(Failure::Read(e));
                return Err(kind.into());
            }
        };
        self.remaining -= n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Logs staging progress every tenth of the total, for inputs big enough
/// that staging takes a noticeable time.
struct Progress {
    total: u64,
    done: u64,
    next_tenth: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { total, done: 0, next_tenth: 1 }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.total <= PROGRESS_THRESHOLD {
            return;
        }
        let tenths = self.done.saturating_mul(10) / self.total;
        if tenths >= self.next_tenth {
            self.next_tenth = tenths + 1;
            info!(
                staged_mib = self.done / MIB,
                total_mib = self.total / MIB,
                percent = tenths * 10,
                "staging job inputs"
            );
        }
    }
}
