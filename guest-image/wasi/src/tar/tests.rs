//! The job disk reader on well-formed and hostile archives, built here byte
//! by byte; the output writer's archives taken apart by a parser of these
//! tests' own, so that neither side vouches for the other.

use std::string::String;
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

fn input_bytes(image: &[u8], file: &InputFile) -> Vec<u8> {
    image[file.offset as usize..(file.offset + file.size) as usize].to_vec()
}

#[test]
fn a_job_disk_yields_its_module_arguments_environment_and_inputs() {
    let image = archive(&[
        (b"job/module.cwasm", b'0', b"\x7fELF-code"),
        (b"job/args", b'0', b"wc\0-l\0\0last\0"),
        (b"job/env", 0, b"A=1\0B=2\0"),
        (b"in/words.txt", b'0', &[b'w'; 700]),
        (b"in/", b'0', b"a name that is only the folder"),
        (b"in/sub", b'5', b""),
        (b"in/link", b'2', b""),
        (b"elsewhere/x", b'0', b"ignored"),
        (b"in/empty", b'0', b""),
    ]);
    let job = read(image.clone()).unwrap();
    assert_eq!(&job.module[..], b"\x7fELF-code");
    assert_eq!(job.args, [&b"wc"[..], b"-l", b"", b"last"]);
    assert_eq!(job.env, [&b"A=1"[..], b"B=2"]);
    let names: Vec<&str> = job.inputs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["words.txt", "empty"]);
    assert_eq!(input_bytes(&image, &job.inputs[0]), [b'w'; 700]);
    assert_eq!(job.inputs[1].size, 0);
    // Each entry's data starts right after its header, on a block boundary.
    assert_eq!(job.inputs[0].offset % BLOCK as u64, 0);
}

#[test]
fn a_prefix_field_is_joined_to_the_name_with_a_slash() {
    let mut image = Vec::new();
    image.extend_from_slice(&header(b"module.cwasm", b"job", 4, b'0'));
    image.extend_from_slice(b"wasm");
    image.resize(BLOCK * 2, 0);
    image.extend_from_slice(&header(b"deep.txt", b"in/a", 2, b'0'));
    image.extend_from_slice(b"hi");
    image.resize(BLOCK * 4, 0);
    let job = read(image.clone()).unwrap();
    assert_eq!(&job.module[..], b"wasm");
    assert_eq!(job.inputs[0].name, "a/deep.txt");
    assert_eq!(input_bytes(&image, &job.inputs[0]), b"hi");
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
    push_entry(&mut image, b"in/late", b'0', b"after the end");
    let job = read(image).unwrap();
    assert_eq!(&job.module[..], b"first");
    assert!(job.inputs.is_empty());
}

#[test]
fn a_header_in_the_last_block_of_the_disk_is_read() {
    let mut image = Vec::new();
    push_entry(&mut image, b"in/a", b'0', b"x");
    push_entry(&mut image, b"job/module.cwasm", b'0', b"");
    let job = read(image).unwrap();
    assert_eq!(&job.module[..], b"");
    assert_eq!(job.inputs.len(), 1);
}

#[test]
fn a_truncated_archive_ends_where_the_disk_does_or_is_refused_mid_entry() {
    let full = archive(&[(b"job/module.cwasm", b'0', b"m"), (b"in/a", b'0', b"a")]);
    // Cut after a whole entry: no end marker, the disk's end is the end.
    let job = read(full[..2 * BLOCK].to_vec()).unwrap();
    assert_eq!(&job.module[..], b"m");
    assert!(job.inputs.is_empty());
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

/// One entry of an archive as its header says, checked field by field.
#[derive(Debug, PartialEq)]
struct Parsed {
    path: String,
    kind: u8,
    mode: u64,
    data: Vec<u8>,
}

fn field_octal(field: &[u8]) -> u64 {
    let text = std::str::from_utf8(field).unwrap().trim_end_matches(['\0', ' ']);
    u64::from_str_radix(text, 8).unwrap_or_else(|_| panic!("not octal: {field:?}"))
}

fn cstr(field: &[u8]) -> String {
    String::from_utf8(field.split(|b| *b == 0).next().unwrap().to_vec()).unwrap()
}

/// Takes an archive apart; panics on anything a strict reader would refuse.
fn parse(image: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let h = &image[at..at + BLOCK];
        if h.iter().all(|b| *b == 0) {
            assert!(image[at + BLOCK..at + 2 * BLOCK].iter().all(|b| *b == 0), "the end marker is two zero blocks");
            return out;
        }
        let sum: u64 =
            h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
        assert_eq!(field_octal(&h[148..154]), sum, "checksum at {at}");
        assert_eq!(&h[154..156], b"\0 ");
        assert_eq!(&h[257..265], b"ustar\x0000");
        for (range, what) in [(108..116, "uid"), (116..124, "gid"), (136..148, "mtime")] {
            assert_eq!(field_octal(&h[range.clone()]), 0, "{what}");
            assert_eq!(h[range.end - 1], 0, "{what} ends in NUL");
        }
        assert_eq!(h[123], 0);
        let size = field_octal(&h[124..136]) as usize;
        let prefix = cstr(&h[345..500]);
        let name = cstr(&h[..100]);
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let data = image[at + BLOCK..at + BLOCK + size].to_vec();
        let end = at + BLOCK + size.next_multiple_of(BLOCK);
        assert!(image[at + BLOCK + size..end].iter().all(|b| *b == 0), "padding after {path}");
        out.push(Parsed { path, kind: h[156], mode: field_octal(&h[100..108]), data });
        at = end;
    }
}

fn file(path: &str, data: &[u8]) -> Parsed {
    Parsed { path: path.into(), kind: b'0', mode: 0o644, data: data.to_vec() }
}

fn dir(path: &str) -> Parsed {
    Parsed { path: format!("{path}/"), kind: b'5', mode: 0o755, data: Vec::new() }
}

fn tree(entries: &[(&str, Option<&[u8]>)]) -> Node {
    let mut root = Node::dir();
    for (path, data) in entries {
        let parts: Vec<String> = path.split('/').map(String::from).collect();
        let node = match data {
            Some(d) => Node::File(d.to_vec()),
            None => Node::dir(),
        };
        root.parent_mut(&parts).unwrap().insert(parts.last().unwrap().clone(), node);
    }
    root
}

#[test]
fn the_outputs_are_written_as_an_archive_that_reads_back() {
    let big: Vec<u8> = (0..CHUNK + 1000).map(|i| (i % 253) as u8).collect();
    let out = tree(&[
        ("a.txt", Some(b"hello")),
        ("d", None),
        ("d/big", Some(&big)),
        ("d/e", None),
        ("d/exact", Some(&[1; BLOCK])),
        ("empty", Some(b"")),
    ]);
    let mut disk = MemDisk::zeroed(1024);
    let size = write_outputs(&out, &mut disk).unwrap();
    assert_eq!(
        parse(&disk.data),
        [
            file("a.txt", b"hello"),
            dir("d"),
            file("d/big", &big),
            dir("d/e"),
            file("d/exact", &[1; BLOCK]),
            file("empty", b"")
        ]
    );
    let expected = 6 * BLOCK + BLOCK + (CHUNK + 1000).next_multiple_of(BLOCK) + BLOCK + 2 * BLOCK;
    assert_eq!(size, expected as u64);
    assert!(disk.data[expected..].iter().all(|b| *b == 0), "nothing written past the archive");
    // Whole chunks while there is more, then the rest.
    assert_eq!(disk.transfers, [(0, CHUNK), ((CHUNK / SECTOR) as u64, expected - CHUNK)]);
}

#[test]
fn an_empty_tree_is_just_the_end_marker() {
    let mut disk = MemDisk::new(vec![0xaa; 4 * BLOCK]);
    assert_eq!(write_outputs(&Node::dir(), &mut disk).unwrap(), 2 * BLOCK as u64);
    assert!(disk.data[..2 * BLOCK].iter().all(|b| *b == 0));
    assert!(disk.data[2 * BLOCK..].iter().all(|b| *b == 0xaa));
}

#[test]
fn long_paths_use_the_prefix_field_and_the_longest_fail() {
    let name100 = "n".repeat(100);
    let ok = [
        name100.clone(),
        format!("{}/{}", "p".repeat(155), "n".repeat(100)),
        format!("{}/x", "p".repeat(155)),
        format!("a/{}", "n".repeat(100)),
        format!("{}/b/{}", "p".repeat(80), "n".repeat(99)),
    ];
    for path in &ok {
        let mut disk = MemDisk::zeroed(8);
        let mut writer = TarWriter::new(&mut disk);
        writer.entry(path, Some(b"x")).unwrap();
        writer.finish().unwrap();
        assert_eq!(parse(&disk.data), [file(path, b"x")], "{}", path.len());
    }
    let too_long = [
        "n".repeat(101),
        format!("{}/{}", "p".repeat(156), "n".repeat(100)),
        format!("{}/{}", "p".repeat(155), "n".repeat(101)),
        format!("/{}", "n".repeat(100)),
    ];
    for path in &too_long {
        let mut disk = MemDisk::zeroed(8);
        let mut writer = TarWriter::new(&mut disk);
        assert!(matches!(writer.entry(path, Some(b"x")), Err(WriteError::NameTooLong)), "{}", path.len());
    }
    // A directory's trailing slash makes a 100-byte name 101: it moves to
    // the prefix, with an empty name.
    let mut disk = MemDisk::zeroed(8);
    let mut writer = TarWriter::new(&mut disk);
    writer.entry(&"d".repeat(100), None).unwrap();
    writer.finish().unwrap();
    assert_eq!(parse(&disk.data), [dir(&"d".repeat(100))]);
    assert_eq!(disk.data[0], 0);
}

#[test]
fn an_archive_that_does_not_fit_is_refused_and_one_that_just_fits_is_not() {
    let out = tree(&[("f", Some(&[9; 3 * BLOCK]))]);
    // Header, three data blocks, end marker.
    let mut exact = MemDisk::zeroed(6);
    assert_eq!(write_outputs(&out, &mut exact).unwrap(), 6 * BLOCK as u64);
    assert_eq!(parse(&exact.data), [file("f", &[9; 3 * BLOCK])]);
    let mut short = MemDisk::zeroed(5);
    assert!(matches!(write_outputs(&out, &mut short), Err(WriteError::Full)));
    assert!(short.transfers.is_empty(), "nothing written to a disk it does not fit");
    // The same at a chunk boundary: the first chunk fits, the second not.
    let big = tree(&[("f", Some(&vec![1; CHUNK]))]);
    let mut disk = MemDisk::zeroed(CHUNK / SECTOR + 2);
    assert!(matches!(write_outputs(&big, &mut disk), Err(WriteError::Full)));
    assert_eq!(disk.transfers, [(0, CHUNK)]);
    assert_eq!(format!("{:?}", WriteError::<()>::Full), "the output disk is full");
    assert_eq!(format!("{:?}", WriteError::<()>::NameTooLong), "a path does not fit in a ustar header");
    assert_eq!(format!("{:?}", WriteError::Disk(3)), "disk error 3");
}

#[test]
fn a_failing_disk_write_is_passed_on() {
    struct Failing;
    impl BlockDevice for Failing {
        type Error = u8;
        fn capacity_sectors(&self) -> u64 {
            100
        }
        fn read(&mut self, _: u64, _: &mut [u8]) -> Result<(), u8> {
            Err(1)
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), u8> {
            Err(2)
        }
    }
    assert!(matches!(write_outputs(&tree(&[("f", Some(b"x"))]), &mut Failing), Err(WriteError::Disk(2))));
}
