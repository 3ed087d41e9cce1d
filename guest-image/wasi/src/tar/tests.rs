//! The job disk reader on well-formed and hostile archives, built here byte
//! by byte; the output writer's archives taken apart by a parser of these
//! tests' own, so that neither side vouches for the other.

use std::vec::Vec;

use super::*;
use crate::testing::{DiskError, MemDisk};

/// A ustar header with a correct checksum.
fn header(name: &[u8], prefix: &[u8], size: u64, kind: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    let size = format!("{size:011o}");
    h[124..124 + size.len()].copy_from_slice(size.as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    seal(&mut h);
    h
}

fn seal(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn push_entry(archive: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
    archive.extend_from_slice(&header(name, b"", data.len() as u64, kind));
    archive.extend_from_slice(data);
    archive.resize(archive.len().next_multiple_of(BLOCK), 0);
}

fn archive(entries: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in entries {
        push_entry(&mut out, name, *kind, data);
    }
    out.extend_from_slice(&[0; 2 * BLOCK]);
    out
}

fn read(image: Vec<u8>) -> Result<Job, TarError<DiskError>> {
    read_job(&mut MemDisk::new(image))
}

#[test]
fn a_job_disk_yields_its_module_arguments_environment_and_preopens() {
    let image = archive(&[
        (b"job/module.cwasm", b'0', b"\x7fELF-code"),
        (b"job/args", b'0', b"wc\0-l\0\0last\0"),
        (b"job/env", 0, b"A=1\0B=2\0"),
        (b"in/words.txt", b'0', &[b'w'; 700]),
        (b"job/preopens", b'0', b"/in\0/out\0/\0"),
        (b"elsewhere/x", b'0', b"ignored"),
    ]);
    let job = read(image).unwrap();
    assert_eq!(&job.module[..], b"\x7fELF-code");
    assert_eq!(job.args, [&b"wc"[..], b"-l", b"", b"last"]);
    assert_eq!(job.env, [&b"A=1"[..], b"B=2"]);
    assert_eq!(job.preopens, ["/in", "/out", "/"]);
}

#[test]
fn preopens_that_are_not_utf8_are_refused_and_none_is_none() {
    let bad = archive(&[(b"job/module.cwasm", b'0', b"m"), (b"job/preopens", b'0', b"/\xff\0")]);
    assert!(matches!(read(bad), Err(TarError::BadHeader(_))));
    let none = read(archive(&[(b"job/module.cwasm", b'0', b"m")])).unwrap();
    assert!(none.preopens.is_empty());
}

#[test]
fn a_prefix_field_is_joined_to_the_name_with_a_slash() {
    let mut image = Vec::new();
    image.extend_from_slice(&header(b"module.cwasm", b"job", 4, b'0'));
    image.extend_from_slice(b"wasm");
    image.resize(BLOCK * 2, 0);
    image.extend_from_slice(&header(b"preopens", b"job", 3, b'0'));
    image.extend_from_slice(b"/a\0");
    image.resize(BLOCK * 4, 0);
    let job = read(image.clone()).unwrap();
    assert_eq!(&job.module[..], b"wasm");
    assert_eq!(job.preopens, ["/a"]);
}

#[test]
fn arguments_split_on_nul_with_or_without_the_last_one() {
    assert_eq!(split_nul(Vec::new()), Vec::<Vec<u8>>::new());
    assert_eq!(split_nul(b"\0".to_vec()), [b""]);
    assert_eq!(split_nul(b"a\0\0b".to_vec()), [&b"a"[..], b"", b"b"]);
    assert_eq!(split_nul(b"a\0\0b\0".to_vec()), [&b"a"[..], b"", b"b"]);
}

#[test]
fn a_disk_without_a_module_is_refused() {
    let image = archive(&[(b"job/args", b'0', b"x\0"), (b"job/module.cwasm", b'5', b"")]);
    assert!(matches!(read(image), Err(TarError::Missing("job/module.cwasm"))));
    // The uncompiled module of a host that predates compiling is not code.
    let image = archive(&[(b"job/module.wasm", b'0', b"\0asm\x01\0\0\0")]);
    assert!(matches!(read(image), Err(TarError::Missing("job/module.cwasm"))));
    assert!(matches!(read(vec![0; 4 * BLOCK]), Err(TarError::Missing(_))));
    assert!(matches!(read(Vec::new()), Err(TarError::Missing(_))));
}

#[test]
fn the_first_zero_block_ends_the_archive() {
    let mut image = archive(&[(b"job/module.cwasm", b'0', b"first")]);
    push_entry(&mut image, b"job/module.cwasm", b'0', b"after the end");
    push_entry(&mut image, b"job/preopens", b'0', b"/late\0");
    let job = read(image).unwrap();
    assert_eq!(&job.module[..], b"first");
    assert!(job.preopens.is_empty());
}

#[test]
fn a_header_in_the_last_block_of_the_disk_is_read() {
    let mut image = Vec::new();
    push_entry(&mut image, b"job/preopens", b'0', b"/x\0");
    push_entry(&mut image, b"job/module.cwasm", b'0', b"");
    let job = read(image).unwrap();
    assert_eq!(&job.module[..], b"");
    assert_eq!(job.preopens, ["/x"]);
}

#[test]
fn a_truncated_archive_ends_where_the_disk_does_or_is_refused_mid_entry() {
    let full = archive(&[(b"job/module.cwasm", b'0', b"m"), (b"job/preopens", b'0', b"/\0")]);
    // Cut after a whole entry: no end marker, the disk's end is the end.
    let job = read(full[..2 * BLOCK].to_vec()).unwrap();
    assert_eq!(&job.module[..], b"m");
    assert!(job.preopens.is_empty());
    // Cut between a header and its data.
    assert!(matches!(read(full[..3 * BLOCK].to_vec()), Err(TarError::BadHeader(1024))));
}

#[test]
fn a_wrong_checksum_names_the_header_it_is_in() {
    let mut image = archive(&[(b"job/module.cwasm", b'0', b"m"), (b"in/a", b'0', b"a")]);
    image[2 * BLOCK + 10] ^= 1;
    assert!(matches!(read(image.clone()), Err(TarError::BadHeader(1024))));
    // A checksum off by one in either direction.
    for delta in [1i64, -1] {
        let mut h = header(b"job/module.cwasm", b"", 0, b'0');
        let sum = octal(&h[148..156]).unwrap() as i64 + delta;
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut image = h.to_vec();
        image.extend_from_slice(&[0; 2 * BLOCK]);
        assert!(matches!(read(image), Err(TarError::BadHeader(0))), "checksum off by {delta}");
    }
}

#[test]
fn the_checksum_counts_its_own_field_as_spaces() {
    // Bytes in the checksum field other than its digits do not count: a
    // header whose field ends in NUL NUL instead of NUL space is valid too.
    let mut h = header(b"job/module.cwasm", b"", 0, b'0');
    h[155] = 0;
    let mut image = h.to_vec();
    image.extend_from_slice(&[0; 2 * BLOCK]);
    assert_eq!(&read(image).unwrap().module[..], b"");
}

#[test]
fn a_header_that_is_not_ustar_is_refused() {
    let mut h = header(b"job/module.cwasm", b"", 0, b'0');
    h[257..263].copy_from_slice(b"ustaR\0");
    seal(&mut h);
    let mut image = h.to_vec();
    image.extend_from_slice(&[0; 2 * BLOCK]);
    assert!(matches!(read(image), Err(TarError::BadHeader(0))));
}

#[test]
fn a_size_past_the_disk_is_refused_before_anything_is_read() {
    for (name, size) in
        [(&b"job/module.cwasm"[..], 2 * BLOCK as u64 + 1), (b"in/big", 1 << 32), (b"job/args", 0o77777777777)]
    {
        let mut image = header(name, b"", size, b'0').to_vec();
        image.extend_from_slice(&[0; 2 * BLOCK]);
        let mut disk = MemDisk::new(image);
        assert!(matches!(read_job(&mut disk), Err(TarError::BadHeader(0))), "{size}");
        assert_eq!(disk.transfers, [(0, BLOCK)], "only the header was read");
    }
    // Data that ends exactly at the end of the disk fits.
    let mut image = header(b"job/module.cwasm", b"", 2 * BLOCK as u64, b'0').to_vec();
    image.extend_from_slice(&[7; 2 * BLOCK]);
    assert_eq!(&read(image).unwrap().module[..], &[7; 2 * BLOCK][..]);
}

#[test]
fn octal_fields_skip_leading_spaces_and_stop_at_the_first_non_digit() {
    assert_eq!(octal(b"  0017 \0"), Some(15));
    assert_eq!(octal(b"00000001750\0"), Some(1000));
    assert_eq!(octal(b"777777777777"), Some(0o777777777777));
    assert_eq!(octal(b"\0\0"), Some(0));
    assert_eq!(octal(b"8"), Some(0));
    assert_eq!(octal(&[b'7'; 30]), None, "a value past 64 bits");
}

#[test]
fn a_module_larger_than_one_request_is_read_in_requests_of_at_most_a_mebibyte() {
    let module: Vec<u8> = (0..(REQUEST_MAX * 5 / 2 + 3)).map(|i| (i % 251) as u8).collect();
    let mut disk = MemDisk::new(archive(&[(b"job/module.cwasm", b'0', &module)]));
    let job = read_job(&mut disk).unwrap();
    assert_eq!(&job.module[..], &module[..]);
    assert_eq!(job.module.as_ptr() as usize % 4096, 0, "compiled code runs where it lies: page-aligned");
    let reads: Vec<(u64, usize)> = disk.transfers[1..].to_vec();
    let data_sector = (BLOCK / SECTOR) as u64;
    let per_request = (REQUEST_MAX / SECTOR) as u64;
    assert_eq!(
        reads[..3],
        [
            (data_sector, REQUEST_MAX),
            (data_sector + per_request, REQUEST_MAX),
            (data_sector + 2 * per_request, REQUEST_MAX / 2 + SECTOR)
        ]
    );
}

#[test]
fn a_disk_error_is_passed_on() {
    // A disk whose every read past the first header fails.
    struct Failing(MemDisk);
    impl BlockDevice for Failing {
        type Error = &'static str;
        fn capacity_sectors(&self) -> u64 {
            self.0.capacity_sectors()
        }
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), &'static str> {
            if sector > 0 {
                return Err("broken");
            }
            self.0.read(sector, buf).map_err(|_| "unexpected")
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), &'static str> {
            Err("read-only")
        }
    }
    let mut disk = Failing(MemDisk::new(archive(&[(b"job/module.cwasm", b'0', b"m")])));
    assert!(matches!(read_job(&mut disk), Err(TarError::Disk("broken"))));
    assert_eq!(format!("{:?}", TarError::Disk("broken")), "disk error \"broken\"");
    assert_eq!(format!("{:?}", TarError::<()>::BadHeader(512)), "bad archive header at byte 512");
    assert_eq!(format!("{:?}", TarError::<()>::Missing("job/module.cwasm")), "job/module.cwasm is missing");
}
