//! Every WASI function as a module calls it: arguments laid out in a linear
//! memory of one 64 KiB page, hostile pointers and lengths included, and the
//! platform's devices replaced by the test ones in testing.rs.

use std::string::String;
use std::vec::Vec;

use super::*;
use crate::testing::{Counter, FakeClock, MemDisk, Recorder, Script, Test};

const MEM: usize = 0x1_0000;
const END: u32 = MEM as u32;
const WALL_AT_ZERO: u64 = 1_700_000_000_000_000_000;
const START_NS: u64 = 5_000;
const A_TXT: &[u8] = b"alpha\n";
/// Where the input files sit on the job disk; the bytes around them are
/// 0xee, so a read that strays off a file shows.
const A_AT: u64 = 512 + 100;
const B_AT: u64 = 1536;
const B_LEN: usize = 2000;

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

fn job() -> T {
    let mut disk = vec![0xee; 4096];
    disk[A_AT as usize..A_AT as usize + A_TXT.len()].copy_from_slice(A_TXT);
    disk[B_AT as usize..B_AT as usize + B_LEN].copy_from_slice(&b_bin());
    let inputs = vec![
        InputFile { name: "a.txt".into(), offset: A_AT, size: A_TXT.len() as u64 },
        InputFile { name: "b.bin".into(), offset: B_AT, size: B_LEN as u64 },
    ];
    let devices = Devices {
        job_disk: MemDisk::new(disk),
        stdin: Script { data: b"line one\nline two\n".to_vec(), chunk: 5 },
        stdout: Recorder::default(),
        stderr: Recorder::default(),
        clock: FakeClock { monotonic: START_NS, wall_at_zero: WALL_AT_ZERO, sleeps: Vec::new() },
        entropy: Counter(0),
    };
    let args = vec![b"wc".to_vec(), Vec::new(), b"-l".to_vec()];
    T { w: Wasi::new(args, vec![b"A=1".to_vec(), b"PATH=/x".to_vec()], inputs, devices), mem: vec![0; MEM] }
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

    fn open(&mut self, dirfd: i32, path: &str, oflags: i32, fdflags: i32) -> Result<i32, Errno> {
        let p = self.path(path);
        path_open(&mut self.mem, &mut self.w, dirfd, p, oflags, fdflags, RESULT)?;
        Ok(u32_at(&self.mem, RESULT) as i32)
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
        let p = self.path(path);
        path_filestat_get(&mut self.mem, &mut self.w, dirfd, p, RESULT)?;
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

    fn out_file(&self, path: &[&str]) -> Option<&[u8]> {
        let path: Vec<String> = path.iter().map(|p| String::from(*p)).collect();
        match self.w.out.lookup(&path) {
            Some(Node::File(content)) => Some(content),
            _ => None,
        }
    }
}

/// (next cookie, inode, name, type)
type Dirent = (u64, u64, String, u8);

const IN: i32 = 3;
const OUT: i32 = 4;

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
        let fd = t.open(IN, "a.txt", 0, 0).unwrap();
        set_iovs(&mut t.mem, IOVS, &[iov]);
        assert_eq!(fd_read(&mut t.mem, &mut t.w, fd, IOVS, 1, RESULT), Err(errno::FAULT), "{iov:x?}");
        fd_close(&mut t.w, fd).unwrap();
    }
    assert_eq!(t.w.devices.stdout.data, [0]);
    // Lengths that each fit but add up past what fd_write can count, told
    // apart from the fd's own check, which comes after.
    set_iovs(&mut t.mem, IOVS, &[(0, u32::MAX), (0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 99, IOVS, 2, RESULT), Err(errno::INVAL));
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, IOVS, 2, RESULT), Err(errno::INVAL));
    set_iovs(&mut t.mem, IOVS, &[(0, u32::MAX - 1), (0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 99, IOVS, 2, RESULT), Err(errno::BADF));
    // The count written where it does not fit.
    set_iovs(&mut t.mem, IOVS, &[(0, 1)]);
    assert_eq!(fd_write(&mut t.mem, &mut t.w, 1, IOVS, 1, END - 3), Err(errno::FAULT));
    assert_eq!(fd_read(&mut t.mem, &mut t.w, 0, IOVS, 1, END - 3), Err(errno::FAULT));
}

#[test]
fn writes_and_reads_go_only_where_the_fd_allows() {
    let mut t = job();
    assert_eq!(t.write(0, &[b"x"]), Err(errno::BADF));
    assert_eq!(t.write(IN, &[b"x"]), Err(errno::ISDIR));
    assert_eq!(t.write(OUT, &[b"x"]), Err(errno::ISDIR));
    let input = t.open(IN, "a.txt", 0, 0).unwrap();
    assert_eq!(t.write(input, &[b"x"]), Err(errno::BADF));
    for fd in [-1, 6, 99, i32::MIN] {
        assert_eq!(t.write(fd, &[b"x"]), Err(errno::BADF));
        assert_eq!(t.read(fd, &[1]), Err(errno::BADF));
    }
    assert_eq!(t.read(1, &[1]), Err(errno::BADF));
    assert_eq!(t.read(2, &[1]), Err(errno::BADF));
    assert_eq!(t.read(IN, &[1]), Err(errno::ISDIR));
    assert_eq!(t.read(OUT, &[1]), Err(errno::ISDIR));
    // stdin delivers what its stream has (5 bytes at a time here), filling
    // the next buffer only when the one before is full, then its end.
    assert_eq!(t.read(0, &[4, 4]).unwrap(), (8, vec![b"line".to_vec(), b" one".to_vec()]));
    assert_eq!(t.read(0, &[8, 4]).unwrap(), (5, vec![b"\nline\xaa\xaa\xaa".to_vec(), vec![0xaa; 4]]));
    assert_eq!(t.read(0, &[16]).unwrap(), (5, vec![b" two\n\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa\xaa".to_vec()]));
    assert_eq!(t.read(0, &[16]).unwrap().0, 0);
    assert!(t.w.devices.stdout.data.is_empty() && t.w.devices.stderr.data.is_empty());
}

#[test]
fn input_files_read_across_sectors_and_stop_at_their_end() {
    let mut t = job();
    let b = b_bin();
    let fd = t.open(IN, "b.bin", 0, 0).unwrap();
    assert_eq!(fd, 5);
    assert_eq!(
        t.read(fd, &[10, 1000, 5]).unwrap(),
        (1015, vec![b[..10].to_vec(), b[10..1010].to_vec(), b[1010..1015].to_vec()])
    );
    assert_eq!(t.tell(fd), 1015);
    // A short read fills the first buffer partly and leaves the next alone.
    let (n, buffers) = t.read(fd, &[1000, 8]).unwrap();
    assert_eq!(n, 985);
    assert_eq!(buffers[0][..985], b[1015..]);
    assert_eq!(buffers[0][985..], [0xaa; 15]);
    assert_eq!(buffers[1], [0xaa; 8]);
    assert_eq!(t.read(fd, &[8]).unwrap(), (0, vec![vec![0xaa; 8]]));
    // From an offset inside a sector, past the end, and a whole small file.
    assert_eq!(t.seek(fd, 511, 0), Ok(511));
    assert_eq!(t.read_all(fd), b[511..]);
    assert_eq!(t.seek(fd, 5000, 0), Ok(5000));
    assert_eq!(t.read(fd, &[8]).unwrap().0, 0);
    let a = t.open(IN, "a.txt", 0, 0).unwrap();
    assert_eq!(t.read_all(a), A_TXT);
    // Every transfer asked of the disk is whole sectors inside it.
    assert!(t.w.devices.job_disk.transfers.iter().all(|(sector, len)| *sector * 512 + *len as u64 <= 4096));
}

#[test]
fn an_input_read_asks_the_disk_for_at_most_a_mebibyte() {
    let mut t = job();
    let size = INPUT_READ_MAX * 2 + 1000;
    t.w.inputs[1].size = size as u64;
    t.w.devices.job_disk = MemDisk::new((0..B_AT as usize + size).map(|i| (i % 253) as u8).collect());
    t.mem = vec![0; 4 * INPUT_READ_MAX];
    let fd = t.open(IN, "b.bin", 0, 0).unwrap();
    // The cap makes a short read, so the next iovec stays empty.
    set_iovs(&mut t.mem, IOVS, &[(DATA, 3 * INPUT_READ_MAX as u32), (0x10, 8)]);
    fd_read(&mut t.mem, &mut t.w, fd, IOVS, 2, RESULT).unwrap();
    assert_eq!(t.mem[0x10..0x18], [0; 8]);
    assert_eq!(u32_at(&t.mem, RESULT), INPUT_READ_MAX as u32);
    let expected: Vec<u8> = (B_AT as usize..B_AT as usize + INPUT_READ_MAX).map(|i| (i % 253) as u8).collect();
    assert_eq!(t.mem[DATA as usize..DATA as usize + INPUT_READ_MAX], expected);
    assert_eq!(t.w.devices.job_disk.transfers, [(B_AT / 512, INPUT_READ_MAX)]);
    assert_eq!(t.tell(fd), INPUT_READ_MAX as u64);
}

#[test]
fn a_failing_job_disk_is_eio() {
    let mut t = job();
    t.w.inputs[0].offset = 4096 - 2;
    let fd = t.open(IN, "a.txt", 0, 0).unwrap();
    assert_eq!(t.read(fd, &[4]), Err(errno::IO));
    assert_eq!(t.tell(fd), 0);
}

#[test]
fn out_files_are_created_written_overwritten_extended_and_read_back() {
    let mut t = job();
    let fd = t.open(OUT, "f.txt", OFLAGS_CREAT, 0).unwrap();
    assert_eq!(t.write(fd, &[b"hello", b" world"]), Ok(11));
    assert_eq!(t.tell(fd), 11);
    assert_eq!(t.out_file(&["f.txt"]), Some(&b"hello world"[..]));
    // Overwrite across the old end.
    assert_eq!(t.seek(fd, 6, 0), Ok(6));
    assert_eq!(t.write(fd, &[b"WORLD!!"]), Ok(7));
    assert_eq!(t.out_file(&["f.txt"]), Some(&b"hello WORLD!!"[..]));
    // Overwrite inside, then past the end: the gap reads as zeros.
    assert_eq!(t.seek(fd, 1, 0), Ok(1));
    assert_eq!(t.write(fd, &[b"E"]), Ok(1));
    assert_eq!(t.seek(fd, 2, 2), Ok(15));
    assert_eq!(t.write(fd, &[b"!"]), Ok(1));
    assert_eq!(t.out_file(&["f.txt"]), Some(&b"hEllo WORLD!!\0\0!"[..]));
    assert_eq!(t.seek(fd, 0, 0), Ok(0));
    assert_eq!(t.read_all(fd), b"hEllo WORLD!!\0\0!");
    assert_eq!(t.tell(fd), 16);
    // Reading spreads over iovecs, then stops at the end.
    assert_eq!(t.seek(fd, -4, 2), Ok(12));
    assert_eq!(t.read(fd, &[2, 3, 1]).unwrap(), (4, vec![b"!\0".to_vec(), vec![0, b'!', 0xaa], vec![0xaa]]));
    assert_eq!(t.tell(fd), 16);
    assert_eq!(t.seek(fd, 100, 0), Ok(100));
    assert_eq!(t.read(fd, &[2]).unwrap(), (0, vec![vec![0xaa; 2]]));
    assert_eq!(t.tell(fd), 100);
    // Another fd on the same file sees the writes and has its own position.
    let other = t.open(OUT, "f.txt", 0, 0).unwrap();
    assert_eq!(t.read(other, &[5]).unwrap().1[0], b"hEllo");
    assert_eq!(t.filestat(other).unwrap()[32..40], 16u64.to_le_bytes());
}

#[test]
fn append_writes_at_the_end_whatever_the_position() {
    let mut t = job();
    let fd = t.open(OUT, "log", OFLAGS_CREAT, 0).unwrap();
    t.write(fd, &[b"one\n"]).unwrap();
    let app = t.open(OUT, "log", 0, FDFLAGS_APPEND).unwrap();
    assert_eq!(t.seek(app, 0, 0), Ok(0));
    assert_eq!(t.write(app, &[b"two\n", b"three\n"]), Ok(10));
    assert_eq!(t.tell(app), 14);
    assert_eq!(t.out_file(&["log"]), Some(&b"one\ntwo\nthree\n"[..]));
    // The file as another fd wrote it: the plain fd still writes at its own position.
    assert_eq!(t.write(fd, &[b"ONE"]), Ok(3));
    assert_eq!(t.out_file(&["log"]), Some(&b"one\nONE\nthree\n"[..]));
    let mut stat = [0u8; 24];
    fd_fdstat_get(&mut t.mem, &mut t.w, app, RESULT).unwrap();
    stat.copy_from_slice(&t.mem[RESULT as usize..RESULT as usize + 24]);
    assert_eq!(u16::from_le_bytes([stat[2], stat[3]]), 1, "FDFLAGS_APPEND");
}

#[test]
fn a_file_removed_under_its_fd_is_ebadf() {
    let mut t = job();
    let fd = t.open(OUT, "gone", OFLAGS_CREAT, 0).unwrap();
    t.unlink(OUT, "gone").unwrap();
    assert_eq!(t.write(fd, &[b"x"]), Err(errno::BADF));
    assert_eq!(t.read(fd, &[1]), Err(errno::BADF));
    assert_eq!(t.seek(fd, 0, 2), Err(errno::BADF));
    assert_eq!(t.filestat(fd), Err(errno::BADF));
    // A directory in its place is no file either.
    t.mkdir(OUT, "gone").unwrap();
    assert_eq!(t.write(fd, &[b"x"]), Err(errno::BADF));
    assert_eq!(t.read(fd, &[1]), Err(errno::BADF));
    assert_eq!(t.filestat(fd), Err(errno::BADF));
}

#[test]
fn seek_and_tell_check_whence_the_result_and_the_fd() {
    let mut t = job();
    let fd = t.open(IN, "b.bin", 0, 0).unwrap();
    assert_eq!(t.seek(fd, 100, 0), Ok(100));
    assert_eq!(t.seek(fd, 50, 1), Ok(150));
    assert_eq!(t.seek(fd, -150, 1), Ok(0));
    assert_eq!(t.seek(fd, -1, 2), Ok(B_LEN as u64 - 1));
    assert_eq!(t.seek(fd, 10, 2), Ok(B_LEN as u64 + 10));
    t.mem[RESULT as usize..RESULT as usize + 8].fill(0xaa);
    for (offset, whence) in [(-1, 0), (-(B_LEN as i64) - 11, 1), (-(B_LEN as i64) - 1, 2), (0, 3), (0, -1)] {
        assert_eq!(t.seek(fd, offset, whence), Err(errno::INVAL), "{offset} from {whence}");
    }
    assert_eq!(t.seek(fd, i64::MAX, 0), Ok(i64::MAX as u64));
    assert_eq!(t.seek(fd, 1, 1), Err(errno::INVAL), "past i64::MAX");
    assert_eq!(t.tell(fd), i64::MAX as u64, "a refused seek leaves the position");
    for fd in [0, 1, 2, IN, OUT] {
        assert_eq!(t.seek(fd, 0, 0), Err(errno::SPIPE));
    }
    assert_eq!(t.seek(9, 0, 0), Err(errno::BADF));
    assert_eq!(fd_seek(&mut t.mem, &mut t.w, fd, 0, 0, END - 7), Err(errno::FAULT));
    assert_eq!(t.tell(fd), i64::MAX as u64, "a seek that cannot report its result does not move");
    assert_eq!(fd_tell(&mut t.mem, &mut t.w, fd, END - 8), Ok(()));
}

#[test]
fn paths_cannot_leave_their_directory() {
    let mut t = job();
    for path in ["..", "../in/a.txt", "a/../../x", "/etc/passwd", "/", "./.."] {
        assert_eq!(t.open(IN, path, 0, 0), Err(errno::NOTCAPABLE), "{path}");
        assert_eq!(t.open(OUT, path, OFLAGS_CREAT, 0), Err(errno::NOTCAPABLE), "{path}");
        assert_eq!(t.path_stat(IN, path), Err(errno::NOTCAPABLE), "{path}");
        assert_eq!(t.mkdir(OUT, path), Err(errno::NOTCAPABLE), "{path}");
        assert_eq!(t.unlink(OUT, path), Err(errno::NOTCAPABLE), "{path}");
    }
    assert_eq!(t.open(IN, "a\u{0}b", 0, 0), Err(errno::NAMETOOLONG));
    assert_eq!(t.open(OUT, &"n".repeat(256), OFLAGS_CREAT, 0), Err(errno::NAMETOOLONG));
    assert_eq!(t.open(OUT, &"n".repeat(255), OFLAGS_CREAT, 0), Ok(5));
    set(&mut t.mem, PATH, b"\xff");
    assert_eq!(path_open(&mut t.mem, &mut t.w, IN, (PATH, 1), 0, 0, RESULT), Err(errno::INVAL));
    assert_eq!(path_open(&mut t.mem, &mut t.w, IN, (END - 1, 2), 0, 0, RESULT), Err(errno::FAULT));
    assert_eq!(path_open(&mut t.mem, &mut t.w, IN, (u32::MAX, 1), 0, 0, RESULT), Err(errno::FAULT));
    assert_eq!(path_filestat_get(&mut t.mem, &mut t.w, IN, (END, 1), RESULT), Err(errno::FAULT));
    assert_eq!(path_create_directory(&mut t.mem, &mut t.w, OUT, (END, 1)), Err(errno::FAULT));
    assert_eq!(path_unlink_file(&mut t.mem, &mut t.w, OUT, (END, 1)), Err(errno::FAULT));
    // The fd of a refused open is not written.
    t.mem[RESULT as usize..RESULT as usize + 4].fill(0xaa);
    assert_eq!(t.open(IN, "missing", 0, 0), Err(errno::NOENT));
    assert_eq!(u32_at(&t.mem, RESULT), 0xaaaa_aaaa);
    // Nor is anything created or an fd taken when the fd cannot be written.
    let p = t.path("a.txt");
    assert_eq!(path_open(&mut t.mem, &mut t.w, IN, p, 0, 0, END - 3), Err(errno::FAULT));
    let p = t.path("new");
    assert_eq!(path_open(&mut t.mem, &mut t.w, OUT, p, OFLAGS_CREAT, 0, END - 3), Err(errno::FAULT));
    assert_eq!(t.out_file(&["new"]), None);
    assert_eq!(t.open(IN, "a.txt", 0, 0), Ok(6));
    assert_eq!(path_open(&mut t.mem, &mut t.w, IN, p, 0, 0, END - 4), Err(errno::NOENT));
}

#[test]
fn empty_and_dot_components_are_skipped() {
    let mut t = job();
    let fd = t.open(IN, "./a.txt", 0, 0).unwrap();
    assert_eq!(t.read_all(fd), A_TXT);
    let fd = t.open(IN, ".//a.txt/", 0, 0).unwrap();
    assert_eq!(t.read_all(fd), A_TXT);
    t.mkdir(OUT, "d").unwrap();
    let f = t.open(OUT, "d//./f", OFLAGS_CREAT, 0).unwrap();
    t.write(f, &[b"x"]).unwrap();
    assert_eq!(t.out_file(&["d", "f"]), Some(&b"x"[..]));
}

#[test]
fn in_is_read_only_and_flat() {
    let mut t = job();
    for (oflags, fdflags) in [(OFLAGS_CREAT, 0), (OFLAGS_TRUNC, 0), (OFLAGS_EXCL, 0), (0, FDFLAGS_APPEND)] {
        assert_eq!(t.open(IN, "a.txt", oflags, fdflags), Err(errno::ROFS), "{oflags} {fdflags}");
        assert_eq!(t.open(IN, "new", oflags, fdflags), Err(errno::ROFS), "{oflags} {fdflags}");
    }
    assert_eq!(t.open(IN, "a.txt", OFLAGS_DIRECTORY, 0), Err(errno::NOTDIR));
    assert_eq!(t.open(IN, "a.txt/x", 0, 0), Err(errno::NOENT));
    assert_eq!(t.open(IN, "nothing", 0, 0), Err(errno::NOENT));
    assert_eq!(t.mkdir(IN, "d"), Err(errno::ROFS));
    assert_eq!(t.unlink(IN, "a.txt"), Err(errno::ROFS));
    assert_eq!(t.rmdir(IN, "a.txt"), Err(errno::ROFS));
    // "." under /in is /in again, which lists the same.
    let dir = t.open(IN, ".", OFLAGS_DIRECTORY, 0).unwrap();
    assert_eq!(t.readdir(dir, 4096, 0).unwrap(), t.readdir(IN, 4096, 0).unwrap());
    assert_eq!(t.open(dir, "a.txt", 0, 0).map(|fd| t.read_all(fd)), Ok(A_TXT.to_vec()));
}

#[test]
fn opening_under_out_follows_the_flags() {
    let mut t = job();
    assert_eq!(t.open(OUT, "f", 0, 0), Err(errno::NOENT));
    assert_eq!(t.open(OUT, "f", OFLAGS_CREAT | OFLAGS_DIRECTORY, 0), Err(errno::NOENT));
    let fd = t.open(OUT, "f", OFLAGS_CREAT | OFLAGS_EXCL, 0).unwrap();
    t.write(fd, &[b"data"]).unwrap();
    assert_eq!(t.open(OUT, "f", OFLAGS_CREAT | OFLAGS_EXCL, 0), Err(errno::EXIST));
    // EXCL means something only with CREAT.
    assert!(t.open(OUT, "f", OFLAGS_EXCL, 0).is_ok());
    assert_eq!(t.open(OUT, "f", OFLAGS_DIRECTORY, 0), Err(errno::NOTDIR));
    // Opening again keeps the data; CREAT alone too; TRUNC empties it.
    let again = t.open(OUT, "f", OFLAGS_CREAT, 0).unwrap();
    assert_eq!(t.read_all(again), b"data");
    assert_eq!(t.out_file(&["f"]), Some(&b"data"[..]));
    t.open(OUT, "f", OFLAGS_TRUNC, 0).unwrap();
    assert_eq!(t.out_file(&["f"]), Some(&b""[..]));
    // Directories.
    t.mkdir(OUT, "d").unwrap();
    assert_eq!(t.open(OUT, "d", OFLAGS_CREAT | OFLAGS_EXCL, 0), Err(errno::EXIST));
    assert_eq!(t.open(OUT, "d", OFLAGS_CREAT, 0), Err(errno::ISDIR));
    assert_eq!(t.open(OUT, "d", OFLAGS_TRUNC, 0), Err(errno::ISDIR));
    let d = t.open(OUT, "d", OFLAGS_CREAT | OFLAGS_DIRECTORY, 0).unwrap();
    let plain = t.open(OUT, "d", 0, 0).unwrap();
    assert_eq!(t.write(plain, &[b"x"]), Err(errno::ISDIR));
    // Relative to an opened directory; its parents must exist and be directories.
    let g = t.open(d, "g", OFLAGS_CREAT, 0).unwrap();
    t.write(g, &[b"in d"]).unwrap();
    assert_eq!(t.out_file(&["d", "g"]), Some(&b"in d"[..]));
    assert_eq!(t.open(OUT, "missing/g", OFLAGS_CREAT, 0), Err(errno::NOENT));
    assert_eq!(t.open(OUT, "f/g", OFLAGS_CREAT, 0), Err(errno::NOTDIR));
    assert_eq!(t.open(OUT, "f/g", 0, 0), Err(errno::NOENT));
    // Only directories hold paths.
    for fd in [0, 1, 2, g] {
        assert_eq!(t.open(fd, "x", OFLAGS_CREAT, 0), Err(errno::NOTDIR));
        assert_eq!(t.mkdir(fd, "x"), Err(errno::NOTDIR));
        assert_eq!(t.path_stat(fd, "x"), Err(errno::NOTDIR));
    }
    assert_eq!(t.open(77, "x", OFLAGS_CREAT, 0), Err(errno::BADF));
    assert_eq!(t.mkdir(-1, "x"), Err(errno::BADF));
}

#[test]
fn fds_are_numbered_from_5_and_the_lowest_free_one_is_reused() {
    let mut t = job();
    let fds: Vec<i32> = (0..3).map(|_| t.open(IN, "a.txt", 0, 0).unwrap()).collect();
    assert_eq!(fds, [5, 6, 7]);
    assert_eq!(fd_close(&mut t.w, 6), Ok(()));
    assert_eq!(fd_close(&mut t.w, 6), Err(errno::BADF));
    assert_eq!(t.read(6, &[1]), Err(errno::BADF));
    assert_eq!(fd_sync(&mut t.w, 6), Err(errno::BADF));
    assert_eq!(t.open(IN, "b.bin", 0, 0), Ok(6));
    assert_eq!(t.read(6, &[3]).unwrap().1[0], b_bin()[..3]);
    assert_eq!(t.open(IN, "a.txt", 0, 0), Ok(8));
    fd_close(&mut t.w, 5).unwrap();
    fd_close(&mut t.w, 7).unwrap();
    assert_eq!(t.open(OUT, "x", OFLAGS_CREAT, 0), Ok(5));
    // The standard streams and the preopens stay open.
    for fd in 0..=4 {
        assert_eq!(fd_close(&mut t.w, fd), Err(errno::NOTCAPABLE), "{fd}");
        assert_eq!(fd_sync(&mut t.w, fd), Ok(()));
    }
    assert_eq!(t.write(1, &[b"still"]), Ok(5));
    for fd in [-1, 9, 1000, i32::MIN] {
        assert_eq!(fd_close(&mut t.w, fd), Err(errno::BADF), "{fd}");
        assert_eq!(fd_sync(&mut t.w, fd), Err(errno::BADF), "{fd}");
    }
}

#[test]
fn fdstat_and_filestat_say_what_each_fd_is() {
    let mut t = job();
    let input = t.open(IN, "b.bin", 0, 0).unwrap();
    let out = t.open(OUT, "o", OFLAGS_CREAT, 0).unwrap();
    t.write(out, &[b"12345"]).unwrap();
    for (fd, filetype) in [
        (0, FILETYPE_CHARACTER_DEVICE),
        (1, FILETYPE_CHARACTER_DEVICE),
        (2, FILETYPE_CHARACTER_DEVICE),
        (IN, FILETYPE_DIRECTORY),
        (OUT, FILETYPE_DIRECTORY),
        (input, FILETYPE_REGULAR_FILE),
        (out, FILETYPE_REGULAR_FILE),
    ] {
        t.mem[RESULT as usize..RESULT as usize + 24].fill(0xaa);
        fd_fdstat_get(&mut t.mem, &mut t.w, fd, RESULT).unwrap();
        let stat = &t.mem[RESULT as usize..RESULT as usize + 24];
        assert_eq!((stat[0], stat[1], &stat[2..8]), (filetype, 0, &[0u8; 6][..]), "fd {fd}");
        assert_eq!(u64_at(&t.mem, RESULT + 8), ALL_RIGHTS);
        assert_eq!(u64_at(&t.mem, RESULT + 16), ALL_RIGHTS);
        let stat = t.filestat(fd).unwrap();
        assert_eq!(stat[16], filetype, "fd {fd}");
        assert_eq!(stat[24..32], 1u64.to_le_bytes(), "nlink");
    }
    assert_eq!(ALL_RIGHTS, 0x3fff_ffff);
    let stat = t.filestat(input).unwrap();
    assert_eq!((u64_at(&stat, 8), u64_at(&stat, 32)), (101, B_LEN as u64));
    let stat = t.filestat(out).unwrap();
    assert_eq!((u64_at(&stat, 8), u64_at(&stat, 32)), (1_000 + out as u64, 5));
    assert_eq!(u64_at(&t.filestat(2).unwrap(), 8), 2);
    assert_eq!(u64_at(&t.filestat(OUT).unwrap(), 8), 4);
    assert_eq!(fd_fdstat_get(&mut t.mem, &mut t.w, 12, RESULT), Err(errno::BADF));
    assert_eq!(fd_fdstat_get(&mut t.mem, &mut t.w, 1, END - 23), Err(errno::FAULT));
    assert_eq!(t.filestat(12), Err(errno::BADF));
    assert_eq!(fd_filestat_get(&mut t.mem, &mut t.w, 1, END - 63), Err(errno::FAULT));
    assert_eq!(fd_filestat_get(&mut t.mem, &mut t.w, 1, END - 64), Ok(()));
}

fn u64_at_slice(stat: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(stat[at..at + 8].try_into().unwrap())
}

#[test]
fn path_filestat_finds_files_and_directories_in_both_trees() {
    let mut t = job();
    t.mkdir(OUT, "d").unwrap();
    let f = t.open(OUT, "d/f", OFLAGS_CREAT, 0).unwrap();
    t.write(f, &[b"abc"]).unwrap();
    let cases: [(i32, &str, u8, u64, u64); 5] = [
        (IN, "", FILETYPE_DIRECTORY, 0, 1),
        (IN, "b.bin", FILETYPE_REGULAR_FILE, B_LEN as u64, 101),
        (OUT, "", FILETYPE_DIRECTORY, 0, 2),
        (OUT, "d", FILETYPE_DIRECTORY, 0, 2),
        (OUT, "d/f", FILETYPE_REGULAR_FILE, 3, 3),
    ];
    for (dir, path, filetype, size, ino) in cases {
        let stat = t.path_stat(dir, path).unwrap();
        assert_eq!((stat[16], u64_at_slice(&stat, 32), u64_at_slice(&stat, 8)), (filetype, size, ino), "{path}");
    }
    let a = t.path_stat(IN, "a.txt").unwrap();
    assert_eq!((u64_at_slice(&a, 8), u64_at_slice(&a, 32)), (100, A_TXT.len() as u64));
    for (dir, path) in [(IN, "nothing"), (IN, "a.txt/x"), (OUT, "nothing"), (OUT, "d/nothing"), (OUT, "d/f/x")] {
        assert_eq!(t.path_stat(dir, path), Err(errno::NOENT), "{path}");
    }
    let p = t.path("d");
    assert_eq!(path_filestat_get(&mut t.mem, &mut t.w, OUT, p, END - 63), Err(errno::FAULT));
}

#[test]
fn directories_are_made_and_removed_only_where_that_makes_sense() {
    let mut t = job();
    assert_eq!(t.mkdir(OUT, "d"), Ok(()));
    assert_eq!(t.mkdir(OUT, "d"), Err(errno::EXIST));
    assert_eq!(t.mkdir(OUT, "d/e"), Ok(()));
    assert_eq!(t.mkdir(OUT, "x/y"), Err(errno::NOENT));
    assert_eq!(t.mkdir(OUT, ""), Err(errno::INVAL));
    let f = t.open(OUT, "d/f", OFLAGS_CREAT, 0).unwrap();
    assert_eq!(t.mkdir(OUT, "d/f"), Err(errno::EXIST));
    assert_eq!(t.mkdir(OUT, "d/f/g"), Err(errno::NOTDIR));
    fd_close(&mut t.w, f).unwrap();
    assert_eq!(t.rmdir(OUT, "d"), Err(errno::NOTEMPTY));
    assert_eq!(t.unlink(OUT, "d"), Err(errno::ISDIR));
    assert_eq!(t.rmdir(OUT, "d/f"), Err(errno::NOTDIR));
    assert_eq!(t.unlink(OUT, "d/nothing"), Err(errno::NOENT));
    assert_eq!(t.rmdir(OUT, "nothing"), Err(errno::NOENT));
    assert_eq!(t.unlink(OUT, ""), Err(errno::INVAL));
    assert_eq!(t.rmdir(OUT, "nothing/x"), Err(errno::NOENT));
    assert!(t.out_file(&["d", "f"]).is_some(), "refused removals removed nothing");
    assert_eq!(t.unlink(OUT, "d/f"), Ok(()));
    assert_eq!(t.out_file(&["d", "f"]), None);
    assert_eq!(t.unlink(OUT, "d/f"), Err(errno::NOENT));
    // Relative to an opened subdirectory.
    let d = t.open(OUT, "d", OFLAGS_DIRECTORY, 0).unwrap();
    assert_eq!(t.rmdir(d, "e"), Ok(()));
    assert_eq!(t.rmdir(OUT, "d"), Ok(()));
    assert_eq!(t.readdir(OUT, 4096, 2).unwrap().0, []);
    for fd in [0, 1, 2] {
        assert_eq!(t.unlink(fd, "x"), Err(errno::NOTDIR));
        assert_eq!(t.rmdir(fd, "x"), Err(errno::NOTDIR));
    }
    assert_eq!(t.rmdir(42, "x"), Err(errno::BADF));
}

fn entry(cookie: u64, name: &str, kind: u8) -> Dirent {
    (cookie, cookie + 9, name.into(), kind)
}

#[test]
fn readdir_lists_dot_dotdot_and_the_entries_from_a_cookie() {
    let mut t = job();
    let all = vec![
        entry(1, ".", FILETYPE_DIRECTORY),
        entry(2, "..", FILETYPE_DIRECTORY),
        entry(3, "a.txt", FILETYPE_REGULAR_FILE),
        entry(4, "b.bin", FILETYPE_REGULAR_FILE),
    ];
    let size = (4 * 24 + 1 + 2 + 5 + 5) as u32;
    assert_eq!(t.readdir(IN, 4096, 0).unwrap(), (all.clone(), size));
    assert_eq!(t.readdir(IN, 4096, 2).unwrap(), (all[2..].to_vec(), size - 24 * 2 - 3));
    assert_eq!(t.readdir(IN, 4096, 4).unwrap(), (Vec::new(), 0));
    assert_eq!(t.readdir(IN, 4096, i64::MAX).unwrap(), (Vec::new(), 0));
    assert_eq!(t.readdir(IN, 4096, -1).unwrap(), (Vec::new(), 0));
    // The buffer is filled exactly; the last entry may be cut.
    t.mem[DATA as usize..DATA as usize + 100].fill(0xaa);
    let (entries, used) = t.readdir(IN, 24 + 1 + 24 + 1, 0).unwrap();
    assert_eq!(used, 50);
    assert_eq!(entries[..1], all[..1]);
    assert_eq!(entries[1].0, 2);
    assert_eq!(t.mem[DATA as usize + 50], 0xaa, "nothing past the buffer");
    let (entries, used) = t.readdir(IN, 24 + 1, 0).unwrap();
    assert_eq!((entries, used), (all[..1].to_vec(), 25));
    assert_eq!(t.readdir(IN, 0, 0).unwrap(), (Vec::new(), 0));
    assert_eq!(fd_readdir(&mut t.mem, &mut t.w, IN, END - 10, 11, 0, RESULT), Err(errno::FAULT));
    assert_eq!(fd_readdir(&mut t.mem, &mut t.w, IN, END - 11, 11, 0, RESULT), Ok(()));
    assert_eq!(fd_readdir(&mut t.mem, &mut t.w, IN, DATA, 11, 0, END - 3), Err(errno::FAULT));
}

#[test]
fn readdir_of_out_and_its_subdirectories() {
    let mut t = job();
    t.mkdir(OUT, "sub").unwrap();
    t.open(OUT, "file", OFLAGS_CREAT, 0).unwrap();
    t.open(OUT, "sub/inner", OFLAGS_CREAT, 0).unwrap();
    let (entries, _) = t.readdir(OUT, 4096, 2).unwrap();
    assert_eq!(entries, [entry(3, "file", FILETYPE_REGULAR_FILE), entry(4, "sub", FILETYPE_DIRECTORY)]);
    let sub = t.open(OUT, "sub", OFLAGS_DIRECTORY, 0).unwrap();
    assert_eq!(t.readdir(sub, 4096, 2).unwrap().0, [entry(3, "inner", FILETYPE_REGULAR_FILE)]);
    let file = t.open(OUT, "file", 0, 0).unwrap();
    for fd in [0, 1, 2, file] {
        assert_eq!(t.readdir(fd, 4096, 0), Err(errno::NOTDIR), "{fd}");
    }
    assert_eq!(t.readdir(99, 4096, 0), Err(errno::BADF));
    // A directory removed under its fd.
    t.unlink(OUT, "sub/inner").unwrap();
    t.rmdir(OUT, "sub").unwrap();
    assert_eq!(t.readdir(sub, 4096, 0), Err(errno::BADF));
}

#[test]
fn only_fds_3_and_4_are_preopened() {
    let mut t = job();
    t.mem[RESULT as usize..RESULT as usize + 8].fill(0xaa);
    fd_prestat_get(&mut t.mem, &mut t.w, IN, RESULT).unwrap();
    assert_eq!(t.mem[RESULT as usize..RESULT as usize + 8], [0, 0, 0, 0, 3, 0, 0, 0]);
    fd_prestat_get(&mut t.mem, &mut t.w, OUT, RESULT).unwrap();
    assert_eq!(u32_at(&t.mem, RESULT + 4), 4);
    fd_prestat_dir_name(&mut t.mem, &mut t.w, IN, 0x10, 3).unwrap();
    assert_eq!(&t.mem[0x10..0x13], b"/in");
    t.mem[0x20..0x28].fill(0xaa);
    fd_prestat_dir_name(&mut t.mem, &mut t.w, OUT, 0x20, 100).unwrap();
    assert_eq!(&t.mem[0x20..0x25], b"/out\xaa");
    fd_prestat_dir_name(&mut t.mem, &mut t.w, OUT, 0x30, 2).unwrap();
    assert_eq!(&t.mem[0x30..0x33], b"/o\0");
    assert_eq!(fd_prestat_dir_name(&mut t.mem, &mut t.w, OUT, END - 3, 4), Err(errno::FAULT));
    assert_eq!(fd_prestat_dir_name(&mut t.mem, &mut t.w, OUT, END - 4, 4), Ok(()));
    assert_eq!(fd_prestat_get(&mut t.mem, &mut t.w, IN, END - 7), Err(errno::FAULT));
    // Directories opened later, even /out itself again, are not preopens.
    let again = t.open(OUT, ".", OFLAGS_DIRECTORY, 0).unwrap();
    let in_again = t.open(IN, "", 0, 0).unwrap();
    for fd in [0, 1, 2, again, in_again, 40, -1] {
        assert_eq!(fd_prestat_get(&mut t.mem, &mut t.w, fd, RESULT), Err(errno::BADF), "{fd}");
        assert_eq!(fd_prestat_dir_name(&mut t.mem, &mut t.w, fd, 0x10, 8), Err(errno::BADF), "{fd}");
    }
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
