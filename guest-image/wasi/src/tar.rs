//! The two archives a job travels in, both plain ustar at offset 0 of a disk.
//!
//! The job disk (read-only) holds `job/module.cwasm` (the module compiled
//! ahead of time on the host), `job/args` and `job/env` (NUL-terminated
//! strings) and the input files `in/<name>`, whose data stays on the disk and
//! is read on demand. The output disk receives a
//! ustar archive of what the job wrote under /out, written at the job's end.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::fs::Node;
use crate::{BlockDevice, SECTOR};

const BLOCK: usize = 512;

/// An input file: where its bytes are on the job disk.
pub struct InputFile {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

pub struct Job {
    pub module: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub inputs: Vec<InputFile>,
}

pub enum TarError<E> {
    Disk(E),
    BadHeader(u64),
    Missing(&'static str),
}

impl<E: core::fmt::Debug> core::fmt::Debug for TarError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TarError::Disk(e) => write!(f, "disk error {e:?}"),
            TarError::BadHeader(offset) => write!(f, "bad archive header at byte {offset}"),
            TarError::Missing(name) => write!(f, "{name} is missing"),
        }
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    let mut digits = field.iter().skip_while(|b| **b == b' ').take_while(|b| (b'0'..=b'7').contains(b));
    digits.try_fold(0u64, |n, d| n.checked_mul(8)?.checked_add(u64::from(d - b'0')))
}

fn field_str(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())]
}

/// The most one disk request carries.
const REQUEST_MAX: usize = 1 << 20;

/// Reads `len` bytes at byte `offset` (sector-aligned) of `disk`.
fn read_at<D: BlockDevice>(disk: &mut D, offset: u64, len: usize) -> Result<Vec<u8>, TarError<D::Error>> {
    let mut data = vec![0u8; len.next_multiple_of(SECTOR)];
    for (i, chunk) in data.chunks_mut(REQUEST_MAX).enumerate() {
        let sector = (offset + (i * REQUEST_MAX) as u64) / SECTOR as u64;
        disk.read(sector, chunk).map_err(TarError::Disk)?;
    }
    data.truncate(len);
    Ok(data)
}

pub fn read_job<D: BlockDevice>(disk: &mut D) -> Result<Job, TarError<D::Error>> {
    let mut job = Job { module: Vec::new(), args: Vec::new(), env: Vec::new(), inputs: Vec::new() };
    let mut module = None;
    let end = disk.capacity_sectors() * SECTOR as u64;
    let mut offset = 0u64;
    while offset + BLOCK as u64 <= end {
        let header = read_at(disk, offset, BLOCK)?;
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let checksum: u64 =
            header.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
        let size = octal(&header[124..136]).ok_or(TarError::BadHeader(offset))?;
        if octal(&header[148..156]) != Some(checksum) || &header[257..262] != b"ustar" {
            return Err(TarError::BadHeader(offset));
        }
        let mut name = Vec::from(field_str(&header[345..500]));
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(field_str(&header[..100]));
        let data = offset + BLOCK as u64;
        // Checked before anything is allocated for it: a size past the disk
        // would otherwise ask the heap for up to 64 GiB.
        if size > end - data {
            return Err(TarError::BadHeader(offset));
        }
        match (&name[..], header[156]) {
            (b"job/module.cwasm", b'0' | 0) => module = Some(read_at(disk, data, size as usize)?),
            (b"job/args", b'0' | 0) => job.args = split_nul(read_at(disk, data, size as usize)?),
            (b"job/env", b'0' | 0) => job.env = split_nul(read_at(disk, data, size as usize)?),
            (path, b'0' | 0) if path.starts_with(b"in/") && path.len() > 3 => {
                let name = String::from_utf8_lossy(&path[3..]).into_owned();
                job.inputs.push(InputFile { name, offset: data, size });
            }
            _ => {}
        }
        offset = data + size.next_multiple_of(BLOCK as u64);
    }
    job.module = module.ok_or(TarError::Missing("job/module.cwasm"))?;
    Ok(job)
}

/// NUL-terminated strings; empty ones are kept (an empty argument is one).
fn split_nul(data: Vec<u8>) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return Vec::new();
    }
    let body = data.strip_suffix(&[0]).unwrap_or(&data);
    body.split(|b| *b == 0).map(Vec::from).collect()
}

/// Writes a ustar archive sequentially to a disk, a sector-aligned chunk at
/// a time.
pub struct TarWriter<'a, D> {
    disk: &'a mut D,
    pending: Vec<u8>,
    written: u64,
    capacity: u64,
}

const CHUNK: usize = 256 * 1024;

pub enum WriteError<E> {
    Disk(E),
    /// The archive would not fit on the output disk.
    Full,
    NameTooLong,
}

impl<E: core::fmt::Debug> core::fmt::Debug for WriteError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WriteError::Disk(e) => write!(f, "disk error {e:?}"),
            WriteError::Full => write!(f, "the output disk is full"),
            WriteError::NameTooLong => write!(f, "a path does not fit in a ustar header"),
        }
    }
}

impl<'a, D: BlockDevice> TarWriter<'a, D> {
    pub fn new(disk: &'a mut D) -> TarWriter<'a, D> {
        let capacity = disk.capacity_sectors() * SECTOR as u64;
        TarWriter { disk, pending: Vec::with_capacity(CHUNK), written: 0, capacity }
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), WriteError<D::Error>> {
        while !data.is_empty() {
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == CHUNK {
                self.drain()?;
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), WriteError<D::Error>> {
        let len = self.pending.len().next_multiple_of(SECTOR);
        self.pending.resize(len, 0);
        if self.written + len as u64 > self.capacity {
            return Err(WriteError::Full);
        }
        self.disk.write(self.written / SECTOR as u64, &self.pending).map_err(WriteError::Disk)?;
        self.written += len as u64;
        self.pending.clear();
        Ok(())
    }

    /// One entry: a directory (`data` None) or a regular file.
    pub fn entry(&mut self, path: &str, data: Option<&[u8]>) -> Result<(), WriteError<D::Error>> {
        let mut header = [0u8; BLOCK];
        let name = match data {
            Some(_) => String::from(path),
            None => alloc::format!("{path}/"),
        };
        let bytes = name.as_bytes();
        if bytes.len() <= 100 {
            header[..bytes.len()].copy_from_slice(bytes);
        } else {
            // ustar splits a long name at a '/' into prefix (155) and name (100).
            let split = bytes.iter().rposition(|b| *b == b'/').filter(|i| *i <= 155 && bytes.len() - i - 1 <= 100);
            let Some(at) = split.filter(|i| *i > 0) else { return Err(WriteError::NameTooLong) };
            header[345..345 + at].copy_from_slice(&bytes[..at]);
            header[..bytes.len() - at - 1].copy_from_slice(&bytes[at + 1..]);
        }
        let size = data.map_or(0, |d| d.len() as u64);
        let write_octal = |field: &mut [u8], value: u64| {
            let text = alloc::format!("{value:0width$o}", width = field.len() - 1);
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        write_octal(&mut header[100..108], if data.is_some() { 0o644 } else { 0o755 });
        write_octal(&mut header[108..116], 0);
        write_octal(&mut header[116..124], 0);
        write_octal(&mut header[124..136], size);
        write_octal(&mut header[136..148], 0);
        header[156] = if data.is_some() { b'0' } else { b'5' };
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let checksum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        let text = alloc::format!("{checksum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        self.push(&header)?;
        if let Some(data) = data {
            self.push(data)?;
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.push(&[0u8; BLOCK][..pad])?;
        }
        Ok(())
    }

    /// The end-of-archive marker, then everything still pending. No flush:
    /// the output disk is scratch space the host reads right after the VM
    /// ends, on the same machine, so durability would only cost an fsync
    /// (tens of milliseconds on a VM's disk).
    pub fn finish(mut self) -> Result<u64, WriteError<D::Error>> {
        self.push(&[0u8; 2 * BLOCK])?;
        self.drain()?;
        Ok(self.written)
    }
}

/// Writes the tree under /out to `disk` as an archive; returns its size.
pub fn write_outputs<D: BlockDevice>(out: &Node, disk: &mut D) -> Result<u64, WriteError<D::Error>> {
    let mut writer = TarWriter::new(disk);
    for (path, node) in out.walk() {
        match node {
            Node::Dir(_) => writer.entry(&path, None)?,
            Node::File(content) => writer.entry(&path, Some(content))?,
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests;
