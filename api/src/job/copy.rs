//! Copying a byte range from one file to another, for the image builder
//! (host files into the image) and the read-back (image into host files):
//! in the kernel where it can (`copy_file_range`, which may share blocks),
//! else, across filesystems the kernel will not copy between or on an old
//! kernel, with reads and writes of at most [`CHUNK`] bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

/// The largest read or write when the kernel does not copy.
pub(crate) const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// copy_file_range failed: either side may be at fault.
    Kernel(io::Error),
    /// The source ended before the range did.
    Ended,
    /// The caller's `between` said to stop.
    Stopped,
}

/// Where a copy reads, where it writes, and how much.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub from: u64,
    pub at: u64,
    pub len: u64,
}

/// Copies `span.len` bytes of `src` from offset `span.from` to `dst` at
/// offset `span.at`, at most `step` bytes per call. `between` is called before each call with
/// the bytes copied since the last (0 at first); returning false stops the
/// copy. `kernel`: try copy_file_range first (false: reads and writes only,
/// which tests use to reach that path).
pub(crate) fn copy_range(
    src: &File,
    dst: &File,
    span: Span,
    step: usize,
    kernel: bool,
    between: &mut dyn FnMut(u64) -> bool,
) -> Result<(), CopyError> {
    let Span { from, at, len } = span;
    let (mut done, mut last) = (0u64, 0u64);
    let mut kernel = kernel;
    let mut buf = Vec::new();
    while done < len {
        if !between(last) {
            return Err(CopyError::Stopped);
        }
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(step);
        let n = if kernel {
            // The kernel advances its own copies of the offsets.
            let (mut i, mut o) = (from + done, at + done);
            match rustix::fs::copy_file_range(src, Some(&mut i), dst, Some(&mut o), want) {
                Ok(n) => n,
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    kernel = false;
                    last = 0;
                    continue;
                }
                Err(e) => return Err(CopyError::Kernel(e.into())),
            }
        } else {
            buf.resize(want.min(CHUNK), 0);
            let n = src.read_at(&mut buf, from + done).map_err(CopyError::Read)?;
            dst.write_all_at(&buf[..n], at + done).map_err(CopyError::Write)?;
            n
        };
        if n == 0 {
            return Err(CopyError::Ended);
        }
        done += n as u64;
        last = n as u64;
    }
    between(last);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_copy_exactly_the_range_in_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 253) as u8).collect();
        let src = tmp.path().join("src");
        std::fs::write(&src, &data).unwrap();
        let src = File::open(&src).unwrap();
        for kernel in [true, false] {
            let dst_path = tmp.path().join(format!("dst-{kernel}"));
            let dst = File::create(&dst_path).unwrap();
            let (from, at, len) = (5u64, 11u64, (2 * CHUNK + 3) as u64);
            let mut seen = Vec::new();
            copy_range(&src, &dst, Span { from, at, len }, CHUNK, kernel, &mut |n| {
                seen.push(n);
                true
            })
            .unwrap();
            let copied = std::fs::read(&dst_path).unwrap();
            assert_eq!(copied.len() as u64, at + len, "kernel: {kernel}");
            assert!(copied[..at as usize].iter().all(|&b| b == 0));
            assert!(copied[at as usize..] == data[from as usize..(from + len) as usize], "kernel: {kernel}");
            assert_eq!(seen.iter().sum::<u64>(), len, "every byte reported once");
            // Before each of 3 steps, and once at the end (the kernel may copy
            // less than asked, in more steps).
            assert!(seen.len() == 4 || kernel && seen.len() > 4, "{seen:?}");

            let mut calls = 0;
            let e = copy_range(&src, &dst, Span { from: 0, at: 0, len }, CHUNK, kernel, &mut |_| {
                calls += 1;
                calls < 2
            })
            .unwrap_err();
            assert!(matches!(e, CopyError::Stopped), "{e:?}");
            let span = Span { from: data.len() as u64 - 1, at: 0, len: 2 };
            let e = copy_range(&src, &dst, span, CHUNK, kernel, &mut |_| true).unwrap_err();
            assert!(matches!(e, CopyError::Ended), "a source shorter than the range: {e:?}");
        }
    }
}
