//! Output archives built by hand, header byte by header byte, the way a
//! hostile guest could write them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::job::{create_output_image, extract_outputs, ArchiveError, EntryProblem, HeaderProblem, OutputFile};

const MIB: u64 = 1 << 20;

/// A ustar header with a correct checksum.
fn header(name: &str, typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    fix_checksum(&mut h);
    h
}

fn fix_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// The archive's bytes; [`Archive::write`] ends it with two zero blocks and
/// pads it to a page, as the guest does.
#[derive(Default)]
struct Archive(Vec<u8>);

impl Archive {
    fn raw(mut self, header: [u8; 512], data: &[u8]) -> Archive {
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Archive {
        self.raw(header(name, b'0', data.len() as u64), data)
    }

    fn dir(self, name: &str) -> Archive {
        self.raw(header(name, b'5', 0), &[])
    }

    fn write(mut self, image: &Path) {
        self.0.extend_from_slice(&[0; 1024]);
        self.0.resize(self.0.len().next_multiple_of(4096), 0);
        fs::write(image, self.0).unwrap();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    image: PathBuf,
    dest: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    Setup { image: root.join("out.img"), dest: root.join("dest"), root, _tmp: tmp }
}

impl Setup {
    fn extract(&self, archive: Archive, max_bytes: u64) -> Result<crate::job::OutputSummary, ArchiveError> {
        archive.write(&self.image);
        extract_outputs(&self.image, &self.dest, max_bytes)
    }

    /// Every path under the setup's root except the image, relative to it,
    /// for checking that a refused archive wrote nothing anywhere.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                out.push(path.clone());
                if path.symlink_metadata().unwrap().is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out.retain(|p| p != &self.image);
        let mut out: Vec<String> =
            out.iter().map(|p| p.strip_prefix(&self.root).unwrap().to_str().unwrap().to_owned()).collect();
        out.sort();
        out
    }
}

fn entry_problem(e: ArchiveError) -> EntryProblem {
    match e {
        ArchiveError::Entry { problem, .. } => problem,
        other => panic!("not an entry error: {other}"),
    }
}

#[test]
fn a_nested_tree_extracts() {
    let s = setup();
    let archive = Archive::default()
        .file("result.txt", b"42\n")
        .dir("sub/")
        .file("sub/x.txt", &[7; 1000])
        .file("deep/er/y", b"implicit parents")
        .dir("empty");
    let summary = s.extract(archive, MIB).unwrap();
    assert_eq!(fs::read(s.dest.join("result.txt")).unwrap(), b"42\n");
    assert_eq!(fs::read(s.dest.join("sub/x.txt")).unwrap(), [7; 1000]);
    assert_eq!(fs::read(s.dest.join("deep/er/y")).unwrap(), b"implicit parents");
    assert!(s.dest.join("empty").is_dir());
    let file = |p: &str, bytes| OutputFile { path: p.into(), bytes };
    assert_eq!(summary.files, [file("deep/er/y", 16), file("result.txt", 3), file("sub/x.txt", 1000)]);
    assert_eq!(summary.bytes, 1019);
}

#[test]
fn the_prefix_field_is_part_of_the_name() {
    let s = setup();
    let mut h = header("file.txt", b'0', 2);
    h[345..353].copy_from_slice(b"pre/fix/");
    h[352] = 0; // "pre/fix" without the trailing slash, as ustar writers do
    fix_checksum(&mut h);
    s.extract(Archive::default().raw(h, b"hi"), MIB).unwrap();
    assert_eq!(fs::read(s.dest.join("pre/fix/file.txt")).unwrap(), b"hi");
}

#[test]
fn an_all_zero_image_is_an_empty_archive() {
    let s = setup();
    create_output_image(&s.image, 1 << 16).unwrap();
    let summary = extract_outputs(&s.image, &s.dest, MIB).unwrap();
    assert!(summary.files.is_empty() && summary.bytes == 0);
    assert!(s.dest.is_dir(), "dest is created even when empty");
}

#[test]
fn an_archive_filling_the_image_needs_no_end_marker() {
    let s = setup();
    let mut bytes = header("a", b'0', 512).to_vec();
    bytes.extend_from_slice(&[1; 512]);
    fs::write(&s.image, bytes).unwrap();
    extract_outputs(&s.image, &s.dest, MIB).unwrap();
    assert_eq!(fs::read(s.dest.join("a")).unwrap(), [1; 512]);
}

#[test]
fn a_last_header_that_ends_the_image_is_read() {
    let s = setup();
    fs::write(&s.image, header("empty", b'0', 0)).unwrap();
    let summary = extract_outputs(&s.image, &s.dest, MIB).unwrap();
    assert_eq!(summary.files, [OutputFile { path: "empty".into(), bytes: 0 }]);
}

#[test]
fn an_image_may_end_inside_the_last_entrys_padding() {
    let s = setup();
    let mut bytes = header("a", b'0', 600).to_vec();
    bytes.extend_from_slice(&[1; 600]);
    bytes.resize(1536, 0);
    bytes.extend_from_slice(&header("b", b'0', 100));
    bytes.extend_from_slice(&[2; 100]);
    fs::write(&s.image, bytes).unwrap();
    let summary = extract_outputs(&s.image, &s.dest, MIB).unwrap();
    assert_eq!(summary.bytes, 700);
    assert_eq!(fs::read(s.dest.join("b")).unwrap(), [2; 100]);
}

#[test]
fn escaping_names_are_refused() {
    let cases: &[(&str, EntryProblem)] = &[
        ("../escape", EntryProblem::DotComponent),
        ("/etc/passwd", EntryProblem::Absolute),
        ("a/../../b", EntryProblem::DotComponent),
        ("./x", EntryProblem::DotComponent),
        ("a/./x", EntryProblem::DotComponent),
        ("..", EntryProblem::DotComponent),
        ("a//b", EntryProblem::EmptyComponent),
        ("", EntryProblem::EmptyName),
        ("a\0b", EntryProblem::Nul),
        ("f/", EntryProblem::TrailingSlash),
    ];
    for (name, expected) in cases {
        let s = setup();
        let e = s.extract(Archive::default().file(name, b"x"), MIB).unwrap_err();
        assert_eq!(&entry_problem(e), expected, "for {name:?}");
        assert_eq!(s.tree(), ["dest"], "{name:?} wrote something");
    }
    let s = setup();
    let e = s.extract(Archive::default().dir("../up/"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::DotComponent);
    assert!(!s.root.join("up").exists());
}

#[test]
fn refusals_name_the_entry() {
    let s = setup();
    let e = s.extract(Archive::default().file("ok", b"").file("../escape", b"x"), MIB).unwrap_err();
    assert_eq!(e.to_string(), "output entry \"../escape\" (header at byte 512): '.' or '..' path component");
    assert!(s.dest.join("ok").exists(), "entries before the refused one stay");
    // After an entry with data, its padding counts too.
    let s = setup();
    let e = s.extract(Archive::default().file("ok", &[1; 513]).file("../escape", b"x"), MIB).unwrap_err();
    assert_eq!(e.to_string(), "output entry \"../escape\" (header at byte 1536): '.' or '..' path component");
}

#[test]
fn links_devices_fifos_and_extensions_are_refused() {
    let cases: &[(u8, EntryProblem)] = &[
        (b'1', EntryProblem::Type("hard link")),
        (b'2', EntryProblem::Type("symbolic link")),
        (b'3', EntryProblem::Type("character device")),
        (b'4', EntryProblem::Type("block device")),
        (b'6', EntryProblem::Type("FIFO")),
        (b'7', EntryProblem::Type("contiguous file")),
        (b'x', EntryProblem::Type("PAX extended header")),
        (b'g', EntryProblem::Type("PAX global header")),
        (b'L', EntryProblem::Type("GNU long name")),
        (b'K', EntryProblem::Type("GNU long link name")),
        (b'Z', EntryProblem::UnknownType(b'Z')),
    ];
    for (typeflag, expected) in cases {
        let s = setup();
        let mut h = header("link", *typeflag, 0);
        h[157..167].copy_from_slice(b"/etc/shado"); // linkname, for the link types
        fix_checksum(&mut h);
        let e = s.extract(Archive::default().raw(h, &[]), MIB).unwrap_err();
        assert_eq!(&entry_problem(e), expected, "for type {:?}", *typeflag as char);
        assert_eq!(s.tree(), ["dest"]);
    }
    // A PAX header with a payload that would rename the next entry.
    let s = setup();
    let pax = b"30 path=../../../../etc/passwd\n";
    let archive = Archive::default().raw(header("PaxHeader/x", b'x', pax.len() as u64), pax).file("x", b"x");
    assert_eq!(entry_problem(s.extract(archive, MIB).unwrap_err()), EntryProblem::Type("PAX extended header"));
}

#[test]
fn a_symlink_already_in_dest_is_never_followed() {
    let s = setup();
    let elsewhere = s.root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::create_dir(&s.dest).unwrap();
    symlink(&elsewhere, s.dest.join("link")).unwrap();

    let e = s.extract(Archive::default().file("link/file", b"pwned"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::NotADirectory);
    let e = s.extract(Archive::default().dir("link/sub/"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::NotADirectory);
    let e = s.extract(Archive::default().dir("link"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::NotADirectory);
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn an_existing_file_is_replaced_not_written_through() {
    let s = setup();
    let elsewhere = s.root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("target"), "precious").unwrap();
    fs::write(elsewhere.join("hard"), "precious").unwrap();
    fs::create_dir(&s.dest).unwrap();
    symlink(elsewhere.join("target"), s.dest.join("soft")).unwrap();
    fs::hard_link(elsewhere.join("hard"), s.dest.join("hard")).unwrap();
    fs::write(s.dest.join("plain"), "old and longer").unwrap();

    let archive = Archive::default().file("soft", b"new").file("hard", b"new").file("plain", b"new");
    s.extract(archive, MIB).unwrap();
    for name in ["soft", "hard", "plain"] {
        let path = s.dest.join(name);
        assert!(path.symlink_metadata().unwrap().is_file(), "{name}");
        assert_eq!(fs::read(path).unwrap(), b"new", "{name}");
    }
    assert_eq!(fs::read(elsewhere.join("target")).unwrap(), b"precious");
    assert_eq!(fs::read(elsewhere.join("hard")).unwrap(), b"precious");
}

#[test]
fn files_and_directories_in_the_way() {
    let s = setup();
    fs::create_dir_all(s.dest.join("d")).unwrap();
    fs::write(s.dest.join("f"), "").unwrap();
    let e = s.extract(Archive::default().file("d", b"x"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::DirectoryInTheWay);
    let e = s.extract(Archive::default().dir("f/"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::NotADirectory);
    let e = s.extract(Archive::default().file("f/g", b"x"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::NotADirectory);
    // An existing directory is reused.
    s.extract(Archive::default().dir("d/").file("d/x", b"1"), MIB).unwrap();
}

#[test]
fn a_size_beyond_the_image_is_an_error() {
    let s = setup();
    let e = s.extract(Archive::default().raw(header("huge", b'0', 0o77777777777), b"x"), MIB).unwrap_err();
    let image_len = fs::metadata(&s.image).unwrap().len();
    let expected = EntryProblem::Truncated { declared: 0o77777777777, available: image_len - 512 };
    assert_eq!(entry_problem(e), expected);
    assert_eq!(s.tree(), ["dest"]);
    // What is available is counted from the entry's own header.
    let s = setup();
    let archive = Archive::default().file("first", b"1").raw(header("huge", b'0', 0o77777777777), b"x");
    let e = s.extract(archive, MIB).unwrap_err();
    let image_len = fs::metadata(&s.image).unwrap().len();
    let expected = EntryProblem::Truncated { declared: 0o77777777777, available: image_len - 1024 - 512 };
    assert_eq!(entry_problem(e), expected);
}

#[test]
fn bad_headers_are_errors() {
    let s = setup();
    let mut h = header("a", b'0', 1);
    h[0] = b'b'; // changes the sum after the checksum was written
    let e = s.extract(Archive::default().raw(h, b"x"), MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { offset: 0, problem: HeaderProblem::Checksum { .. } }), "{e}");

    let mut h = header("a", b'0', 1);
    h[257..265].copy_from_slice(b"ustar  \0"); // GNU magic
    fix_checksum(&mut h);
    let e = s.extract(Archive::default().raw(h, b"x"), MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { problem: HeaderProblem::NotUstar, .. }), "{e}");

    let mut h = header("a", b'0', 1);
    h[263..265].copy_from_slice(b"  "); // the POSIX magic with another version
    fix_checksum(&mut h);
    let e = s.extract(Archive::default().raw(h, b"x"), MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { problem: HeaderProblem::NotUstar, .. }), "{e}");

    let mut h = header("a", b'0', 1);
    h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]); // GNU base-256
    fix_checksum(&mut h);
    let e = s.extract(Archive::default().raw(h, b"x"), MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { problem: HeaderProblem::BadNumber { field: "size" }, .. }), "{e}");

    let mut h = header("a", b'0', 1);
    h[124..136].copy_from_slice(b"00000000001x");
    fix_checksum(&mut h);
    let e = s.extract(Archive::default().raw(h, b"x"), MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { problem: HeaderProblem::BadNumber { .. }, .. }), "{e}");

    let mut bytes = header("a", b'0', 0).to_vec();
    bytes.extend_from_slice(&[1; 488]); // not a zero block, and the image ends inside it
    fs::write(&s.image, bytes).unwrap();
    let e = extract_outputs(&s.image, &s.dest, MIB).unwrap_err();
    assert!(matches!(e, ArchiveError::Header { offset: 512, problem: HeaderProblem::Truncated }), "{e}");
}

#[test]
fn directories_with_data_are_refused() {
    let s = setup();
    let e = s.extract(Archive::default().raw(header("d/", b'5', 3), b"abc"), MIB).unwrap_err();
    assert_eq!(entry_problem(e), EntryProblem::DirectoryWithData(3));
}

#[test]
fn the_outputs_cap_stops_extraction() {
    let s = setup();
    let archive = Archive::default().file("a", &[1; 600]).file("b", &[2; 600]);
    let e = s.extract(archive, 1000).unwrap_err();
    assert!(matches!(e, ArchiveError::OutputsTooLarge { max_mib: 1 }), "{e}");
    assert_eq!(e.to_string(), "outputs exceed outputs_max_mib (1 MiB)");
    assert_eq!(fs::read(s.dest.join("a")).unwrap(), [1; 600], "files before the cap stay");
    assert!(!s.dest.join("b").exists());

    let s = setup();
    let summary = s.extract(Archive::default().file("a", &[1; 600]).file("b", &[2; 400]), 1000).unwrap();
    assert_eq!(summary.bytes, 1000, "exactly the cap is allowed");

    let s = setup();
    let e = s.extract(Archive::default().file("big", &vec![0; 3 << 20]), 2 * MIB).unwrap_err();
    assert_eq!(e.to_string(), "outputs exceed outputs_max_mib (2 MiB)");
}

#[test]
fn a_name_written_twice_is_listed_once() {
    let s = setup();
    let summary = s.extract(Archive::default().file("a", b"first").file("a", b"2nd"), MIB).unwrap();
    assert_eq!(summary.files, [OutputFile { path: "a".into(), bytes: 3 }]);
    assert_eq!(summary.bytes, 8);
    assert_eq!(fs::read(s.dest.join("a")).unwrap(), b"2nd");
}

#[test]
fn dest_itself_may_be_a_symlink() {
    let s = setup();
    let real = s.root.join("real");
    fs::create_dir(&real).unwrap();
    symlink(&real, &s.dest).unwrap();
    s.extract(Archive::default().file("a", b"1"), MIB).unwrap();
    assert_eq!(fs::read(real.join("a")).unwrap(), b"1");
}
