//! Every WASI function as a module calls it: arguments laid out in a linear
//! memory of one 64 KiB page, hostile pointers and lengths included, and the
//! platform's devices replaced by the test ones in testing.rs.

use std::string::String;
use std::vec::Vec;

use super::*;
use crate::fsimage::ROOT;
use crate::testing::{Counter, FakeClock, ImageBuilder, Recorder, Script, Test};
use crate::vfs::Fs;

const MEM: usize = 0x1_0000;
const END: u32 = MEM as u32;
const WALL_AT_ZERO: u64 = 1_700_000_000_000_000_000;
const START_NS: u64 = 5_000;
const A_TXT: &[u8] = b"alpha\n";
const B_LEN: usize = 10_000;

/// Scratch addresses in linear memory.
const RESULT: u32 = 0x80;
const PATH: u32 = 0x100;
const IOVS: u32 = 0x800;
const DATA: u32 = 0x1000;

fn b_bin() -> Vec<u8> {
    (0..B_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

struct T {
    w: Wasi<Test>,
    mem: Vec<u8>,
}

/// A job as the host sets one up: /in (read-only: a.txt, b.bin, sub/c,
/// and a symlink to a.txt), /out (writable, empty), the root read-only;
/// preopens /in, /out and / as fds 3, 4 and 5.
fn job() -> T {
    let mut image = ImageBuilder::new();
    let input = image.mount("/in", true);
    image.file(input, "a.txt", A_TXT);
    image.file(input, "b.bin", &b_bin());
    let sub = image.dir(input, "sub");
    image.file(sub, "c", b"see");
    image.symlink(input, "link", "a.txt");
    image.mount("/out", false);
    let fs = Fs::load(image.build(256), 1 << 20).unwrap();
    let devices = Devices {
        stdin: Script { data: b"line one\nline two\n".to_vec(), chunk: 5, waits: 0 },
        stdout: Recorder::default(),
        stderr: Recorder::default(),
        clock: FakeClock { monotonic: START_NS, wall_at_zero: WALL_AT_ZERO, sleeps: Vec::new() },
        entropy: Counter(0),
    };
    let args = vec![b"wc".to_vec(), Vec::new(), b"-l".to_vec()];
    let preopens = ["/in".to_string(), "/out".to_string(), "/".to_string()];
    let env = vec![b"A=1".to_vec(), b"PATH=/x".to_vec()];
    T { w: Wasi::new(args, env, fs, &preopens, devices).unwrap(), mem: vec![0; MEM] }
}

fn u32_at(mem: &[u8], at: u32) -> u32 {
    u32::from_le_bytes(mem[at as usize..at as usize + 4].try_into().unwrap())
}

fn u64_at(mem: &[u8], at: u32) -> u64 {
    u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap())
}

fn set(mem: &mut [u8], at: u32, data: &[u8]) {
    mem[at as usize..at as usize + data.len()].copy_from_slice(data);
}

fn set_iovs(mem: &mut [u8], at: u32, iovs: &[(u32, u32)]) {
    for (i, (ptr, len)) in iovs.iter().enumerate() {
        set(mem, at + 8 * i as u32, &ptr.to_le_bytes());
        set(mem, at + 8 * i as u32 + 4, &len.to_le_bytes());
    }
}

impl T {
    fn path(&mut self, path: &str) -> (u32, u32) {
        set(&mut self.mem, PATH, path.as_bytes());
        (PATH, path.len() as u32)
    }

    /// Opens asking for every right, following symlinks.
    fn open(&mut self, dirfd: i32, path: &str, oflags: i32, fdflags: i32) -> Result<i32, Errno> {
        let all = rights::INHERITING as i64;
        self.open_with(dirfd, 1, path, oflags, all, all, fdflags)
    }

    #[allow(clippy::too_many_arguments)]
    fn open_with(
        &mut self,
        dirfd: i32,
        dirflags: i32,
        path: &str,
        oflags: i32,
        base: i64,
        inheriting: i64,
        fdflags: i32,
    ) -> Result<i32, Errno> {
        let p = self.path(path);
        set(&mut self.mem, RESULT, &[0xaa; 4]);
        let result =
            path_open(&mut self.mem, &mut self.w, dirfd, dirflags, p, oflags, base, inheriting, fdflags, RESULT);
        if result.is_err() {
            assert_eq!(u32_at(&self.mem, RESULT), 0xaaaa_aaaa, "no fd written on failure");
        }
        result.map(|()| u32_at(&self.mem, RESULT) as i32)
    }

    /// Opens for reading and writing.
    fn open_rw(&mut self, dirfd: i32, path: &str, oflags: i32) -> Result<i32, Errno> {
        self.open(dirfd, path, oflags, 0)
    }

    /// Opens for reading only (the rights wasi-libc asks for O_RDONLY).
    fn open_ro(&mut self, dirfd: i32, path: &str) -> Result<i32, Errno> {
        let base = (rights::FILE & !rights::FILE_CHANGE) as i64;
        self.open_with(dirfd, 1, path, 0, base, base, 0)
    }

    /// Writes `chunks`, one iovec each; returns what fd_write reported.
    fn write(&mut self, fd: i32, chunks: &[&[u8]]) -> Result<u32, Errno> {
        let mut iovs = Vec::new();
        let mut at = DATA;
        for chunk in chunks {
            set(&mut self.mem, at, chunk);
            iovs.push((at, chunk.len() as u32));
            at += chunk.len() as u32 + 16;
        }
        set_iovs(&mut self.mem, IOVS, &iovs);
        fd_write(&mut self.mem, &mut self.w, fd, IOVS, iovs.len() as u32, RESULT)?;
        Ok(u32_at(&self.mem, RESULT))
    }

    /// Reads into buffers of `lens` bytes, filled with 0xaa first; returns
    /// the count fd_read reported and each buffer whole.
    fn read(&mut self, fd: i32, lens: &[u32]) -> Result<(u32, Vec<Vec<u8>>), Errno> {
        let iovs: Vec<(u32, u32)> = lens.iter().enumerate().map(|(i, len)| (DATA + 0x1000 * i as u32, *len)).collect();
        for (ptr, len) in &iovs {
            self.mem[*ptr as usize..(*ptr + *len) as usize].fill(0xaa);
        }
        set_iovs(&mut self.mem, IOVS, &iovs);
        fd_read(&mut self.mem, &mut self.w, fd, IOVS, iovs.len() as u32, RESULT)?;
        let buffers = iovs.iter().map(|(ptr, len)| self.mem[*ptr as usize..(*ptr + *len) as usize].to_vec()).collect();
        Ok((u32_at(&self.mem, RESULT), buffers))
    }

    fn read_all(&mut self, fd: i32) -> Vec<u8> {
        let (n, buffers) = self.read(fd, &[0x1000]).unwrap();
        buffers[0][..n as usize].to_vec()
    }

    fn seek(&mut self, fd: i32, offset: i64, whence: i32) -> Result<u64, Errno> {
        fd_seek(&mut self.mem, &mut self.w, fd, offset, whence, RESULT)?;
        Ok(u64_at(&self.mem, RESULT))
    }

    fn tell(&mut self, fd: i32) -> u64 {
        fd_tell(&mut self.mem, &mut self.w, fd, RESULT).unwrap();
        u64_at(&self.mem, RESULT)
    }

    fn filestat(&mut self, fd: i32) -> Result<[u8; 64], Errno> {
        fd_filestat_get(&mut self.mem, &mut self.w, fd, RESULT)?;
        Ok(self.mem[RESULT as usize..RESULT as usize + 64].try_into().unwrap())
    }

    fn path_stat(&mut self, dirfd: i32, path: &str) -> Result<[u8; 64], Errno> {
        self.path_stat_with(dirfd, 1, path)
    }

    fn path_stat_with(&mut self, dirfd: i32, flags: i32, path: &str) -> Result<[u8; 64], Errno> {
        let p = self.path(path);
        path_filestat_get(&mut self.mem, &mut self.w, dirfd, flags, p, RESULT)?;
        Ok(self.mem[RESULT as usize..RESULT as usize + 64].try_into().unwrap())
    }

    fn mkdir(&mut self, dirfd: i32, path: &str) -> Result<(), Errno> {
        let p = self.path(path);
        path_create_directory(&mut self.mem, &mut self.w, dirfd, p)
    }

    fn unlink(&mut self, dirfd: i32, path: &str) -> Result<(), Errno> {
        let p = self.path(path);
        path_unlink_file(&mut self.mem, &mut self.w, dirfd, p)
    }

    fn rmdir(&mut self, dirfd: i32, path: &str) -> Result<(), Errno> {
        let p = self.path(path);
        path_remove_directory(&mut self.mem, &mut self.w, dirfd, p)
    }

    /// The entries fd_readdir returns from `cookie` in a buffer of `len`
    /// bytes, and the bytes used.
    fn readdir(&mut self, fd: i32, len: u32, cookie: i64) -> Result<(Vec<Dirent>, u32), Errno> {
        fd_readdir(&mut self.mem, &mut self.w, fd, DATA, len, cookie, RESULT)?;
        let used = u32_at(&self.mem, RESULT);
        let buf = &self.mem[DATA as usize..(DATA + used) as usize];
        let mut entries = Vec::new();
        let mut at = 0;
        while at + 24 <= buf.len() {
            let name_len = u32::from_le_bytes(buf[at + 16..at + 20].try_into().unwrap()) as usize;
            let name = buf.get(at + 24..at + 24 + name_len).unwrap_or(&buf[at + 24..]);
            entries.push((
                u64::from_le_bytes(buf[at..at + 8].try_into().unwrap()),
                u64::from_le_bytes(buf[at + 8..at + 16].try_into().unwrap()),
                String::from_utf8(name.to_vec()).unwrap(),
                buf[at + 20],
            ));
            at += 24 + name_len;
        }
        Ok((entries, used))
    }

    /// A file's content as the filesystem holds it, by path from the root.
    fn content(&mut self, path: &str) -> Option<Vec<u8>> {
        let ino = self.w.fs.resolve(ROOT, path.as_bytes(), false).ok()?;
        let mut buf = vec![0u8; self.w.fs.node(ino).size as usize];
        let n = self.w.fs.read(ino, 0, &mut buf, 0).ok()?;
        Some(buf[..n].to_vec())
    }

    /// Two paths, the second after the first, for the two-path functions.
    fn paths(&mut self, a: &str, b: &str) -> ((u32, u32), (u32, u32)) {
        let second = PATH + 0x200;
        set(&mut self.mem, PATH, a.as_bytes());
        set(&mut self.mem, second, b.as_bytes());
        ((PATH, a.len() as u32), (second, b.len() as u32))
    }

    fn rename(&mut self, fd: i32, from: &str, to_fd: i32, to: &str) -> Result<(), Errno> {
        let (a, b) = self.paths(from, to);
        path_rename(&mut self.mem, &mut self.w, fd, a, to_fd, b)
    }

    fn link(&mut self, fd: i32, flags: i32, from: &str, to_fd: i32, to: &str) -> Result<(), Errno> {
        let (a, b) = self.paths(from, to);
        path_link(&mut self.mem, &mut self.w, fd, flags, a, to_fd, b)
    }

    fn symlink(&mut self, target: &str, fd: i32, path: &str) -> Result<(), Errno> {
        let (a, b) = self.paths(target, path);
        path_symlink(&mut self.mem, &mut self.w, a, fd, b)
    }

    fn readlink(&mut self, fd: i32, path: &str, len: u32) -> Result<Vec<u8>, Errno> {
        let p = self.path(path);
        path_readlink(&mut self.mem, &mut self.w, fd, p, DATA, len, RESULT)?;
        let n = u32_at(&self.mem, RESULT);
        Ok(self.mem[DATA as usize..(DATA + n) as usize].to_vec())
    }

    fn fdstat(&mut self, fd: i32) -> Result<(u8, u16, u64, u64), Errno> {
        fd_fdstat_get(&mut self.mem, &mut self.w, fd, RESULT)?;
        let m = &self.mem;
        Ok((
            m[RESULT as usize],
            u16::from_le_bytes([m[RESULT as usize + 2], m[RESULT as usize + 3]]),
            u64_at(m, RESULT + 8),
            u64_at(m, RESULT + 16),
        ))
    }
}

/// (next cookie, inode, name, type)
type Dirent = (u64, u64, String, u8);

const IN: i32 = 3;
const OUT: i32 = 4;
const SLASH: i32 = 5;

#[test]
fn memory_ranges_are_checked_at_and_past_the_end() {
    let mem = [0u8; 16];
    assert_eq!(range(&mem, 0, 16), Ok(0..16));
    assert_eq!(range(&mem, 16, 0), Ok(16..16));
    assert_eq!(range(&mem, 15, 1), Ok(15..16));
    assert_eq!(range(&mem, 15, 2), Err(errno::FAULT));
    assert_eq!(range(&mem, 17, 0), Err(errno::FAULT));
    assert_eq!(range(&mem, u32::MAX, u32::MAX), Err(errno::FAULT));
    assert_eq!(range(&mem, 1, u32::MAX), Err(errno::FAULT));
    assert_eq!(offset(u32::MAX - 4, 4), Ok(u32::MAX));
    assert_eq!(offset(u32::MAX - 4, 5), Err(errno::FAULT));
}

#[test]
fn args_and_environment_are_laid_out_with_their_sizes() {
    let mut t = job();
    args_sizes_get(&mut t.mem, &mut t.w, 0, 4).unwrap();
    assert_eq!((u32_at(&t.mem, 0), u32_at(&t.mem, 4)), (3, 3 + 1 + 3));
    t.mem[0x200..0x220].fill(0xaa);
    args_get(&mut t.mem, &mut t.w, 0x100, 0x200).unwrap();
    assert_eq!([u32_at(&t.mem, 0x100), u32_at(&t.mem, 0x104), u32_at(&t.mem, 0x108)], [0x200, 0x203, 0x204]);
    assert_eq!(&t.mem[0x200..0x208], b"wc\0\0-l\0\xaa");
    assert_eq!(u32_at(&t.mem, 0x10c), 0, "no pointer past the last");

    environ_sizes_get(&mut t.mem, &mut t.w, 8, 12).unwrap();
    assert_eq!((u32_at(&t.mem, 8), u32_at(&t.mem, 12)), (2, 4 + 8));
    environ_get(&mut t.mem, &mut t.w, 0x300, 0x400).unwrap();
    assert_eq!([u32_at(&t.mem, 0x300), u32_at(&t.mem, 0x304)], [0x400, 0x404]);
    assert_eq!(&t.mem[0x400..0x40c], b"A=1\0PATH=/x\0");
}

#[test]
fn args_that_just_fit_at_the_end_of_memory_are_written_and_one_byte_less_is_efault() {
    let mut t = job();
    assert_eq!(args_get(&mut t.mem, &mut t.w, 0x100, END - 7), Ok(()));
    assert_eq!(&t.mem[MEM - 7..], b"wc\0\0-l\0");
    assert_eq!(args_get(&mut t.mem, &mut t.w, END - 12, 0x200), Ok(()));
    assert_eq!(u32_at(&t.mem, END - 4), 0x204);
    for (argv, buf) in [(END - 11, 0), (0x100, END - 6), (END, 0), (0x100, END), (u32::MAX, 0), (0, u32::MAX)] {
        assert_eq!(args_get(&mut t.mem, &mut t.w, argv, buf), Err(errno::FAULT), "{argv:#x} {buf:#x}");
    }
    assert_eq!(args_sizes_get(&mut t.mem, &mut t.w, END - 4, END - 8), Ok(()));
    assert_eq!(args_sizes_get(&mut t.mem, &mut t.w, END - 3, 0), Err(errno::FAULT));
    assert_eq!(args_sizes_get(&mut t.mem, &mut t.w, 0, END - 3), Err(errno::FAULT));
    assert_eq!(environ_sizes_get(&mut t.mem, &mut t.w, 0, END - 3), Err(errno::FAULT));
    assert_eq!(environ_get(&mut t.mem, &mut t.w, 0x100, END - 11), Err(errno::FAULT));
}

#[test]
fn pointers_that_would_wrap_past_4_gib_are_efault_not_the_start_of_memory() {
    // A whole 4 GiB memory (zero pages the host never touches): the only
    // size where 32-bit pointer arithmetic could wrap onto valid bytes.
    let mut t = job();
    t.mem = vec![0; 1 << 32];
    let top = u32::MAX;
    assert_eq!(args_get(&mut t.mem, &mut t.w, top - 3, 0x100), Err(errno::FAULT));
    assert_eq!(u32_at(&t.mem, 0), 0, "the second pointer did not land at address 0");
    // The last string's NUL in the last byte: fits; one byte later wraps.
    assert_eq!(environ_get(&mut t.mem, &mut t.w, 0x100, top - 11), Ok(()));
    assert_eq!(t.mem[top as usize], 0);
    assert_eq!(&t.mem[top as usize - 11..top as usize], b"A=1\0PATH=/x");
    t.mem[0] = 0xaa;
    assert_eq!(environ_get(&mut t.mem, &mut t.w, 0x100, top - 10), Err(errno::FAULT));
    assert_eq!(t.mem[0], 0xaa);
    // An event that would start at 4 GiB.
    let mut sub = [0u8; 48];
    sub[8] = 1;
    for i in 0..2u32 {
        set(&mut t.mem, 0x400 + 48 * i, &sub);
    }
    t.mem[..32].fill(0xaa);
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, 0x400, top - 31, 1, RESULT), Ok(()));
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, 0x400, top - 31, 2, RESULT), Err(errno::FAULT));
    assert_eq!(t.mem[..32], [0xaa; 32]);
}

#[test]
fn clocks_read_the_platform_and_unknown_ids_are_einval() {
    let mut t = job();
    t.w.devices.clock.monotonic = 123_456;
    clock_time_get(&mut t.mem, &mut t.w, 0, 0, 0x10).unwrap();
    assert_eq!(u64_at(&t.mem, 0x10), WALL_AT_ZERO + 123_456);
    for id in 1..=3 {
        t.mem[0x10..0x18].fill(0);
        clock_time_get(&mut t.mem, &mut t.w, id, 1, 0x10).unwrap();
        assert_eq!(u64_at(&t.mem, 0x10), 123_456, "clock {id}");
        t.mem[0x20..0x28].fill(0xaa);
        clock_res_get(&mut t.mem, &mut t.w, id, 0x20).unwrap();
        assert_eq!(u64_at(&t.mem, 0x20), 1);
    }
    clock_res_get(&mut t.mem, &mut t.w, 0, 0x20).unwrap();
    for id in [4, -1, i32::MAX] {
        t.mem[0x10..0x18].fill(0xaa);
        assert_eq!(clock_time_get(&mut t.mem, &mut t.w, id, 0, 0x10), Err(errno::INVAL));
        assert_eq!(clock_res_get(&mut t.mem, &mut t.w, id, 0x10), Err(errno::INVAL));
        assert_eq!(u64_at(&t.mem, 0x10), u64::from_le_bytes([0xaa; 8]));
    }
    assert_eq!(clock_time_get(&mut t.mem, &mut t.w, 1, 0, END - 7), Err(errno::FAULT));
    assert_eq!(clock_res_get(&mut t.mem, &mut t.w, 1, END - 7), Err(errno::FAULT));
    assert_eq!(clock_time_get(&mut t.mem, &mut t.w, 1, 0, END - 8), Ok(()));
}

#[test]
fn random_get_fills_exactly_the_range_it_is_given() {
    let mut t = job();
    random_get(&mut t.mem, &mut t.w, 0x10, 5).unwrap();
    assert_eq!(&t.mem[0x0f..0x16], [0, 1, 2, 3, 4, 5, 0]);
    random_get(&mut t.mem, &mut t.w, END - 2, 2).unwrap();
    assert_eq!(&t.mem[MEM - 3..], [0, 6, 7]);
    assert_eq!(random_get(&mut t.mem, &mut t.w, END, 0), Ok(()));
    assert_eq!(random_get(&mut t.mem, &mut t.w, END - 2, 3), Err(errno::FAULT));
    assert_eq!(random_get(&mut t.mem, &mut t.w, 1, u32::MAX), Err(errno::FAULT));
    assert_eq!(t.w.devices.entropy.0, 7, "no entropy used on a refused call");
}

#[test]
fn stdout_and_stderr_get_every_iovec_in_order() {
    let mut t = job();
    assert_eq!(t.write(1, &[b"hello", b"", b" world\n"]), Ok(12));
    assert_eq!(t.write(2, &[b"oops\n"]), Ok(5));
    assert_eq!(t.write(1, &[]), Ok(0));
    assert_eq!(t.w.devices.stdout.data, b"hello world\n");
    assert_eq!(t.w.devices.stderr.data, b"oops\n");
    t.w.flush_outputs();
    assert_eq!((t.w.devices.stdout.flushes, t.w.devices.stderr.flushes), (1, 1));
}

#[test]
fn hostile_iovec_arrays_are_efault() {
    let mut t = job();
    // The table itself past the end, at the end, or its size overflowing.
    for (table, count) in [(END - 7, 1), (END, 1), (END - 8, 2), (0, u32::MAX / 8 + 1), (0, u32::MAX), (u32::MAX, 1)] {
        assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, table, count, RESULT), Err(errno::FAULT), "{table:#x} x{count}");
        assert_eq!(fd_read(&mut t.mem, &mut t.w, 0, table, count, RESULT), Err(errno::FAULT), "{table:#x} x{count}");
    }
    set_iovs(&mut t.mem, END - 8, &[(0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, END - 8, 1, RESULT), Ok(()));
    // A buffer past the end, or wrapping around.
    for iov in [(END - 1, 2), (END, 1), (u32::MAX, 1), (1, u32::MAX), (u32::MAX, u32::MAX)] {
        set_iovs(&mut t.mem, IOVS, &[iov]);
        assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, IOVS, 1, RESULT), Err(errno::FAULT), "{iov:x?}");
        let fd = t.open_ro(IN, "a.txt").unwrap();
        set_iovs(&mut t.mem, IOVS, &[iov]);
        assert_eq!(fd_read(&mut t.mem, &mut t.w, fd, IOVS, 1, RESULT), Err(errno::FAULT), "{iov:x?}");
        fd_close(&mut t.w, fd).unwrap();
    }
    assert_eq!(t.w.devices.stdout.data, [0]);
    // Lengths that add up past what fd_write can count, told apart from
    // the buffers' check and the fd's, which come after.
    set_iovs(&mut t.mem, IOVS, &[(0, u32::MAX), (0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 99, IOVS, 2, RESULT), Err(errno::INVAL));
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, IOVS, 2, RESULT), Err(errno::INVAL));
    set_iovs(&mut t.mem, IOVS, &[(0, u32::MAX - 1), (0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 99, IOVS, 2, RESULT), Err(errno::FAULT));
    set_iovs(&mut t.mem, IOVS, &[(0, 1), (0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 99, IOVS, 2, RESULT), Err(errno::BADF));
    // The count written where it does not fit.
    set_iovs(&mut t.mem, IOVS, &[(0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, IOVS, 1, END - 3), Err(errno::FAULT));
    assert_eq!(fd_read(&mut t.mem, &mut t.w, 0, IOVS, 1, END - 3), Err(errno::FAULT));
}

fn u64_at_slice(stat: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(stat[at..at + 8].try_into().unwrap())
}

fn ino_of(stat: &[u8; 64]) -> u64 {
    u64_at_slice(stat, 8)
}

#[test]
fn writes_and_reads_go_only_where_the_fd_allows() {
    let mut t = job();
    assert_eq!(t.write(0, &[b"x"]), Err(errno::BADF));
    assert_eq!(t.write(IN, &[b"x"]), Err(errno::BADF), "a directory is never open for writing");
    let input = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(t.write(input, &[b"x"]), Err(errno::BADF));
    for fd in [-1, 60, 99, i32::MIN] {
        assert_eq!(t.write(fd, &[b"x"]), Err(errno::BADF));
        assert_eq!(t.read(fd, &[1]), Err(errno::BADF));
    }
    assert_eq!(t.read(1, &[1]), Err(errno::BADF));
    assert_eq!(t.read(2, &[1]), Err(errno::BADF));
    assert_eq!(t.read(IN, &[1]), Err(errno::ISDIR));
    // A file opened without FD_READ cannot be read.
    let w = t.open_with(OUT, 0, "w", OFLAGS_CREAT, rights::FD_WRITE as i64, 0, 0).unwrap();
    assert_eq!(t.read(w, &[1]), Err(errno::BADF));
    // stdin delivers what its stream has (5 bytes at a time here), filling
    // the next buffer only when the one before is full, then its end.
    assert_eq!(t.read(0, &[4, 4]).unwrap(), (8, vec![b"line".to_vec(), b" one".to_vec()]));
    assert_eq!(t.read(0, &[8, 4]).unwrap(), (5, vec![b"\nline\xaa\xaa\xaa".to_vec(), vec![0xaa; 4]]));
    assert_eq!(t.read(0, &[16]).unwrap(), (5, vec![b" two\n\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa".to_vec()]));
    assert_eq!(t.read(0, &[16]).unwrap().0, 0);
    assert!(t.w.devices.stdout.data.is_empty() && t.w.devices.stderr.data.is_empty());
    // Streams whose rights were given up.
    fd_fdstat_set_rights(&mut t.w, 0, 0, 0).unwrap();
    fd_fdstat_set_rights(&mut t.w, 1, 0, 0).unwrap();
    assert_eq!(t.read(0, &[1]), Err(errno::BADF));
    assert_eq!(t.write(1, &[b"x"]), Err(errno::BADF));
}

#[test]
fn input_files_read_across_blocks_and_stop_at_their_end() {
    let mut t = job();
    let fd = t.open_ro(IN, "b.bin").unwrap();
    let (n, buffers) = t.read(fd, &[100, 5000]).unwrap();
    assert_eq!(n, 5100);
    assert_eq!([&buffers[0][..], &buffers[1][..]].concat(), b_bin()[..5100]);
    let (n, buffers) = t.read(fd, &[0x1000, 0x1000]).unwrap();
    assert_eq!(n as usize, B_LEN - 5100);
    assert_eq!(&[&buffers[0][..], &buffers[1][..]].concat()[..n as usize], &b_bin()[5100..]);
    assert_eq!(t.read(fd, &[10]).unwrap().0, 0, "at the end");
    let link = t.open_ro(IN, "link").unwrap();
    assert_eq!(t.read_all(link), A_TXT);
    let c = t.open_ro(IN, "sub/../sub/c").unwrap();
    assert_eq!(t.read_all(c), b"see");
    let c = t.open_ro(SLASH, "in/sub/c").unwrap();
    assert_eq!(t.read_all(c), b"see", "through the root preopen as well");
}

#[test]
fn files_are_created_written_overwritten_extended_and_read_back() {
    let mut t = job();
    let fd = t.open_rw(OUT, "f", OFLAGS_CREAT).unwrap();
    assert_eq!(t.write(fd, &[b"hello", b" world"]), Ok(11));
    assert_eq!(t.seek(fd, 6, 0), Ok(6));
    assert_eq!(t.write(fd, &[b"WORLD!"]), Ok(6));
    assert_eq!(t.seek(fd, 20, 0), Ok(20));
    assert_eq!(t.write(fd, &[b"x"]), Ok(1));
    let mut expect = b"hello WORLD!".to_vec();
    expect.resize(20, 0);
    expect.push(b'x');
    assert_eq!(t.content("out/f").unwrap(), expect);
    assert_eq!(t.seek(fd, 0, 0), Ok(0));
    assert_eq!(t.read_all(fd), expect);
    // Through the root preopen, and truncated on open.
    let again = t.open_rw(SLASH, "out/f", OFLAGS_TRUNC).unwrap();
    assert_eq!(t.read_all(again), b"");
    assert_eq!(t.content("out/f").unwrap(), b"");
}

#[test]
fn append_writes_at_the_end_whatever_the_position_and_flags_are_reported() {
    let mut t = job();
    let flags = (fdflags::APPEND | fdflags::SYNC | fdflags::DSYNC) as i32;
    let fd = t.open(OUT, "log", OFLAGS_CREAT, flags).unwrap();
    t.write(fd, &[b"one\n"]).unwrap();
    t.seek(fd, 0, 0).unwrap();
    t.write(fd, &[b"two\n"]).unwrap();
    assert_eq!(t.tell(fd), 8);
    assert_eq!(t.content("out/log").unwrap(), b"one\ntwo\n");
    assert_eq!(t.fdstat(fd).unwrap().1, flags as u16);
    assert_eq!(fd_fdstat_set_flags(&mut t.w, fd, 0), Ok(()));
    t.seek(fd, 0, 0).unwrap();
    t.write(fd, &[b"ONE"]).unwrap();
    assert_eq!(t.content("out/log").unwrap(), b"ONE\ntwo\n");
    assert_eq!(t.fdstat(fd).unwrap().1, 0);
    assert_eq!(fd_fdstat_set_flags(&mut t.w, fd, 1 << 5), Err(errno::INVAL));
    assert_eq!(fd_fdstat_set_flags(&mut t.w, 77, 0), Err(errno::BADF));
    assert_eq!(t.open(OUT, "x", OFLAGS_CREAT, 1 << 5), Err(errno::INVAL));
    fd_fdstat_set_rights(&mut t.w, fd, (rights::FD_READ | rights::FD_WRITE) as i64, 0).unwrap();
    assert_eq!(fd_fdstat_set_flags(&mut t.w, fd, 1), Err(errno::NOTCAPABLE));
}

#[test]
fn pread_and_pwrite_leave_the_position_alone() {
    let mut t = job();
    let fd = t.open_rw(OUT, "p", OFLAGS_CREAT).unwrap();
    t.write(fd, &[b"0123456789"]).unwrap();
    set(&mut t.mem, DATA, b"ab");
    set_iovs(&mut t.mem, IOVS, &[(DATA, 2)]);
    fd_pwrite(&mut t.mem, &mut t.w, fd, IOVS, 1, 3, RESULT).unwrap();
    assert_eq!(u32_at(&t.mem, RESULT), 2);
    assert_eq!(t.tell(fd), 10);
    set_iovs(&mut t.mem, IOVS, &[(DATA, 4)]);
    fd_pread(&mut t.mem, &mut t.w, fd, IOVS, 1, 2, RESULT).unwrap();
    assert_eq!((u32_at(&t.mem, RESULT), &t.mem[DATA as usize..DATA as usize + 4]), (4, &b"2ab5"[..]));
    assert_eq!(t.tell(fd), 10);
    fd_pread(&mut t.mem, &mut t.w, fd, IOVS, 1, 100, RESULT).unwrap();
    assert_eq!(u32_at(&t.mem, RESULT), 0, "past the end");
    assert_eq!(fd_pread(&mut t.mem, &mut t.w, fd, IOVS, 1, -1, RESULT), Err(errno::INVAL));
    assert_eq!(fd_pwrite(&mut t.mem, &mut t.w, fd, IOVS, 1, -1, RESULT), Err(errno::INVAL));
    for stdio in [0, 1] {
        assert_eq!(fd_pread(&mut t.mem, &mut t.w, stdio, IOVS, 1, 0, RESULT), Err(errno::SPIPE));
    }
    assert_eq!(fd_pwrite(&mut t.mem, &mut t.w, 1, IOVS, 1, 0, RESULT), Err(errno::SPIPE));
    assert_eq!(fd_pread(&mut t.mem, &mut t.w, IN, IOVS, 1, 0, RESULT), Err(errno::ISDIR));
    assert_eq!(fd_pwrite(&mut t.mem, &mut t.w, IN, IOVS, 1, 0, RESULT), Err(errno::BADF));
    let ro = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(fd_pwrite(&mut t.mem, &mut t.w, ro, IOVS, 1, 0, RESULT), Err(errno::BADF));
    assert_eq!(fd_pread(&mut t.mem, &mut t.w, 99, IOVS, 1, 0, RESULT), Err(errno::BADF));
}

#[test]
fn seek_and_tell_check_whence_the_result_the_fd_and_its_rights() {
    let mut t = job();
    let fd = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(t.seek(fd, -2, 2), Ok(A_TXT.len() as u64 - 2));
    assert_eq!(t.seek(fd, 1, 1), Ok(A_TXT.len() as u64 - 1));
    assert_eq!(t.tell(fd), A_TXT.len() as u64 - 1);
    assert_eq!(t.seek(fd, -100, 1), Err(errno::INVAL));
    assert_eq!(t.seek(fd, 0, 3), Err(errno::INVAL));
    assert_eq!(t.seek(fd, i64::MAX, 2), Err(errno::INVAL));
    assert_eq!(t.tell(fd), A_TXT.len() as u64 - 1, "a refused seek moves nothing");
    assert_eq!(t.seek(0, 0, 0), Err(errno::SPIPE));
    assert_eq!(t.seek(1, 0, 1), Err(errno::SPIPE));
    assert_eq!(t.seek(IN, 0, 0), Err(errno::BADF), "a directory has no position (wasmtime)");
    assert_eq!(t.seek(42, 0, 0), Err(errno::BADF));
    assert_eq!(fd_seek(&mut t.mem, &mut t.w, fd, 0, 0, END - 7), Err(errno::FAULT));
    // Without FD_SEEK only the position can be asked for.
    fd_fdstat_set_rights(&mut t.w, fd, (rights::FD_READ | rights::FD_TELL) as i64, 0).unwrap();
    assert_eq!(t.seek(fd, 0, 0), Err(errno::NOTCAPABLE));
    assert_eq!(t.seek(fd, 0, 1), Ok(A_TXT.len() as u64 - 1));
    fd_fdstat_set_rights(&mut t.w, fd, rights::FD_READ as i64, 0).unwrap();
    assert_eq!(fd_tell(&mut t.mem, &mut t.w, fd, RESULT), Err(errno::NOTCAPABLE));
}

#[test]
fn path_open_follows_the_flags() {
    let mut t = job();
    assert_eq!(t.open_rw(OUT, "new", 0), Err(errno::NOENT));
    let fd = t.open_rw(OUT, "new", OFLAGS_CREAT | OFLAGS_EXCL).unwrap();
    assert_eq!(t.open_rw(OUT, "new", OFLAGS_CREAT | OFLAGS_EXCL), Err(errno::EXIST));
    assert_eq!(t.open_rw(OUT, "new", OFLAGS_DIRECTORY), Err(errno::NOTDIR));
    assert_eq!(t.open_rw(OUT, "new/", 0), Err(errno::NOTDIR));
    assert_eq!(t.open_rw(OUT, "other/", OFLAGS_CREAT), Err(errno::ISDIR));
    assert_eq!(t.open_with(SLASH, 0, "out", OFLAGS_CREAT, rights::DIR as i64, 0, 0), Err(errno::ISDIR));
    assert_eq!(t.open_rw(OUT, "d", OFLAGS_CREAT | OFLAGS_DIRECTORY), Err(errno::INVAL));
    assert_eq!(t.open_rw(OUT, "x", 16), Err(errno::INVAL));
    // -1 asks for every right there is: bits that are no right are ignored.
    let every = t.open_with(OUT, 0, "every", OFLAGS_CREAT, -1, -1, 0).unwrap();
    assert_eq!(t.fdstat(every).unwrap().2, rights::FILE);
    assert_eq!(t.open_rw(fd, "x", 0), Err(errno::NOTDIR));
    assert_eq!(t.open_rw(1, "x", 0), Err(errno::NOTDIR));
    assert_eq!(t.open_rw(99, "x", 0), Err(errno::BADF));
    // Directories: no writing or truncating; O_DIRECTORY, "." and trailing slashes.
    assert_eq!(t.open_rw(SLASH, "out", 0), Err(errno::ISDIR));
    let dir_rights = (rights::DIR | rights::FD_READ) as i64;
    let d = t.open_with(SLASH, 0, "out/", OFLAGS_DIRECTORY, dir_rights, rights::INHERITING as i64, 0).unwrap();
    let (filetype, _, base, inheriting) = t.fdstat(d).unwrap();
    assert_eq!(filetype, FILETYPE_DIRECTORY);
    assert_eq!(base, rights::DIR, "FD_READ is not a directory's right");
    assert_eq!(inheriting, rights::INHERITING);
    assert_eq!(t.open_with(OUT, 0, ".", OFLAGS_TRUNC, dir_rights, 0, 0), Err(errno::ISDIR));
    // Read-only places: no writing, truncating or creating (EROFS).
    assert_eq!(t.open_rw(IN, "a.txt", 0), Err(errno::ROFS));
    assert_eq!(t.open_with(IN, 0, "a.txt", OFLAGS_TRUNC, rights::FD_READ as i64, 0, 0), Err(errno::ROFS));
    assert_eq!(t.open_rw(IN, "new", OFLAGS_CREAT), Err(errno::ROFS));
    assert_eq!(t.open_rw(SLASH, "new", OFLAGS_CREAT), Err(errno::ROFS));
    let ro = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(t.fdstat(ro).unwrap(), (FILETYPE_REGULAR_FILE, 0, rights::FILE & !rights::FILE_CHANGE, 0));
    assert_eq!(t.fdstat(fd).unwrap().2, rights::FILE);
    // Symlinks: followed only when asked; never out of the directory.
    let all = rights::INHERITING as i64;
    assert_eq!(t.open_with(IN, 0, "link", 0, rights::FD_READ as i64, 0, 0), Err(errno::LOOP));
    assert!(t.open_with(IN, 1, "link", 0, rights::FD_READ as i64, 0, 0).is_ok());
    assert_eq!(t.open_with(OUT, 1, "/out/new", 0, all, all, 0), Err(errno::PERM));
    assert_eq!(t.open_with(OUT, 1, "../in/a.txt", 0, all, all, 0), Err(errno::PERM));
    assert_eq!(t.open_with(OUT, 1, "new\0", 0, all, all, 0), Err(errno::INVAL));
    // The new fd's place is checked first.
    let p = t.path("made");
    let before = t.w.fds.len();
    assert_eq!(path_open(&mut t.mem, &mut t.w, OUT, 0, p, OFLAGS_CREAT, all, all, 0, END - 3), Err(errno::FAULT));
    assert_eq!(t.w.fds.len(), before);
    assert!(t.content("out/made").is_none(), "nothing created");
}

#[test]
fn rights_asked_for_must_be_inherited_and_only_shrink() {
    let mut t = job();
    let d = t.open_with(OUT, 0, ".", OFLAGS_DIRECTORY, rights::DIR as i64, rights::FD_READ as i64, 0).unwrap();
    assert_eq!(t.fdstat(d).unwrap().3, rights::FD_READ);
    assert_eq!(t.open_with(d, 0, "f", OFLAGS_CREAT, rights::FD_WRITE as i64, 0, 0), Err(errno::NOTCAPABLE));
    assert!(t.open_with(d, 0, "f", OFLAGS_CREAT, rights::FD_READ as i64, 0, 0).is_ok());
    assert_eq!(fd_fdstat_set_rights(&mut t.w, d, rights::DIR as i64, rights::FD_WRITE as i64), Err(errno::NOTCAPABLE));
    fd_fdstat_set_rights(&mut t.w, d, rights::PATH_OPEN as i64, rights::FD_READ as i64).unwrap();
    assert_eq!(t.fdstat(d).unwrap().2, rights::PATH_OPEN);
    assert_eq!(t.open_with(d, 0, "g", OFLAGS_CREAT, 0, 0, 0), Err(errno::NOTCAPABLE), "no PATH_CREATE_FILE");
    assert_eq!(t.mkdir(d, "x"), Err(errno::NOTCAPABLE));
    assert_eq!(fd_fdstat_set_rights(&mut t.w, d, rights::DIR as i64, 0), Err(errno::NOTCAPABLE));
    assert_eq!(fd_fdstat_set_rights(&mut t.w, 99, 0, 0), Err(errno::BADF));
    // Stdio reports what it can do.
    assert_eq!(t.fdstat(0).unwrap(), (FILETYPE_CHARACTER_DEVICE, 0, rights::STDIN, 0));
    assert_eq!(t.fdstat(1).unwrap(), (FILETYPE_CHARACTER_DEVICE, 0, rights::STDOUT, 0));
    assert_eq!(t.fdstat(IN).unwrap(), (FILETYPE_DIRECTORY, 0, rights::DIR, rights::INHERITING));
    assert_eq!(fd_fdstat_get(&mut t.mem, &mut t.w, 99, RESULT), Err(errno::BADF));
    assert_eq!(fd_fdstat_get(&mut t.mem, &mut t.w, 0, END - 23), Err(errno::FAULT));
}

#[test]
fn inodes_are_stable_across_stat_readdir_and_opens() {
    let mut t = job();
    let fd = t.open_ro(IN, "a.txt").unwrap();
    let by_fd = t.filestat(fd).unwrap();
    let by_path = t.path_stat(IN, "a.txt").unwrap();
    assert_eq!(by_fd, by_path);
    assert_eq!(by_fd[16], FILETYPE_REGULAR_FILE);
    assert_eq!(u64_at_slice(&by_fd, 24), 1);
    assert_eq!(u64_at_slice(&by_fd, 32), A_TXT.len() as u64);
    assert_eq!(u64_at_slice(&by_fd, 48), 20, "the image's mtime");
    let (entries, _) = t.readdir(IN, 1000, 0).unwrap();
    let a = entries.iter().find(|e| e.2 == "a.txt").unwrap();
    assert_eq!(a.1, ino_of(&by_fd));
    let dot = entries.iter().find(|e| e.2 == ".").unwrap();
    assert_eq!(dot.1, ino_of(&t.filestat(IN).unwrap()));
    let dotdot = entries.iter().find(|e| e.2 == "..").unwrap();
    assert_eq!(dotdot.1, ino_of(&t.filestat(SLASH).unwrap()));
    // A symlink's own stat without SYMLINK_FOLLOW, its target's with it.
    let link = t.path_stat_with(IN, 0, "link").unwrap();
    assert_eq!(link[16], FILETYPE_SYMBOLIC_LINK);
    assert_eq!(t.path_stat_with(IN, 1, "link").unwrap(), by_fd);
    assert_eq!(t.path_stat(IN, "nope"), Err(errno::NOENT));
    assert_eq!(t.path_stat(IN, "a.txt/"), Err(errno::NOTDIR));
    assert_eq!(t.path_stat(0, "a.txt"), Err(errno::NOTDIR));
    // Stdio is a character device.
    assert_eq!(t.filestat(1).unwrap()[16], FILETYPE_CHARACTER_DEVICE);
    assert_eq!(t.filestat(99), Err(errno::BADF));
}

#[test]
fn sizes_times_allocation_advice_and_sync() {
    let mut t = job();
    let fd = t.open_rw(OUT, "f", OFLAGS_CREAT).unwrap();
    t.write(fd, &[b"0123456789"]).unwrap();
    assert_eq!(fd_filestat_set_size(&mut t.w, fd, 4), Ok(()));
    assert_eq!(t.content("out/f").unwrap(), b"0123");
    assert_eq!(fd_filestat_set_size(&mut t.w, fd, 6), Ok(()));
    assert_eq!(t.content("out/f").unwrap(), b"0123\0\0");
    assert_eq!(fd_filestat_set_size(&mut t.w, fd, -1), Err(errno::INVAL));
    assert_eq!(fd_filestat_set_size(&mut t.w, IN, 0), Err(errno::BADF));
    let ro = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(fd_filestat_set_size(&mut t.w, ro, 0), Err(errno::NOTCAPABLE));
    // Times: explicit, now, both at once refused.
    let now = WALL_AT_ZERO + START_NS;
    fd_filestat_set_times(&mut t.w, fd, 111, 222, FSTFLAGS_ATIM | FSTFLAGS_MTIM).unwrap();
    let stat = t.filestat(fd).unwrap();
    assert_eq!((u64_at_slice(&stat, 40), u64_at_slice(&stat, 48), u64_at_slice(&stat, 56)), (111, 222, now));
    fd_filestat_set_times(&mut t.w, fd, 0, 0, FSTFLAGS_MTIM_NOW).unwrap();
    let stat = t.filestat(fd).unwrap();
    assert_eq!((u64_at_slice(&stat, 40), u64_at_slice(&stat, 48)), (111, now));
    for flags in [FSTFLAGS_ATIM | FSTFLAGS_ATIM_NOW, FSTFLAGS_MTIM | FSTFLAGS_MTIM_NOW, 16] {
        assert_eq!(fd_filestat_set_times(&mut t.w, fd, 0, 0, flags), Err(errno::INVAL));
    }
    assert_eq!(fd_filestat_set_times(&mut t.w, IN, 0, 0, FSTFLAGS_ATIM_NOW), Err(errno::ROFS));
    assert_eq!(fd_filestat_set_times(&mut t.w, ro, 0, 0, FSTFLAGS_ATIM_NOW), Err(errno::NOTCAPABLE));
    let p = t.path("f");
    path_filestat_set_times(&mut t.mem, &mut t.w, OUT, 0, p, 5, 6, FSTFLAGS_ATIM | FSTFLAGS_MTIM).unwrap();
    let stat = t.path_stat(OUT, "f").unwrap();
    assert_eq!((u64_at_slice(&stat, 40), u64_at_slice(&stat, 48)), (5, 6));
    let p = t.path("a.txt");
    assert_eq!(path_filestat_set_times(&mut t.mem, &mut t.w, IN, 0, p, 0, 0, FSTFLAGS_ATIM_NOW), Err(errno::ROFS));
    assert_eq!(path_filestat_set_times(&mut t.mem, &mut t.w, IN, 0, p, 0, 0, 3), Err(errno::INVAL));
    let p = t.path("nope");
    assert_eq!(path_filestat_set_times(&mut t.mem, &mut t.w, OUT, 0, p, 0, 0, 0), Err(errno::NOENT));
    // A symlink's own times without SYMLINK_FOLLOW, its target's with it.
    t.symlink("f", OUT, "s").unwrap();
    let p = t.path("s");
    path_filestat_set_times(&mut t.mem, &mut t.w, OUT, 0, p, 7, 8, FSTFLAGS_ATIM | FSTFLAGS_MTIM).unwrap();
    assert_eq!(u64_at_slice(&t.path_stat_with(OUT, 0, "s").unwrap(), 48), 8);
    assert_eq!(u64_at_slice(&t.path_stat(OUT, "f").unwrap(), 48), 6);
    let p = t.path("s");
    path_filestat_set_times(&mut t.mem, &mut t.w, OUT, 1, p, 7, 9, FSTFLAGS_ATIM | FSTFLAGS_MTIM).unwrap();
    assert_eq!(u64_at_slice(&t.path_stat(OUT, "f").unwrap(), 48), 9);
    // Allocation extends, never shrinks.
    assert_eq!(fd_allocate(&mut t.w, fd, 10, 10), Ok(()));
    assert_eq!(t.content("out/f").unwrap().len(), 20);
    assert_eq!(fd_allocate(&mut t.w, fd, 0, 5), Ok(()));
    assert_eq!(t.content("out/f").unwrap().len(), 20);
    assert_eq!(fd_allocate(&mut t.w, fd, 0, 0), Err(errno::INVAL));
    assert_eq!(fd_allocate(&mut t.w, fd, i64::MAX, 1), Err(errno::FBIG));
    assert_eq!(fd_allocate(&mut t.w, fd, -1, 1), Err(errno::INVAL));
    assert_eq!(fd_allocate(&mut t.w, ro, 0, 1), Err(errno::NOTCAPABLE));
    assert_eq!(fd_allocate(&mut t.w, 1, 0, 1), Err(errno::SPIPE));
    // Advice: any of the six, on files.
    for advice in 0..=5 {
        assert_eq!(fd_advise(&mut t.w, fd, 0, 10, advice), Ok(()));
    }
    assert_eq!(fd_advise(&mut t.w, fd, 0, 10, 6), Err(errno::INVAL));
    assert_eq!(fd_advise(&mut t.w, 0, 0, 10, 0), Err(errno::SPIPE));
    assert_eq!(fd_advise(&mut t.w, IN, 0, 10, 0), Err(errno::BADF));
    // Sync: on anything open with the right.
    for fd in [0, 1, IN, fd, ro] {
        assert_eq!(fd_sync(&mut t.w, fd, rights::FD_SYNC), Ok(()));
        assert_eq!(fd_sync(&mut t.w, fd, rights::FD_DATASYNC), Ok(()));
    }
    assert_eq!(fd_sync(&mut t.w, 99, rights::FD_SYNC), Err(errno::BADF));
    fd_fdstat_set_rights(&mut t.w, fd, rights::FD_READ as i64, 0).unwrap();
    assert_eq!(fd_sync(&mut t.w, fd, rights::FD_SYNC), Err(errno::NOTCAPABLE));
}

#[test]
fn fds_are_renumbered_closed_and_reused_lowest_first() {
    let mut t = job();
    let a = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(a, 6);
    let b = t.open_ro(IN, "sub/c").unwrap();
    assert_eq!(b, 7);
    assert_eq!(fd_renumber(&mut t.w, a, b), Ok(()));
    assert_eq!(t.read_all(b), A_TXT);
    assert_eq!(t.read(a, &[1]), Err(errno::BADF));
    assert_eq!(fd_renumber(&mut t.w, b, 42), Err(errno::BADF), "the target must be open");
    assert_eq!(fd_renumber(&mut t.w, 42, b), Err(errno::BADF));
    assert_eq!(fd_renumber(&mut t.w, b, b), Ok(()));
    assert_eq!(t.open_ro(IN, "a.txt"), Ok(6));
    // Preopens close like any fd, and their number is reused.
    assert_eq!(fd_close(&mut t.w, IN), Ok(()));
    assert_eq!(fd_close(&mut t.w, IN), Err(errno::BADF));
    assert_eq!(fd_prestat_get(&mut t.mem, &mut t.w, IN, RESULT), Err(errno::BADF));
    assert_eq!(t.open_ro(SLASH, "in/a.txt"), Ok(IN));
    assert_eq!(fd_close(&mut t.w, -1), Err(errno::BADF));
    // Past the most fds a job may have: EMFILE, and nothing created.
    while t.w.fds.len() < FDS_MAX {
        t.w.fds.push(Some(Fd { kind: Kind::Stdin, base: 0, inheriting: 0, flags: 0 }));
    }
    assert_eq!(t.open_rw(OUT, "one-too-many", OFLAGS_CREAT), Err(errno::MFILE));
    assert!(t.content("out/one-too-many").is_none());
    fd_close(&mut t.w, 100).unwrap();
    assert_eq!(t.open_rw(OUT, "one-too-many", OFLAGS_CREAT), Ok(100));
}

#[test]
fn preopens_are_named_and_a_short_buffer_is_enametoolong() {
    let mut t = job();
    for (fd, name) in [(IN, &b"/in"[..]), (OUT, b"/out"), (SLASH, b"/")] {
        fd_prestat_get(&mut t.mem, &mut t.w, fd, RESULT).unwrap();
        assert_eq!((t.mem[RESULT as usize], u32_at(&t.mem, RESULT + 4)), (0, name.len() as u32));
        t.mem[0x10..0x20].fill(0xaa);
        fd_prestat_dir_name(&mut t.mem, &mut t.w, fd, 0x10, name.len() as u32).unwrap();
        assert_eq!(&t.mem[0x10..0x10 + name.len()], name);
        assert_eq!(t.mem[0x10 + name.len()], 0xaa, "no NUL");
    }
    assert_eq!(fd_prestat_dir_name(&mut t.mem, &mut t.w, OUT, 0x10, 3), Err(errno::NAMETOOLONG));
    assert_eq!(fd_prestat_get(&mut t.mem, &mut t.w, IN, END - 7), Err(errno::FAULT));
    let again = t.open_with(OUT, 0, ".", OFLAGS_DIRECTORY, rights::DIR as i64, 0, 0).unwrap();
    for fd in [0, 1, 2, again, 40, -1] {
        assert_eq!(fd_prestat_get(&mut t.mem, &mut t.w, fd, RESULT), Err(errno::BADF), "{fd}");
        assert_eq!(fd_prestat_dir_name(&mut t.mem, &mut t.w, fd, 0x10, 8), Err(errno::BADF), "{fd}");
    }
    // A preopen the filesystem does not hold as a directory.
    let fs = Fs::load(ImageBuilder::new().build(16), 1 << 20).unwrap();
    let devices = job().w.devices;
    let result = Wasi::<Test>::new(Vec::new(), Vec::new(), fs, &["/in".to_string()], devices);
    assert_eq!(result.err(), Some(PreopenError("/in".into())));
}

fn dirent(cookie: u64, ino: u64, name: &str, kind: u8) -> Dirent {
    (cookie, ino, name.into(), kind)
}

#[test]
fn readdir_lists_dot_dotdot_and_the_entries_and_resumes_from_cookies() {
    let mut t = job();
    let in_ino = ino_of(&t.filestat(IN).unwrap());
    let root = ino_of(&t.filestat(SLASH).unwrap());
    let ino = |t: &mut T, p: &str| ino_of(&t.path_stat_with(IN, 0, p).unwrap());
    let (a, b, link, sub) = (ino(&mut t, "a.txt"), ino(&mut t, "b.bin"), ino(&mut t, "link"), ino(&mut t, "sub"));
    let all = vec![
        dirent(1, in_ino, ".", FILETYPE_DIRECTORY),
        dirent(2, root, "..", FILETYPE_DIRECTORY),
        dirent(3, a, "a.txt", FILETYPE_REGULAR_FILE),
        dirent(4, b, "b.bin", FILETYPE_REGULAR_FILE),
        dirent(5, link, "link", FILETYPE_SYMBOLIC_LINK),
        dirent(6, sub, "sub", FILETYPE_DIRECTORY),
    ];
    let (entries, used) = t.readdir(IN, 1000, 0).unwrap();
    assert_eq!(entries, all);
    assert!(used < 1000);
    assert_eq!(t.readdir(IN, 1000, 3).unwrap().0, all[3..]);
    assert_eq!(t.readdir(IN, 1000, 6).unwrap(), (vec![], 0));
    assert_eq!(t.readdir(IN, 1000, 1 << 40).unwrap(), (vec![], 0));
    // A full buffer ends in a cut-off entry; its cookie resumes it.
    let (entries, used) = t.readdir(IN, 24 + 1 + 24 + 2 + 10, 0).unwrap();
    assert_eq!(used, 61);
    assert_eq!(entries[..2], all[..2]);
    let (entries, _) = t.readdir(IN, 30, 2).unwrap();
    assert_eq!(entries[0].2, "a.txt");
    // Entries made after a listing began show from the next cookie 0.
    assert_eq!(t.readdir(OUT, 1000, 0).unwrap().0.len(), 2);
    t.mkdir(OUT, "new").unwrap();
    assert_eq!(t.readdir(OUT, 1000, 2).unwrap().0.len(), 0, "the listing taken at cookie 0");
    assert_eq!(t.readdir(OUT, 1000, 0).unwrap().0.len(), 3);
    let fd = t.open_ro(IN, "a.txt").unwrap();
    assert_eq!(t.readdir(fd, 100, 0), Err(errno::NOTDIR));
    assert_eq!(t.readdir(1, 100, 0), Err(errno::NOTDIR));
    assert_eq!(t.readdir(99, 100, 0), Err(errno::BADF));
    assert_eq!(fd_readdir(&mut t.mem, &mut t.w, IN, END - 10, 11, 0, RESULT), Err(errno::FAULT));
    fd_fdstat_set_rights(&mut t.w, OUT, rights::PATH_OPEN as i64, 0).unwrap();
    assert_eq!(t.readdir(OUT, 100, 0), Err(errno::NOTCAPABLE));
}

#[test]
fn directories_are_made_and_removed_only_where_that_makes_sense() {
    let mut t = job();
    t.mkdir(OUT, "a").unwrap();
    t.mkdir(OUT, "a/b/").unwrap();
    assert_eq!(t.mkdir(OUT, "a"), Err(errno::EXIST));
    assert_eq!(t.mkdir(OUT, "."), Err(errno::EXIST));
    assert_eq!(t.mkdir(OUT, "x/y"), Err(errno::NOENT));
    assert_eq!(t.mkdir(IN, "x"), Err(errno::ROFS));
    assert_eq!(t.mkdir(SLASH, "x"), Err(errno::ROFS));
    assert_eq!(t.mkdir(OUT, "../x"), Err(errno::PERM));
    assert_eq!(t.rmdir(OUT, "a"), Err(errno::NOTEMPTY));
    let f = t.open_rw(OUT, "a/f", OFLAGS_CREAT).unwrap();
    fd_close(&mut t.w, f).unwrap();
    assert_eq!(t.rmdir(OUT, "a/f"), Err(errno::NOTDIR));
    assert_eq!(t.unlink(OUT, "a/b"), Err(errno::ISDIR));
    assert_eq!(t.unlink(OUT, "a/f/"), Err(errno::NOTDIR), "a trailing slash names a directory");
    assert_eq!(t.unlink(OUT, "a/b/"), Err(errno::ISDIR));
    assert_eq!(t.unlink(OUT, "a/nope"), Err(errno::NOENT));
    assert_eq!(t.unlink(IN, "a.txt"), Err(errno::ROFS));
    assert_eq!(t.rmdir(SLASH, "out"), Err(errno::BUSY), "a mount root stays");
    assert_eq!(t.rmdir(OUT, "."), Err(errno::INVAL));
    t.unlink(OUT, "a/f").unwrap();
    t.rmdir(OUT, "a/b/").unwrap();
    t.rmdir(OUT, "a").unwrap();
    assert_eq!(t.readdir(OUT, 1000, 0).unwrap().0.len(), 2);
    assert_eq!(t.unlink(1, "x"), Err(errno::NOTDIR));
    fd_fdstat_set_rights(&mut t.w, OUT, rights::PATH_OPEN as i64, 0).unwrap();
    assert_eq!(t.rmdir(OUT, "x"), Err(errno::NOTCAPABLE));
    assert_eq!(t.unlink(OUT, "x"), Err(errno::NOTCAPABLE));
}

#[test]
fn an_unlinked_file_stays_readable_through_its_fd() {
    let mut t = job();
    let fd = t.open_rw(OUT, "tmp", OFLAGS_CREAT).unwrap();
    t.write(fd, &[b"still here"]).unwrap();
    t.unlink(OUT, "tmp").unwrap();
    assert_eq!(t.open_rw(OUT, "tmp", 0), Err(errno::NOENT));
    t.seek(fd, 0, 0).unwrap();
    assert_eq!(t.read_all(fd), b"still here");
    assert_eq!(u64_at_slice(&t.filestat(fd).unwrap(), 24), 0, "no links left");
    fd_close(&mut t.w, fd).unwrap();
}

#[test]
fn renames_follow_posix_and_the_mounts() {
    let mut t = job();
    let fd = t.open_rw(OUT, "f", OFLAGS_CREAT).unwrap();
    t.write(fd, &[b"content"]).unwrap();
    let ino = ino_of(&t.filestat(fd).unwrap());
    t.mkdir(OUT, "d").unwrap();
    t.rename(OUT, "f", OUT, "d/g").unwrap();
    assert_eq!(t.content("out/d/g").unwrap(), b"content");
    assert_eq!(ino_of(&t.path_stat(OUT, "d/g").unwrap()), ino, "the same inode");
    assert_eq!(t.rename(OUT, "f", OUT, "x"), Err(errno::NOENT));
    assert_eq!(t.rename(OUT, "d/g/", OUT, "x"), Err(errno::NOTDIR));
    assert_eq!(t.rename(OUT, "d/g", OUT, "x/"), Err(errno::NOTDIR));
    assert_eq!(t.rename(OUT, "d", OUT, "d/sub"), Err(errno::INVAL));
    assert_eq!(t.rename(OUT, "d", OUT, "e/"), Ok(()));
    assert_eq!(t.rename(OUT, ".", OUT, "x"), Err(errno::BUSY));
    assert_eq!(t.rename(IN, "a.txt", OUT, "a"), Err(errno::ROFS));
    assert_eq!(t.rename(SLASH, "out", SLASH, "x"), Err(errno::BUSY));
    assert_eq!(t.rename(OUT, "e/g", IN, "g"), Err(errno::ROFS));
    assert_eq!(t.rename(OUT, "e/g", 1, "g"), Err(errno::NOTDIR));
    assert_eq!(t.rename(OUT, "../x", OUT, "g"), Err(errno::PERM));
    fd_fdstat_set_rights(&mut t.w, IN, rights::PATH_OPEN as i64, 0).unwrap();
    assert_eq!(t.rename(OUT, "e/g", IN, "g"), Err(errno::NOTCAPABLE));
}

#[test]
fn links_symlinks_and_readlink() {
    let mut t = job();
    let fd = t.open_rw(OUT, "f", OFLAGS_CREAT).unwrap();
    t.write(fd, &[b"shared"]).unwrap();
    t.link(OUT, 0, "f", OUT, "g").unwrap();
    assert_eq!(u64_at_slice(&t.filestat(fd).unwrap(), 24), 2);
    assert_eq!(t.content("out/g").unwrap(), b"shared");
    assert_eq!(t.link(OUT, 0, "f", OUT, "g"), Err(errno::EXIST));
    assert_eq!(t.link(OUT, 0, "f", OUT, "h/"), Err(errno::NOENT));
    assert_eq!(t.link(OUT, 0, ".", OUT, "h"), Err(errno::PERM), "no links to directories");
    assert_eq!(t.link(IN, 0, "a.txt", OUT, "a"), Err(errno::XDEV));
    assert_eq!(t.link(OUT, 0, "f", IN, "f"), Err(errno::ROFS));
    assert_eq!(t.link(OUT, 0, "nope", OUT, "h"), Err(errno::NOENT));
    t.symlink("f", OUT, "s").unwrap();
    assert_eq!(t.readlink(OUT, "s", 100).unwrap(), b"f");
    assert_eq!(t.readlink(OUT, "s", 0).unwrap(), b"", "cut to the buffer");
    assert_eq!(t.readlink(OUT, "f", 100), Err(errno::INVAL));
    assert_eq!(t.readlink(OUT, "nope", 100), Err(errno::NOENT));
    assert_eq!(t.readlink(IN, "link", 3).unwrap(), b"a.t");
    // No hard link to a symlink itself (the image names each once), but
    // through it to its target.
    assert_eq!(t.link(OUT, 0, "s", OUT, "s2"), Err(errno::PERM));
    t.link(OUT, 1, "s", OUT, "f3").unwrap();
    assert_eq!(u64_at_slice(&t.filestat(fd).unwrap(), 24), 3);
    assert_eq!(t.symlink("x", OUT, "s"), Err(errno::EXIST));
    assert_eq!(t.symlink("x", OUT, "t/"), Err(errno::NOENT));
    assert_eq!(t.symlink("", OUT, "t"), Err(errno::NOENT));
    assert_eq!(t.symlink("x", IN, "t"), Err(errno::ROFS));
    assert_eq!(t.symlink("x", OUT, "../t"), Err(errno::PERM));
    // A symlink out of the directory can be made, never followed out.
    t.symlink("../in/a.txt", OUT, "esc").unwrap();
    assert_eq!(t.open_ro(OUT, "esc"), Err(errno::PERM));
    let through_root = t.open_ro(SLASH, "out/esc").unwrap();
    assert_eq!(t.read_all(through_root), A_TXT);
    let p = t.path("s");
    set(&mut t.mem, DATA, b"\xff");
    assert_eq!(path_symlink(&mut t.mem, &mut t.w, (DATA, 1), OUT, p), Err(errno::ILSEQ));
}

#[test]
fn sockets_do_not_exist() {
    let mut t = job();
    for fd in [0, 1, IN] {
        assert_eq!(sock_call(&mut t.w, fd), Err(errno::NOTSOCK));
    }
    assert_eq!(sock_call(&mut t.w, 99), Err(errno::BADF));
}

#[test]
fn a_full_disk_is_enospc_after_what_fit() {
    let mut image = ImageBuilder::new();
    image.mount("/out", false);
    let fs = Fs::load(image.build(20), 1 << 20).unwrap();
    let mut t = job();
    t.w.fs = fs;
    t.w.fds.truncate(3);
    t.w.fds.push(Some(Fd {
        kind: Kind::Dir { ino: t.w.fs.find_dir("/out").unwrap(), preopen: None, listing: None },
        base: rights::DIR,
        inheriting: rights::INHERITING,
        flags: 0,
    }));
    let fd = t.open_rw(3, "big", OFLAGS_CREAT).unwrap();
    t.mem = vec![0; 1 << 20];
    set_iovs(&mut t.mem, IOVS, &[(DATA, 200_000)]);
    fd_write(&mut t.mem, &mut t.w, fd, IOVS, 1, RESULT).unwrap();
    let n = u32_at(&t.mem, RESULT);
    assert!(n > 0 && n < 200_000, "{n}");
    assert_eq!(fd_write(&mut t.mem, &mut t.w, fd, IOVS, 1, RESULT), Err(errno::NOSPC));
    t.w.fs.save().unwrap();
}

#[test]
fn poll_reports_what_a_file_has_left_and_bad_fds() {
    let mut t = job();
    let fd = t.open_ro(IN, "a.txt").unwrap();
    subscriptions(&mut t.mem, SUBS, &[(1, 1, fd as u32, 0, 0), (2, 1, 99, 0, 0), (3, 2, IN as u32, 0, 0)]);
    poll_oneoff(&mut t.mem, &mut t.w, SUBS, EVENTS, 3, RESULT).unwrap();
    assert_eq!(u32_at(&t.mem, RESULT), 3);
    let event = |i: u32| {
        let e = &t.mem[(EVENTS + 32 * i) as usize..(EVENTS + 32 * i + 32) as usize];
        (u64_at_slice(e, 0), u16::from_le_bytes([e[8], e[9]]), e[10], u64_at_slice(e, 16))
    };
    assert_eq!(event(0), (1, 0, 1, A_TXT.len() as u64));
    assert_eq!(event(1), (2, errno::BADF, 1, 0));
    assert_eq!(event(2), (3, errno::BADF, 2, 0));
    subscriptions(&mut t.mem, SUBS, &[(1, 9, 0, 0, 0)]);
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, SUBS, EVENTS, 1, RESULT), Err(errno::INVAL));
}

/// A subscription: (userdata, tag, clock id, timeout, flags).
fn subscriptions(mem: &mut [u8], at: u32, subs: &[(u64, u8, u32, u64, u16)]) {
    for (i, (userdata, tag, clock, timeout, flags)) in subs.iter().enumerate() {
        let mut s = [0u8; 48];
        s[..8].copy_from_slice(&userdata.to_le_bytes());
        s[8] = *tag;
        s[16..20].copy_from_slice(&clock.to_le_bytes());
        s[24..32].copy_from_slice(&timeout.to_le_bytes());
        s[40..42].copy_from_slice(&flags.to_le_bytes());
        set(mem, at + 48 * i as u32, &s);
    }
}

const SUBS: u32 = 0x400;
const EVENTS: u32 = 0x800;

impl T {
    /// Polls; returns the events as (userdata, error, type).
    fn poll(&mut self, subs: &[(u64, u8, u32, u64, u16)]) -> Result<Vec<(u64, u16, u8)>, Errno> {
        subscriptions(&mut self.mem, SUBS, subs);
        self.mem[EVENTS as usize..EVENTS as usize + 32 * 8].fill(0xaa);
        poll_oneoff(&mut self.mem, &mut self.w, SUBS, EVENTS, subs.len() as u32, RESULT)?;
        let n = u32_at(&self.mem, RESULT);
        assert_eq!(self.mem[(EVENTS + 32 * n) as usize], 0xaa, "nothing written past the last event");
        Ok((0..n)
            .map(|i| {
                let e = &self.mem[(EVENTS + 32 * i) as usize..(EVENTS + 32 * i + 32) as usize];
                assert!(e[11..].iter().all(|b| *b == 0), "the rest of the event is zero");
                (u64_at_slice(e, 0), u16::from_le_bytes([e[8], e[9]]), e[10])
            })
            .collect())
    }
}

#[test]
fn poll_sleeps_until_the_earliest_clock_and_reports_the_expired_ones() {
    let mut t = job();
    t.write(1, &[b"before the sleep"]).unwrap();
    let events = t.poll(&[(7, 0, 1, 3_000, 0), (8, 0, 1, 1_000, 0), (9, 0, 1, 1_000, 0)]).unwrap();
    assert_eq!(t.w.devices.clock.sleeps, [START_NS + 1_000]);
    assert_eq!(events, [(8, 0, 0), (9, 0, 0)]);
    assert_eq!((t.w.devices.stdout.flushes, t.w.devices.stderr.flushes), (1, 1), "outputs flushed before sleeping");
    // Absolute deadlines: monotonic as they are, realtime from the wall clock.
    let now = t.w.devices.clock.monotonic;
    assert_eq!(t.poll(&[(1, 0, 1, now + 500, 1)]).unwrap(), [(1, 0, 0)]);
    assert_eq!(t.w.devices.clock.sleeps[1], now + 500);
    let now = t.w.devices.clock.monotonic;
    assert_eq!(t.poll(&[(2, 0, 0, WALL_AT_ZERO + now + 250, 1)]).unwrap(), [(2, 0, 0)]);
    assert_eq!(t.w.devices.clock.sleeps[2], now + 250);
    // A deadline already past, and a relative realtime one.
    assert_eq!(t.poll(&[(3, 0, 1, 0, 1), (4, 0, 0, 10, 0)]).unwrap(), [(3, 0, 0)]);
    assert_eq!(t.w.devices.clock.sleeps[3], 0);
    assert_eq!(t.poll(&[(5, 0, 0, 1, 1)]).unwrap(), [(5, 0, 0)], "a realtime deadline in the past");
    assert_eq!(*t.w.devices.clock.sleeps.last().unwrap(), t.w.devices.clock.monotonic);
    // Timeouts that would overflow saturate.
    assert_eq!(t.poll(&[(6, 0, 1, u64::MAX, 0)]).unwrap(), [(6, 0, 0)]);
    assert_eq!(*t.w.devices.clock.sleeps.last().unwrap(), u64::MAX);
}

#[test]
fn poll_with_an_fd_subscription_does_not_sleep() {
    let mut t = job();
    let events = t.poll(&[(1, 0, 1, 1_000, 0), (2, 1, 0, 0, 0), (3, 2, 0, 0, 0), (4, 0, 1, 0, 0)]).unwrap();
    assert_eq!(events, [(2, 0, 1), (3, 0, 2), (4, 0, 0)]);
    assert!(t.w.devices.clock.sleeps.is_empty());
    assert_eq!(t.w.devices.stdout.flushes, 0);
}

#[test]
fn poll_waits_for_stdin_in_growing_steps_up_to_a_deadline() {
    let mut t = job();
    t.w.devices.stdin.waits = 4;
    t.write(1, &[b"prompt> "]).unwrap();
    let events = t.poll(&[(1, 1, 0, 0, 0), (2, 0, 1, 1_000_000, 0)]).unwrap();
    assert_eq!(events, [(1, 0, 1)], "stdin's bytes came before the deadline");
    assert_eq!(t.w.devices.clock.sleeps, [START_NS + 50_000, START_NS + 150_000, START_NS + 350_000]);
    assert!(t.w.devices.stdout.flushes > 0, "the prompt shows before the wait");
    // Bytes that do not come: the deadline ends the wait, stdin not reported.
    t.w.devices.stdin.waits = usize::MAX;
    let now = t.w.devices.clock.monotonic;
    assert_eq!(t.poll(&[(3, 1, 0, 0, 0), (4, 0, 1, 1_000_000, 0)]).unwrap(), [(4, 0, 0)]);
    assert_eq!(*t.w.devices.clock.sleeps.last().unwrap(), now + 1_000_000);
    // Any other ready fd ends the wait at once.
    let sleeps = t.w.devices.clock.sleeps.len();
    assert_eq!(t.poll(&[(5, 1, 0, 0, 0), (6, 2, 0, 0, 0)]).unwrap(), [(6, 0, 2)]);
    assert_eq!(t.w.devices.clock.sleeps.len(), sleeps);
}

#[test]
fn poll_checks_its_count_and_both_tables() {
    let mut t = job();
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, SUBS, EVENTS, 0, RESULT), Err(errno::INVAL));
    for (subs, count) in [(END - 47, 1), (END - 48, 2), (0, u32::MAX / 48 + 1), (u32::MAX, 1)] {
        assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, subs, EVENTS, count, RESULT), Err(errno::FAULT), "{subs:#x}");
    }
    assert!(t.w.devices.clock.sleeps.is_empty(), "a refused poll does not sleep");
    subscriptions(&mut t.mem, END - 200, &[(1, 1, 0, 0, 0), (2, 1, 0, 0, 0)]);
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, END - 200, EVENTS, 2, RESULT), Ok(()));
    assert_eq!(u32_at(&t.mem, RESULT), 2);
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, END - 200, END - 64, 2, RESULT), Ok(()));
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, END - 200, END - 63, 2, RESULT), Err(errno::FAULT));
    assert_eq!(poll_oneoff(&mut t.mem, &mut t.w, END - 200, EVENTS, 2, END - 3), Err(errno::FAULT));
}
