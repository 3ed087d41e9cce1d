//! The job disk: what the job runs, as a POSIX ustar archive written at
//! offset 0 of a raw disk image that the guest sees as a read-only
//! virtio-blk device. The guest parses ustar headers itself (name, mode,
//! size in octal, typeflag `0`, the `ustar\0` magic, prefix), so nothing here
//! writes GNU long names or PAX headers.
//!
//! It holds, in this order: `job/module.cwasm` (the module's code, compiled
//! on the host by [`compile`](super::compile)), `job/args` (argv, each
//! element followed by a NUL byte), `job/env` (`KEY=VALUE`, each followed by
//! a NUL byte) and `job/preopens` (the guest paths of the preopened
//! directories in fd order, from fd 3, each followed by a NUL byte). The
//! job's files are on the other disk (see [`image`](super::image)).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::compile::CompiledModule;

/// Disk images are padded to whole pages: virtio-blk only needs 512-byte
/// sectors, but a page multiple never splits a guest page-cache page.
pub const IMAGE_ALIGN: u64 = 4096;

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
    #[error("cache entry {}: it shrank while being staged; run the job again", .path.display())]
    CachedCodeChanged { path: PathBuf },
    #[error("{what} {value:?} contains a NUL byte, which separates entries in the input image")]
    ContainsNul { what: &'static str, value: String },
    #[error("an image of {size} bytes is too large")]
    ImageTooLarge { size: u64 },
}

/// Writes the job disk at `image` (created or truncated) and returns its
/// size in bytes, a multiple of [`IMAGE_ALIGN`].
///
/// `module` is staged as `job/module.cwasm`; a cached one is streamed from
/// its file. `argv` is the whole argument vector, argv[0] (the module's file
/// name, see [`JobSpec::argv`](super::JobSpec::argv)) first. `preopens` are
/// the preopened directories' guest paths in fd order (see
/// [`image::preopens`](super::image::preopens)).
pub fn write_input_image(
    image: &Path,
    module: CompiledModule,
    argv: &[String],
    env: &[(String, String)],
    preopens: &[String],
) -> Result<u64, ArchiveError> {
    let argv_bytes = nul_terminated("argument", argv.iter().map(String::as_str))?;
    let env_pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_bytes = nul_terminated("environment variable", env_pairs.iter().map(String::as_str))?;
    let preopen_bytes = nul_terminated("preopened directory", preopens.iter().map(String::as_str))?;

    let file = File::create(image).map_err(|source| write_err(image, source))?;
    let mut builder = tar::Builder::new(BufWriter::new(file));
    match module {
        CompiledModule::Fresh(code) => append_bytes(&mut builder, image, "job/module.cwasm", &code)?,
        CompiledModule::Cached(entry) => {
            let (path, file, len) = entry.into_parts();
            let header = ustar_header("job/module.cwasm", len, image)?;
            let mut reader = ExactReader { file, remaining: len, failure: None };
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
    append_bytes(&mut builder, image, "job/preopens", &preopen_bytes)?;

    let mut file = builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(|source| write_err(image, source))?;
    let len = file.stream_position().map_err(|source| write_err(image, source))?;
    let size = image_size(len)?;
    file.set_len(size).map_err(|source| write_err(image, source))?;
    Ok(size)
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

enum Failure {
    Shrank,
    Read(io::Error),
}

/// Yields exactly `remaining` bytes of `file`, because the tar header already
/// promised that many: a file that grew is cut at its staged size, one that
/// shrank is an error. `tar` reports any failure as one `io::Error`, so the
/// reader keeps its own to tell input failures from image write failures.
struct ExactReader {
    file: File,
    remaining: u64,
    failure: Option<Failure>,
}

impl Read for ExactReader {
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
        Ok(n)
    }
}
