//! Kernel images: the builtin tiny guest or a file, as an ELF vmlinux or a
//! bzImage. The image is inspected before guest RAM exists, so a kernel that
//! cannot fit is refused with the size it needs; loading itself is
//! linux-loader's.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, ByteValued, GuestAddress, GuestMemoryMmap, ReadVolatile, VolatileMemoryError, VolatileSlice};

use crate::layout::{HIMEM_START, MIB};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// The tiny guest embedded in the mvm binary.
    Builtin(&'static [u8]),
    Path(PathBuf),
}

impl KernelSource {
    pub fn describe(&self) -> String {
        match self {
            KernelSource::Builtin(_) => "builtin".to_string(),
            KernelSource::Path(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel {0}: no such file")]
    NotFound(PathBuf),
    #[error("kernel {path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {0}: is a directory, not a kernel image")]
    IsDirectory(PathBuf),
    #[error("kernel {0}: not an x86-64 ELF vmlinux or a bzImage")]
    UnknownFormat(String),
    #[error("kernel {kernel}: malformed {format}: {what}")]
    Malformed { kernel: String, format: &'static str, what: String },
    #[error("kernel {kernel}: loads at {start:#x}, below 1 MiB where the boot structures live")]
    BelowHimem { kernel: String, start: u64 },
    #[error("kernel {kernel}: needs guest memory up to {end:#x} ({need_mib} MiB) but the VM's RAM below 3 GiB ends at {ram_end:#x}: raise --memory-mib")]
    TooBig { kernel: String, end: u64, need_mib: u64, ram_end: u64 },
    #[error("kernel {kernel}: loading into guest memory failed")]
    Load {
        kernel: String,
        #[source]
        source: linux_loader::loader::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// What the image needs before it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpan {
    pub format: KernelFormat,
    pub start: u64,
    /// End of everything the kernel occupies, BSS (ELF) or decompression
    /// space (bzImage, `init_size`) included.
    pub end: u64,
}

/// A loaded kernel: where to enter it in 64-bit mode, and for a bzImage the
/// setup header that goes into the zero page.
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub setup_header: Option<setup_header>,
}

/// The image's bytes, read in place: a file streamed straight into guest
/// memory, the builtin image from the executable file that holds it when
/// that can be found (reading its copy in memory would add 1.3 MB to mvm's
/// resident set, for every VM), else from that copy.
enum Image {
    Builtin(Cursor<&'static [u8]>),
    /// `len` bytes of `file` from `start`, read at `pos`.
    Window {
        file: File,
        start: u64,
        len: u64,
        pos: u64,
    },
    File(File),
}

impl Image {
    fn builtin(bytes: &'static [u8]) -> Image {
        match file_backing(bytes) {
            Some((file, start)) => {
                tracing::debug!("builtin guest read from the executable at offset {start:#x}");
                Image::Window { file, start, len: bytes.len() as u64, pos: 0 }
            }
            None => Image::Builtin(Cursor::new(bytes)),
        }
    }
}

/// Where `bytes` lie in the executable mapped into this process: the file
/// and the offset, checked by device and inode against /proc/self/maps.
fn file_backing(bytes: &'static [u8]) -> Option<(File, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open("/proc/self/exe").ok()?;
    let meta = file.metadata().ok()?;
    let (addr, len) = (bytes.as_ptr() as u64, bytes.len() as u64);
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let offset = u64::from_str_radix(fields.nth(1)?, 16).ok()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let inode: u64 = fields.next()?.parse().ok()?;
            let dev = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
            let inside = start <= addr && addr.checked_add(len)? <= end;
            (inside && inode == meta.ino() && dev == meta.dev()).then(|| offset + (addr - start))
        })
        .map(|at| (file, at))
}

impl Read for Image {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Image::Builtin(c) => c.read(buf),
            Image::Window { file, start, len, pos } => {
                let n = (buf.len() as u64).min(len.saturating_sub(*pos)) as usize;
                let read = std::os::unix::fs::FileExt::read_at(file, &mut buf[..n], *start + *pos)?;
                *pos += read as u64;
                Ok(read)
            }
            Image::File(f) => f.read(buf),
        }
    }
}

impl Seek for Image {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            Image::Builtin(c) => c.seek(to),
            Image::Window { len, pos, .. } => {
                let new = match to {
                    SeekFrom::Start(n) => Some(n),
                    SeekFrom::End(d) => len.checked_add_signed(d),
                    SeekFrom::Current(d) => pos.checked_add_signed(d),
                };
                *pos = new.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                Ok(*pos)
            }
            Image::File(f) => f.seek(to),
        }
    }
}

impl ReadVolatile for Image {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        match self {
            Image::Builtin(c) => c.read_volatile(buf),
            Image::Window { file, start, len, pos } => {
                let n = (buf.len() as u64).min(len.saturating_sub(*pos)) as usize;
                file.seek(SeekFrom::Start(*start + *pos)).map_err(VolatileMemoryError::IOError)?;
                let read = file.read_volatile(&mut buf.subslice(0, n)?)?;
                *pos += read as u64;
                Ok(read)
            }
            Image::File(f) => f.read_volatile(buf),
        }
    }
}

pub struct Kernel {
    name: String,
    image: Image,
    pub span: KernelSpan,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: u32 = 0x5372_6448; // "HdrS"
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// More program headers than any kernel has; bounds what a hostile file costs.
const MAX_PHDRS: u16 = 256;
/// The 64-bit entry of a bzImage is 0x200 past its protected-mode start.
const BZIMAGE_ENTRY_64: u64 = 0x200;

impl Kernel {
    pub fn open(source: &KernelSource) -> Result<Kernel, LoaderError> {
        let name = source.describe();
        let mut image = match source {
            KernelSource::Builtin(bytes) => Image::builtin(bytes),
            KernelSource::Path(path) => Image::File(open_file(path)?),
        };
        let span = inspect(&name, &mut image)?;
        Ok(Kernel { name, image, span })
    }

    /// Refuses a kernel that does not fit in `low_ram_end` bytes of RAM.
    pub fn check_fits(&self, low_ram_end: u64) -> Result<(), LoaderError> {
        if self.span.start < HIMEM_START {
            return Err(LoaderError::BelowHimem { kernel: self.name.clone(), start: self.span.start });
        }
        if self.span.end > low_ram_end {
            return Err(LoaderError::TooBig {
                kernel: self.name.clone(),
                end: self.span.end,
                need_mib: self.span.end.div_ceil(MIB),
                ram_end: low_ram_end,
            });
        }
        Ok(())
    }

    pub fn load(mut self, mem: &GuestMemoryMmap) -> Result<LoadedKernel, LoaderError> {
        let himem = Some(GuestAddress(HIMEM_START));
        let loaded = match self.span.format {
            KernelFormat::Elf => Elf::load(mem, None, &mut self.image, himem),
            KernelFormat::BzImage => BzImage::load(mem, None, &mut self.image, himem),
        }
        .map_err(|source| LoaderError::Load { kernel: self.name.clone(), source })?;
        let entry = match self.span.format {
            KernelFormat::Elf => loaded.kernel_load,
            KernelFormat::BzImage => loaded.kernel_load.unchecked_add(BZIMAGE_ENTRY_64),
        };
        Ok(LoadedKernel { entry, setup_header: loaded.setup_header })
    }
}

fn open_file(path: &Path) -> Result<File, LoaderError> {
    let read_err = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => LoaderError::NotFound(path.into()),
        _ => LoaderError::Read { path: path.into(), source },
    };
    let file = File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(LoaderError::IsDirectory(path.into()));
    }
    Ok(file)
}

fn inspect(name: &str, image: &mut Image) -> Result<KernelSpan, LoaderError> {
    if read_at(name, image, 0)? == Some(*ELF_MAGIC) {
        return inspect_elf(name, image);
    }
    if read_at(name, image, BZIMAGE_MAGIC_OFFSET)?.map(u32::from_le_bytes) == Some(BZIMAGE_MAGIC) {
        return inspect_bzimage(name, image);
    }
    Err(LoaderError::UnknownFormat(name.to_string()))
}

/// Four bytes at `offset`, None past the end of the image.
fn read_at(name: &str, image: &mut Image, offset: u64) -> Result<Option<[u8; 4]>, LoaderError> {
    let mut bytes = [0u8; 4];
    let result = image.seek(SeekFrom::Start(offset)).and_then(|_| image.read_exact(&mut bytes));
    match result {
        Ok(()) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(source) => Err(LoaderError::Read { path: name.into(), source }),
    }
}

fn malformed(kernel: &str, format: &'static str, what: impl Into<String>) -> LoaderError {
    LoaderError::Malformed { kernel: kernel.to_string(), format, what: what.into() }
}

fn inspect_elf(name: &str, image: &mut Image) -> Result<KernelSpan, LoaderError> {
    let bad = |what: &str| malformed(name, "ELF", what);
    let mut ehdr = Elf64_Ehdr::default();
    image.rewind().map_err(|_| bad("cannot rewind"))?;
    image.read_exact(ehdr.as_mut_slice()).map_err(|_| bad("truncated ELF header"))?;
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    const EM_X86_64: u16 = 62;
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_ident[5] != ELFDATA2LSB || ehdr.e_machine != EM_X86_64 {
        return Err(LoaderError::UnknownFormat(name.to_string()));
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() {
        return Err(bad("program header size is not 56"));
    }
    if ehdr.e_phnum == 0 || ehdr.e_phnum > MAX_PHDRS {
        return Err(bad(&format!("{} program headers", ehdr.e_phnum)));
    }
    image.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(|_| bad("program headers out of the file"))?;
    let (mut start, mut end) = (u64::MAX, 0u64);
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        image.read_exact(phdr.as_mut_slice()).map_err(|_| bad("truncated program headers"))?;
        if phdr.p_type != PT_LOAD || phdr.p_memsz == 0 {
            continue;
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(bad("a segment's file size exceeds its memory size"));
        }
        let seg_end = phdr.p_paddr.checked_add(phdr.p_memsz).ok_or_else(|| bad("a segment wraps around"))?;
        start = start.min(phdr.p_paddr);
        end = end.max(seg_end);
    }
    if end == 0 {
        return Err(bad("no loadable segment"));
    }
    if !(start..end).contains(&ehdr.e_entry) {
        return Err(bad(&format!("entry {:#x} outside the loaded segments", ehdr.e_entry)));
    }
    Ok(KernelSpan { format: KernelFormat::Elf, start, end })
}

fn inspect_bzimage(name: &str, image: &mut Image) -> Result<KernelSpan, LoaderError> {
    let bad = |what: &str| malformed(name, "bzImage", what);
    let mut hdr = setup_header::default();
    image.seek(SeekFrom::Start(SETUP_HEADER_OFFSET)).map_err(|_| bad("cannot seek to the setup header"))?;
    image.read_exact(hdr.as_mut_slice()).map_err(|_| bad("truncated setup header"))?;
    let file_len = image.seek(SeekFrom::End(0)).map_err(|_| bad("cannot find the end"))?;
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let payload = file_len.checked_sub((setup_sects + 1) * 512).ok_or_else(|| bad("shorter than its setup sectors"))?;
    // Protocol 2.10 and later give the room the kernel needs to decompress.
    let init_size = u64::from(if hdr.version >= 0x020a { hdr.init_size } else { 0 });
    let start = u64::from(hdr.code32_start);
    let end = start.checked_add(payload.max(init_size)).ok_or_else(|| bad("size overflows"))?;
    Ok(KernelSpan { format: KernelFormat::BzImage, start, end })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 ELF with one PT_LOAD segment.
    pub(crate) fn elf_image(paddr: u64, filesz: u64, memsz: u64, entry: u64) -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(ELF_MAGIC);
        ehdr.e_ident[4] = 2;
        ehdr.e_ident[5] = 1;
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = 62;
        ehdr.e_version = 1;
        ehdr.e_entry = entry;
        ehdr.e_phoff = 64;
        ehdr.e_ehsize = 64;
        ehdr.e_phentsize = 56;
        ehdr.e_phnum = 1;
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_offset: 0x1000,
            p_paddr: paddr,
            p_vaddr: paddr,
            p_filesz: filesz,
            p_memsz: memsz,
            p_align: 0x1000,
            ..Default::default()
        };
        let mut out = ehdr.as_slice().to_vec();
        out.extend_from_slice(phdr.as_slice());
        out.resize(0x1000 + filesz as usize, 0x90);
        out
    }

    fn span_of(bytes: Vec<u8>) -> Result<KernelSpan, LoaderError> {
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        Kernel::open(&KernelSource::Builtin(leaked)).map(|k| k.span)
    }

    #[test]
    fn elf_span_includes_bss() {
        let span = span_of(elf_image(0x20_0000, 0x1000, 0x5000, 0x20_0000)).unwrap();
        assert_eq!(span, KernelSpan { format: KernelFormat::Elf, start: 0x20_0000, end: 0x20_5000 });
    }

    #[test]
    fn elf_with_entry_outside_segments_is_malformed() {
        let err = span_of(elf_image(0x20_0000, 0x1000, 0x1000, 0x10)).unwrap_err();
        assert!(err.to_string().contains("entry 0x10 outside"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let err = span_of(b"#!/bin/sh\necho not a kernel\n".to_vec()).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat(_)), "{err}");
        let err = span_of(Vec::new()).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat(_)), "{err}");
    }

    #[test]
    fn truncated_elf_is_malformed() {
        let mut image = elf_image(0x20_0000, 0x1000, 0x1000, 0x20_0000);
        image.truncate(80);
        let err = span_of(image).unwrap_err();
        assert!(err.to_string().contains("truncated program headers"), "{err}");
    }

    #[test]
    fn bzimage_span_uses_init_size() {
        let mut image = vec![0u8; 0x2000];
        image[0x1f1] = 1; // setup_sects: 2 sectors of header in all
        image[0x202..0x206].copy_from_slice(&BZIMAGE_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = 1; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes());
        let span = span_of(image).unwrap();
        assert_eq!(span, KernelSpan { format: KernelFormat::BzImage, start: 0x10_0000, end: 0x90_0000 });
    }

    #[test]
    fn fit_check_names_the_size_needed() {
        let kernel = Kernel::open(&KernelSource::Builtin(Box::leak(
            elf_image(0x20_0000, 0x1000, 0x30_0000, 0x20_0000).into_boxed_slice(),
        )))
        .unwrap();
        kernel.check_fits(0x50_0000).unwrap();
        let err = kernel.check_fits(4 * MIB).unwrap_err();
        assert!(err.to_string().contains("(5 MiB)"), "{err}");
        let low = Kernel::open(&KernelSource::Builtin(Box::leak(
            elf_image(0x1000, 0x1000, 0x1000, 0x1000).into_boxed_slice(),
        )))
        .unwrap();
        assert!(matches!(low.check_fits(64 * MIB), Err(LoaderError::BelowHimem { .. })));
    }

    const fn pattern() -> [u8; 8192] {
        let mut bytes = [0u8; 8192];
        let mut i = 0;
        while i < bytes.len() {
            bytes[i] = (i % 251) as u8;
            i += 1;
        }
        bytes
    }

    /// In the test executable's read-only data, like the builtin guest in mvm's.
    static FILE_BACKED: [u8; 8192] = pattern();

    #[test]
    fn builtin_bytes_are_read_from_the_executable_file() {
        let mut image = Image::builtin(&FILE_BACKED);
        assert!(matches!(image, Image::Window { .. }), "found in /proc/self/maps");
        let mut all = Vec::new();
        image.read_to_end(&mut all).unwrap();
        assert_eq!(all, FILE_BACKED);
        image.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = [0u8; 32];
        assert_eq!(image.read(&mut tail).unwrap(), 10);
        assert_eq!(tail[..10], FILE_BACKED[8182..]);
        image.seek(SeekFrom::Start(100)).unwrap();
        let mem = crate::memory::create(4 * MIB).unwrap();
        use vm_memory::{Bytes, GuestAddress};
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut image, 500).unwrap();
        let mut back = [0u8; 500];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, FILE_BACKED[100..600]);
        assert!(image.seek(SeekFrom::Current(-1000)).is_err());
    }

    #[test]
    fn bytes_not_in_a_file_are_read_from_memory() {
        let heap: &'static [u8] = Box::leak(vec![1u8; 100].into_boxed_slice());
        assert!(matches!(Image::builtin(heap), Image::Builtin(_)));
    }

    #[test]
    fn missing_file_and_directory_are_named() {
        let err = Kernel::open(&KernelSource::Path("/nonexistent/vmlinux".into())).err().unwrap();
        assert_eq!(err.to_string(), "kernel /nonexistent/vmlinux: no such file");
        let err = Kernel::open(&KernelSource::Path("/".into())).err().unwrap();
        assert!(matches!(err, LoaderError::IsDirectory(_)));
    }
}
