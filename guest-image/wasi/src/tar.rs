//! The job disk: a plain ustar archive at offset 0 of a read-only disk
//! holding `job/module.cwasm` (the module as mvm compiled it on the host),
//! and `job/args`, `job/env` and `job/preopens` (NUL-terminated strings; the
//! preopens are the guest paths of the preopened directories, in fd order
//! from fd 3). The job's files are on the other disk (vfs.rs, fsimage.rs).

use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::{BlockDevice, SECTOR};

const BLOCK: usize = 512;

pub struct Job {
    /// Page-aligned: compiled code is run where it lies.
    pub module: PageAligned,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    /// Guest paths, in fd order from fd 3.
    pub preopens: Vec<String>,
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

const PAGE: usize = 4096;

/// Fills `buf` (a whole number of sectors) from byte `offset`
/// (sector-aligned) of `disk`.
fn read_into<D: BlockDevice>(disk: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), TarError<D::Error>> {
    for (i, chunk) in buf.chunks_mut(REQUEST_MAX).enumerate() {
        let sector = (offset + (i * REQUEST_MAX) as u64) / SECTOR as u64;
        disk.read(sector, chunk).map_err(TarError::Disk)?;
    }
    Ok(())
}

/// Reads `len` bytes at byte `offset` (sector-aligned) of `disk`.
fn read_at<D: BlockDevice>(disk: &mut D, offset: u64, len: usize) -> Result<Vec<u8>, TarError<D::Error>> {
    let mut data = vec![0u8; len.next_multiple_of(SECTOR)];
    read_into(disk, offset, &mut data)?;
    data.truncate(len);
    Ok(data)
}

/// Bytes on page boundaries, in whole pages from the heap.
pub struct PageAligned {
    ptr: NonNull<u8>,
    len: usize,
}

impl PageAligned {
    fn zeroed(len: usize) -> PageAligned {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is at least one page.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout));
        PageAligned { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let size = len.next_multiple_of(PAGE).max(PAGE);
        Layout::from_size_align(size, PAGE).expect("a buffer no larger than a disk")
    }

    /// All of the allocation, padding included.
    fn pages_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds `layout(len).size()` bytes, and
        // `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), Self::layout(self.len).size()) }
    }

    /// Keeps the bytes for the rest of the guest's life.
    pub fn leak(self) -> &'static [u8] {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: the allocation is never freed now, and nothing else
        // refers to it.
        unsafe { core::slice::from_raw_parts(this.ptr.as_ptr(), this.len) }
    }
}

impl core::ops::Deref for PageAligned {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes of the allocation are initialized (zeroed, then
        // read into) and live as long as `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageAligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

/// Reads `len` bytes at byte `offset` (sector-aligned) of `disk` into a
/// page-aligned buffer.
fn read_page_aligned<D: BlockDevice>(disk: &mut D, offset: u64, len: usize) -> Result<PageAligned, TarError<D::Error>> {
    let mut data = PageAligned::zeroed(len);
    let sectors = len.next_multiple_of(SECTOR);
    read_into(disk, offset, &mut data.pages_mut()[..sectors])?;
    Ok(data)
}

pub fn read_job<D: BlockDevice>(disk: &mut D) -> Result<Job, TarError<D::Error>> {
    let (mut args, mut env, mut preopens) = (Vec::new(), Vec::new(), Vec::new());
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
            (b"job/module.cwasm", b'0' | 0) => module = Some(read_page_aligned(disk, data, size as usize)?),
            (b"job/args", b'0' | 0) => args = split_nul(read_at(disk, data, size as usize)?),
            (b"job/env", b'0' | 0) => env = split_nul(read_at(disk, data, size as usize)?),
            (b"job/preopens", b'0' | 0) => {
                preopens = split_nul(read_at(disk, data, size as usize)?)
                    .into_iter()
                    .map(|p| String::from_utf8(p).map_err(|_| TarError::BadHeader(offset)))
                    .collect::<Result<_, _>>()?
            }
            _ => {}
        }
        offset = data + size.next_multiple_of(BLOCK as u64);
    }
    let module = module.ok_or(TarError::Missing("job/module.cwasm"))?;
    Ok(Job { module, args, env, preopens })
}

/// NUL-terminated strings; empty ones are kept (an empty argument is one).
fn split_nul(data: Vec<u8>) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return Vec::new();
    }
    let body = data.strip_suffix(&[0]).unwrap_or(&data);
    body.split(|b| *b == 0).map(Vec::from).collect()
}

#[cfg(test)]
mod tests;
