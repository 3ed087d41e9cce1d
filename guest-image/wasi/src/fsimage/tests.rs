use std::string::ToString;
use std::vec;

use super::*;

const LIMITS: Limits = Limits { max_inodes: 100, max_entries: 100, max_extents: 100 };

fn inode(ino: u64, mount: u32, kind: Kind) -> Inode {
    Inode { ino, mount, perm: 0o644, size: 0, atim: 1, mtim: 2, ctim: 3, kind }
}

fn dir(entries: &[(&str, u64)]) -> Kind {
    Kind::Dir(entries.iter().map(|(n, i)| (n.to_string(), *i)).collect())
}

/// `/` holds the mount point `in` (mount 0, read-only) with a file and a
/// symlink, and `out` (mount 1) with a file linked twice.
fn sample() -> Metadata {
    Metadata {
        mounts: vec![Mount { root: 2, read_only: true }, Mount { root: 3, read_only: false }],
        inodes: vec![
            inode(ROOT, NO_MOUNT, dir(&[("in", 2), ("out", 3)])),
            inode(2, 0, dir(&[("a.txt", 4), ("link", 5)])),
            inode(3, 1, dir(&[("x", 6), ("y", 6)])),
            Inode { size: 5000, ..inode(4, 0, Kind::File(vec![Extent { logical: 0, start: 1, count: 2 }])) },
            Inode { size: 5, ..inode(5, 0, Kind::Symlink("a.txt".to_string())) },
            inode(6, 1, Kind::File(vec![])),
        ],
    }
}

#[test]
fn metadata_round_trips() {
    let meta = sample();
    assert_eq!(Metadata::decode(&meta.encode(), 10, LIMITS), Ok(meta));
}

#[test]
fn superblock_round_trips_and_is_checked_against_the_disk() {
    let sb = Superblock { total_blocks: 10, meta_start: 8, meta_len: 5000 };
    assert_eq!(Superblock::decode(&sb.encode(), 10), Ok(sb));
    assert_eq!(Superblock::decode(&sb.encode(), 9), Err(FormatError::Size { total_blocks: 10, disk_blocks: 9 }));
    let past_end = Superblock { meta_start: 9, ..sb };
    assert_eq!(Superblock::decode(&past_end.encode(), 10), Err(FormatError::MetadataOutside));
    let at_zero = Superblock { meta_start: 0, meta_len: 1, ..sb };
    assert_eq!(Superblock::decode(&at_zero.encode(), 10), Err(FormatError::MetadataOutside));
    let wrapping = Superblock { meta_start: u64::MAX, ..sb };
    assert_eq!(Superblock::decode(&wrapping.encode(), 10), Err(FormatError::MetadataOutside));
    assert_eq!(Superblock::decode(&[0u8; BLOCK], 10), Err(FormatError::NotAnImage));
    let mut newer = sb.encode();
    newer[8] = 2;
    assert_eq!(Superblock::decode(&newer, 10), Err(FormatError::Version(2)));
}

#[test]
fn every_truncation_is_refused() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert!(Metadata::decode(&bytes[..len], 10, LIMITS).is_err(), "accepted {len} of {} bytes", bytes.len());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Metadata::decode(&longer, 10, LIMITS), Err(FormatError::TrailingBytes));
}

fn refused(change: impl FnOnce(&mut Metadata)) -> FormatError {
    let mut meta = sample();
    change(&mut meta);
    Metadata::decode(&meta.encode(), 10, LIMITS).expect_err("accepted")
}

fn kind_of(meta: &mut Metadata, ino: u64) -> &mut Kind {
    &mut meta.inodes.iter_mut().find(|i| i.ino == ino).unwrap().kind
}

#[test]
fn broken_trees_are_refused() {
    assert_eq!(refused(|m| m.inodes[0].kind = Kind::File(vec![])), FormatError::NoRoot);
    assert_eq!(refused(|m| drop(m.inodes.remove(0))), FormatError::NoRoot);
    assert_eq!(refused(|m| m.inodes[5].ino = 4), FormatError::DuplicateIno(4));
    assert_eq!(refused(|m| m.inodes[5].ino = 0), FormatError::BadIno(0));
    assert_eq!(refused(|m| m.inodes[5].mount = 2), FormatError::BadMount { ino: 6, mount: 2 });
    assert_eq!(refused(|m| m.mounts[0].root = 3), FormatError::BadMountRoot(3));
    assert_eq!(refused(|m| m.mounts[0].root = 77), FormatError::BadMountRoot(77));
    for name in ["", ".", "..", "a/b", "a\0b", &"n".repeat(NAME_MAX + 1)] {
        let err = refused(|m| *kind_of(m, 3) = dir(&[(name, 6)]));
        assert_eq!(err, FormatError::BadName { dir: 3, name: name.to_string() });
    }
    assert!(valid_name(&"n".repeat(NAME_MAX)));
    assert_eq!(
        refused(|m| *kind_of(m, 3) = dir(&[("x", 6), ("x", 6)])),
        FormatError::DuplicateName { dir: 3, name: "x".to_string() }
    );
    assert_eq!(refused(|m| *kind_of(m, 3) = dir(&[("x", 6), ("z", 9)])), FormatError::UnknownEntry { dir: 3, ino: 9 });
    // The root named by an entry; a directory named twice; one named never;
    // a symlink named twice; a file named by nothing.
    assert_eq!(refused(|m| *kind_of(m, 3) = dir(&[("x", 6), ("up", ROOT)])), FormatError::BadLinks(ROOT));
    assert_eq!(refused(|m| *kind_of(m, 3) = dir(&[("x", 6), ("in2", 2)])), FormatError::BadLinks(2));
    assert_eq!(refused(|m| *kind_of(m, ROOT) = dir(&[("in", 2)])), FormatError::BadLinks(3));
    assert_eq!(refused(|m| *kind_of(m, 3) = dir(&[("x", 6), ("l", 5)])), FormatError::BadLinks(5));
    assert_eq!(refused(|m| *kind_of(m, 3) = dir(&[])), FormatError::BadLinks(6));
    // Two directories naming each other, away from the root.
    let err = refused(|m| {
        *kind_of(m, ROOT) = dir(&[("in", 2)]);
        *kind_of(m, 3) = dir(&[("x", 6), ("loop", 7)]);
        m.inodes.push(inode(7, 1, dir(&[("back", 3)])));
    });
    assert_eq!(err, FormatError::Unreachable(3));
}

#[test]
fn extents_and_symlinks_are_checked() {
    let file = |extents: &[(u64, u64, u32)]| {
        refused(|m| {
            *kind_of(m, 6) =
                Kind::File(extents.iter().map(|&(logical, start, count)| Extent { logical, start, count }).collect())
        })
    };
    let bad = FormatError::BadExtent { ino: 6 };
    assert_eq!(file(&[(0, 0, 1)]), bad, "block 0 is the superblock");
    assert_eq!(file(&[(0, 9, 2)]), bad, "past the image");
    assert_eq!(file(&[(0, u64::MAX, 2)]), bad, "wrapping");
    assert_eq!(file(&[(0, 1, 0)]), bad, "empty");
    assert_eq!(file(&[(4, 1, 2), (5, 3, 1)]), bad, "overlapping");
    assert_eq!(file(&[(4, 1, 2), (0, 3, 1)]), bad, "unsorted");
    assert_eq!(file(&[(u64::MAX / 4096, 1, 2)]), bad, "beyond u64 bytes");
    let mut meta = sample();
    *kind_of(&mut meta, 6) =
        Kind::File(vec![Extent { logical: 0, start: 1, count: 1 }, Extent { logical: 7, start: 9, count: 1 }]);
    assert!(Metadata::decode(&meta.encode(), 10, LIMITS).is_ok(), "sparse, and sharing blocks with another file");
    for target in ["", "a\0b", &"t".repeat(TARGET_MAX + 1)] {
        assert_eq!(refused(|m| *kind_of(m, 5) = Kind::Symlink(target.to_string())), FormatError::BadSymlink(5));
    }
}

/// The reviewer's case: many short names of one file cost the decoder far
/// more than their bytes, so they are counted, across directories, and
/// refused as soon as there are too many (before the rest is read).
#[test]
fn entries_past_the_limit_are_refused_as_they_are_read() {
    let mut meta = sample();
    let names: Vec<String> = (0..50).map(|i| format!("{i:04}")).collect();
    let entries: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 6)).collect();
    *kind_of(&mut meta, 3) = dir(&entries);
    let bytes = meta.encode();
    let limits = Limits { max_entries: 51, ..LIMITS };
    assert_eq!(Metadata::decode(&bytes, 10, limits), Err(FormatError::TooManyEntries), "4 + 50 entries");
    // Cut inside the last inode: the count alone already refuses it.
    let cut = &bytes[..bytes.len() - 10];
    assert_eq!(Metadata::decode(cut, 10, limits), Err(FormatError::TooManyEntries));
}

#[test]
fn limits_and_bad_bytes_are_refused() {
    let bytes = sample().encode();
    let small = Limits { max_inodes: 5, ..LIMITS };
    assert_eq!(Metadata::decode(&bytes, 10, small), Err(FormatError::TooManyInodes(6)));
    let none = Limits { max_extents: 0, ..LIMITS };
    assert_eq!(Metadata::decode(&bytes, 10, none), Err(FormatError::TooManyExtents));
    // The sample names 6 entries in its three directories.
    let six = Limits { max_entries: 6, ..LIMITS };
    assert!(Metadata::decode(&bytes, 10, six).is_ok());
    let five = Limits { max_entries: 5, ..LIMITS };
    assert_eq!(Metadata::decode(&bytes, 10, five), Err(FormatError::TooManyEntries));
    // Inode 6 (the last) with kind 9.
    let mut bad_kind = bytes.clone();
    let kind_at = bytes.len() - 4 - 1;
    assert_eq!(bad_kind[kind_at], KIND_FILE);
    bad_kind[kind_at] = 9;
    assert_eq!(Metadata::decode(&bad_kind, 10, LIMITS), Err(FormatError::BadKind { ino: 6, kind: 9 }));
    let mut setuid_plus = sample();
    setuid_plus.inodes[5].perm = 0o10000;
    assert_eq!(Metadata::decode(&setuid_plus.encode(), 10, LIMITS), Err(FormatError::BadPerm(6)));
    let mut not_utf8 = sample();
    *kind_of(&mut not_utf8, 5) = Kind::Symlink("\u{e9}".to_string());
    let mut bytes = not_utf8.encode();
    let at = bytes.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
    bytes[at] = 0xff;
    assert_eq!(Metadata::decode(&bytes, 10, LIMITS), Err(FormatError::NotUtf8 { ino: 5 }));
}
