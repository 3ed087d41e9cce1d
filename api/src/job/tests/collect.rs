//! Reading the filesystem disk back: images built from host trees, then
//! changed as a guest (or an attacker) would, then collected.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mvm_wasi::fsimage::{Extent, FormatError, Inode, Kind, Metadata, Superblock, BLOCK};

use super::image::{host_mount, lookup, tree, Decoded, Tmpfs};
use crate::job::collect::{collect_outputs, write_back, CollectError, EntryProblem, Image, OutputFile};
use crate::job::image::{build_image, ImageMount, Source};

const MIB: u64 = 1 << 20;

/// What a test does to an image, as the guest would.
type Change = Box<dyn Fn(&mut Guest)>;

/// An image being changed as the guest would: new data goes after what is
/// used, then the metadata, then the superblock.
struct Guest {
    file: fs::File,
    meta: Metadata,
    next_block: u64,
    total_blocks: u64,
}

impl Guest {
    fn open(image: &Path) -> Guest {
        let d = Decoded::read(image);
        let next_block = d.sb.meta_start + d.sb.meta_len.div_ceil(BLOCK as u64);
        let file = fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
        Guest { file, meta: d.meta, next_block, total_blocks: d.sb.total_blocks }
    }

    fn inode_mut(&mut self, ino: u64) -> &mut Inode {
        self.meta.inodes.iter_mut().find(|i| i.ino == ino).unwrap()
    }

    fn dir_of(&self, path: &str) -> u64 {
        lookup(&self.meta, path).ino
    }

    /// A new inode in `mount`, named `name` in the directory `dir`.
    fn add(&mut self, dir: u64, name: &str, mount: u32, perm: u16, size: u64, kind: Kind) -> u64 {
        let ino = self.meta.inodes.iter().map(|i| i.ino).max().unwrap() + 1;
        let t = 1_600_000_000_123_456_789;
        self.meta.inodes.push(Inode { ino, mount, perm, size, atim: t, mtim: t, ctim: t, kind });
        self.link(dir, name, ino);
        ino
    }

    fn link(&mut self, dir: u64, name: &str, ino: u64) {
        let Kind::Dir(entries) = &mut self.inode_mut(dir).kind else { panic!("not a directory") };
        entries.push((name.to_owned(), ino));
        entries.sort();
    }

    /// Removes a name, and the inode with its last name (as the guest does).
    fn unlink(&mut self, dir: u64, name: &str) {
        let Kind::Dir(entries) = &mut self.inode_mut(dir).kind else { panic!("not a directory") };
        let ino = entries.iter().find(|(n, _)| n == name).unwrap().1;
        entries.retain(|(n, _)| n != name);
        let named =
            self.meta.inodes.iter().any(|i| matches!(&i.kind, Kind::Dir(e) if e.iter().any(|(_, x)| *x == ino)));
        if !named {
            self.meta.inodes.retain(|i| i.ino != ino);
        }
    }

    /// A file of `data` written into free blocks.
    fn file(&mut self, dir: u64, name: &str, mount: u32, perm: u16, data: &[u8]) -> u64 {
        let extents = self.data(data);
        self.add(dir, name, mount, perm, data.len() as u64, Kind::File(extents))
    }

    fn data(&mut self, data: &[u8]) -> Vec<Extent> {
        if data.is_empty() {
            return Vec::new();
        }
        let count = (data.len() as u64).div_ceil(BLOCK as u64);
        let start = self.next_block;
        self.file.write_all_at(data, start * BLOCK as u64).unwrap();
        self.next_block += count;
        vec![Extent { logical: 0, start, count: count as u32 }]
    }

    /// Writes the metadata as it is, checked or not.
    fn close(self) {
        let bytes = self.meta.encode();
        let meta_start = self.next_block;
        self.file.write_all_at(&bytes, meta_start * BLOCK as u64).unwrap();
        let sb = Superblock { total_blocks: self.total_blocks, meta_start, meta_len: bytes.len() as u64 };
        self.file.write_all_at(&sb.encode(), 0).unwrap();
    }
}

/// A tree of every kind of entry, as `find` would list it with the
/// permission bits (and times of the regular files and directories).
fn listing(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                format!("dir {:o} {}", meta.mode() & 0o7777, meta.mtime_nsec())
            } else {
                format!("file {:o} {:?}", meta.mode() & 0o7777, String::from_utf8_lossy(&fs::read(&path).unwrap()))
            };
            out.push((rel, what));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The names in `dir`, to see that no staging copy is left beside a mount.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

struct Setup {
    tmp: tempfile::TempDir,
    host: PathBuf,
    image: PathBuf,
}

/// A rw mount of a [`tree`] at `/data` (mount 1), after an `/out` (mount 0).
fn setup() -> Setup {
    setup_with_room(8)
}

fn setup_with_room(disk_mib: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("parent/host");
    tree(&host);
    let image = tmp.path().join("fs.img");
    let mounts: Vec<ImageMount> = vec![
        ImageMount { guest: "/out".into(), read_only: false, source: Source::Empty, label: String::new() },
        host_mount("/data", &host, false),
    ];
    build_image(&image, &mounts, disk_mib).unwrap();
    Setup { tmp, host, image }
}

#[test]
fn outputs_are_merged_into_the_outputs_directory_up_to_the_cap() {
    let s = setup();
    let mut g = Guest::open(&s.image);
    let out = g.dir_of("/out");
    g.file(out, "a.txt", 0, 0o600, b"alpha");
    let sub = g.add(out, "sub", 0, 0o700, 0, Kind::Dir(Vec::new()));
    let big = vec![7u8; 3 * BLOCK + 5];
    let ino = g.file(sub, "big.bin", 0, 0o644, &big);
    g.link(out, "again.bin", ino);
    g.close();

    let dest = s.tmp.path().join("outputs");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("kept.txt"), "from before").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dest.join("a.txt")).unwrap();
    let image = Image::open(&s.image).unwrap();
    let summary = collect_outputs(&image, 0, &dest, MIB).unwrap();
    let file = |p: &str, bytes| OutputFile { path: p.into(), bytes };
    assert_eq!(
        summary.files,
        [file("a.txt", 5), file("again.bin", big.len() as u64), file("sub/big.bin", big.len() as u64)]
    );
    assert_eq!(summary.bytes, 5 + 2 * big.len() as u64, "a hard link comes back as a copy, and counts");
    assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"alpha", "the symlink there was replaced, not followed");
    assert!(!fs::symlink_metadata(dest.join("a.txt")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(dest.join("sub/big.bin")).unwrap(), big);
    assert_eq!(fs::read(dest.join("kept.txt")).unwrap(), b"from before", "merged, as always");

    let e = collect_outputs(&image, 0, &s.tmp.path().join("small"), 2 * BLOCK as u64).unwrap_err();
    assert!(matches!(e, CollectError::OutputsTooLarge { max_mib: 1 }), "{e}");
}

#[test]
fn a_symlink_in_outputs_is_refused() {
    let s = setup();
    let mut g = Guest::open(&s.image);
    let out = g.dir_of("/out");
    g.add(out, "l", 0, 0o777, 11, Kind::Symlink("/etc/passwd".into()));
    g.close();
    let image = Image::open(&s.image).unwrap();
    let e = collect_outputs(&image, 0, &s.tmp.path().join("o"), MIB).unwrap_err();
    assert!(matches!(e, CollectError::Entry { problem: EntryProblem::Symlink, .. }), "{e}");
}

#[test]
fn a_rw_mount_is_replaced_by_the_jobs_tree_with_its_bits_times_and_links() {
    let s = setup();
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    let sub = g.dir_of("/data/sub");
    g.unlink(data, "top.txt");
    g.unlink(sub, "inner.bin");
    g.file(sub, "inner.bin", 1, 0o600, b"rewritten");
    let new_dir = g.add(data, "new", 1, 0o500, 0, Kind::Dir(Vec::new()));
    g.file(new_dir, "f", 1, 0o444, b"in a read-only directory");
    g.add(new_dir, "out-link", 1, 0o777, 11, Kind::Symlink("/etc/passwd".into()));
    // The old top.txt is still named by sub/hard: its data comes back there.
    g.close();
    let parent = s.host.parent().unwrap().to_owned();
    let before = names(&parent);

    let image = Image::open(&s.image).unwrap();
    let summary = write_back(&image, 1, &s.host, image.size()).unwrap();
    assert_eq!((summary.files, summary.bytes), (5, 17 + 24 + 4 + 9));
    let listing = listing(&s.host);
    let paths: Vec<&str> = listing.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["nested", "new", "new/f", "new/out-link", "sub", "sub/empty", "sub/hard", "sub/inner.bin", "sub/link"]
    );
    let what = |p: &str| listing.iter().find(|(q, _)| q == p).unwrap().1.clone();
    assert_eq!(what("new/f"), "file 444 \"in a read-only directory\"");
    assert_eq!(what("new"), "dir 500 123456789", "the mtime set after its entries were made");
    assert_eq!(what("new/out-link"), "-> /etc/passwd", "a link, never followed");
    assert_eq!(what("sub/inner.bin"), "file 600 \"rewritten\"");
    assert_eq!(what("sub/hard"), "file 640 \"top\\n\"");
    assert_eq!(what("sub/link"), "-> ../../../etc/passwd");
    assert_eq!(fs::metadata(s.host.join("new/f")).unwrap().mtime(), 1_600_000_000);
    assert_eq!(fs::metadata(&s.host).unwrap().mode() & 0o7777, 0o755, "the mount's own bits came back too");
    assert_eq!(names(&parent), before, "no staging copy is left beside it");
}

/// Each hostile change leaves the host tree exactly as it was, and no
/// staging copy beside it.
#[test]
fn a_failed_write_back_leaves_the_host_tree_untouched() {
    let cases: Vec<(&str, Change, u64, &str)> = vec![
        (
            "over the cap",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.file(data, "big", 1, 0o644, &vec![1u8; 3 * BLOCK]);
            }),
            2 * BLOCK as u64,
            "exceed 1 MiB",
        ),
        (
            "a huge sparse size",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.add(data, "huge", 1, 0o644, 1 << 50, Kind::File(Vec::new()));
            }),
            0,
            "the size of the job's disk",
        ),
        (
            "an entry of another mount",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.file(data, "stolen", 0, 0o644, b"x");
            }),
            0,
            "stolen: belongs to another mount",
        ),
        (
            "too deep",
            Box::new(|g: &mut Guest| {
                let mut dir = g.dir_of("/data");
                for _ in 0..300 {
                    dir = g.add(dir, "d", 1, 0o755, 0, Kind::Dir(Vec::new()));
                }
            }),
            0,
            "more than 256 directories deep",
        ),
    ];
    for (what, change, cap, says) in cases {
        let s = setup();
        let mut g = Guest::open(&s.image);
        change(&mut g);
        g.close();
        let parent = s.host.parent().unwrap().to_owned();
        let (before, names_before) = (listing(&s.host), names(&parent));
        let image = Image::open(&s.image).unwrap();
        let cap = if cap == 0 { image.size() } else { cap };
        let e = write_back(&image, 1, &s.host, cap).expect_err(what);
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert_eq!(listing(&s.host), before, "{what}: {e}");
        assert_eq!(names(&parent), names_before, "{what}: {e}");
    }
}

#[test]
fn an_image_the_guest_broke_is_refused_before_anything_is_written() {
    let cases: Vec<(&str, Change)> = vec![
        (
            "a name with a slash",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.file(data, "a/b", 1, 0o644, b"x");
            }),
        ),
        (
            "a dot-dot name",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.file(data, "..", 1, 0o644, b"x");
            }),
        ),
        (
            "a symlink and a file under one name",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                g.add(data, "twice", 1, 0o777, 1, Kind::Symlink("/".into()));
                g.file(data, "twice", 1, 0o644, b"x");
            }),
        ),
        (
            "a directory inside itself",
            Box::new(|g: &mut Guest| {
                let sub = g.dir_of("/data/sub");
                g.link(sub, "loop", sub);
            }),
        ),
        (
            "an extent outside the disk",
            Box::new(|g: &mut Guest| {
                let data = g.dir_of("/data");
                let extent = Extent { logical: 0, start: 1 << 40, count: 1 };
                g.add(data, "far", 1, 0o644, 4096, Kind::File(vec![extent]));
            }),
        ),
    ];
    for (what, change) in cases {
        let s = setup();
        let mut g = Guest::open(&s.image);
        change(&mut g);
        g.close();
        let e = Image::open(&s.image).err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(matches!(e, CollectError::Invalid(_)), "{what}: {e}");
    }
    // Not an image at all, and metadata the superblock puts past the end.
    let s = setup();
    fs::OpenOptions::new().write(true).open(&s.image).unwrap().write_all_at(&[0u8; 64], 0).unwrap();
    assert!(matches!(Image::open(&s.image), Err(CollectError::Invalid(_))));
    let s = setup();
    let mut g = Guest::open(&s.image);
    g.total_blocks = u64::MAX;
    g.close();
    assert!(matches!(Image::open(&s.image), Err(CollectError::Invalid(_))));
    let e = Image::open(&s.tmp.path().join("missing")).err().unwrap();
    assert!(matches!(e, CollectError::ReadImage { .. }), "{e}");
}

#[test]
fn a_file_mount_is_renamed_over_and_must_stay_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("conf.txt");
    fs::write(&host, "old").unwrap();
    let image = tmp.path().join("fs.img");
    build_image(&image, &[host_mount("/etc/conf.txt", &host, false)], 1).unwrap();
    let mut g = Guest::open(&image);
    let root = g.meta.mounts[0].root;
    let extents = g.data(b"new contents");
    let inode = g.inode_mut(root);
    inode.size = 12;
    inode.perm = 0o600;
    inode.kind = Kind::File(extents);
    g.close();
    let opened = Image::open(&image).unwrap();
    write_back(&opened, 0, &host, opened.size()).unwrap();
    assert_eq!(fs::read(&host).unwrap(), b"new contents");
    assert_eq!(fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o600);
    assert_eq!(names(tmp.path()), ["conf.txt", "fs.img"]);

    let mut g = Guest::open(&image);
    let root = g.meta.mounts[0].root;
    // Whatever the guest claims, the root of a file mount stays a file.
    g.inode_mut(root).kind = Kind::Symlink("/etc/shadow".into());
    g.inode_mut(root).size = 11;
    g.close();
    let opened = Image::open(&image).unwrap();
    let e = write_back(&opened, 0, &host, opened.size()).unwrap_err();
    assert!(matches!(e, CollectError::Entry { problem: EntryProblem::RootNotFile, .. }), "{e}");
    assert_eq!(fs::read(&host).unwrap(), b"new contents");
    assert_eq!(names(tmp.path()), ["conf.txt", "fs.img"]);
}

#[test]
fn staging_copies_a_killed_write_back_left_are_found_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    fs::create_dir(&host).unwrap();
    let stale = tmp.path().join(".host.mvm-0123456789abcdef");
    fs::create_dir_all(stale.join("ro/deep")).unwrap();
    fs::write(stale.join("ro/deep/f"), "x").unwrap();
    fs::set_permissions(stale.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::write(tmp.path().join(".host.mvm-fedcba9876543210"), "a file mount's").unwrap();
    let keep = [
        ".host.mvm-not-a-staging-copy",
        ".hosx.mvm-0123456789abcdef",
        ".other.mvm-0123456789abcdef",
        "host.mvm-0123456789abcdef",
    ];
    for keep in keep {
        fs::write(tmp.path().join(keep), "").unwrap();
    }
    assert_eq!(crate::job::collect::remove_stale_staging(&host), 2);
    assert_eq!(
        names(tmp.path()),
        [
            ".host.mvm-not-a-staging-copy",
            ".hosx.mvm-0123456789abcdef",
            ".other.mvm-0123456789abcdef",
            "host",
            "host.mvm-0123456789abcdef"
        ]
    );
}

#[test]
fn written_back_by_root_a_users_tree_stays_the_users() {
    if fs::metadata("/proc/self").unwrap().uid() != 0 {
        return; // Only root can give files away; as anyone else there is nothing to check.
    }
    let s = setup();
    std::os::unix::fs::chown(&s.host, Some(1234), Some(5678)).unwrap();
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    g.file(data, "new.txt", 1, 0o4755, b"x");
    g.add(data, "l", 1, 0o777, 1, Kind::Symlink("x".into()));
    g.close();
    let image = Image::open(&s.image).unwrap();
    write_back(&image, 1, &s.host, image.size()).unwrap();
    for path in ["", "new.txt", "l", "sub", "sub/inner.bin"] {
        let meta = fs::symlink_metadata(s.host.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{path:?}");
    }
    let mode = fs::metadata(s.host.join("new.txt")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "set-user-ID is never restored");
}

#[test]
fn set_user_and_group_id_never_come_back_and_the_sticky_bit_does() {
    let s = setup();
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    g.file(data, "suid", 1, 0o6755, b"x");
    g.file(data, "sgid", 1, 0o2711, b"x");
    let dir = g.add(data, "shared", 1, 0o3777, 0, Kind::Dir(Vec::new()));
    g.file(dir, "f", 1, 0o4700, b"x");
    g.close();
    let image = Image::open(&s.image).unwrap();
    write_back(&image, 1, &s.host, image.size()).unwrap();
    let mode = |p: &str| fs::metadata(s.host.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        [mode("suid"), mode("sgid"), mode("shared"), mode("shared/f")],
        [0o755, 0o711, 0o1777, 0o700],
        "a guest never makes a set-user-ID or set-group-ID file on the host"
    );
}

#[test]
fn a_superblock_that_claims_more_than_the_disk_or_too_much_metadata_is_refused() {
    let s = setup();
    let blocks = fs::metadata(&s.image).unwrap().len() / BLOCK as u64;
    let mut g = Guest::open(&s.image);
    g.total_blocks = blocks + 1;
    g.close();
    let e = Image::open(&s.image).err().unwrap();
    assert!(matches!(e, CollectError::Invalid(FormatError::Size { .. })), "{e}");

    // More metadata than the caps allow (about 381 MiB), on a (sparse)
    // disk that holds it.
    let file = fs::OpenOptions::new().write(true).open(&s.image).unwrap();
    file.set_len(1 << 30).unwrap();
    let too_much = 12 + 1_000_000 * (51 + 2 + 255 + 8) + (1 << 22) * 20 + 1;
    let sb = Superblock { total_blocks: (1 << 30) / BLOCK as u64, meta_start: 1, meta_len: too_much };
    file.write_all_at(&sb.encode(), 0).unwrap();
    let e = Image::open(&s.image).err().unwrap();
    assert!(matches!(e, CollectError::MetadataTooLarge(len) if len == too_much), "{e}");
}

/// Short names of one file cost the host far more decoded than encoded:
/// their number is capped, across all directories.
#[test]
fn more_entries_than_a_tree_may_hold_are_refused() {
    let s = setup_with_room(32);
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    let ino = g.file(data, "f", 1, 0o644, b"x");
    let Kind::Dir(entries) = &mut g.inode_mut(data).kind else { unreachable!() };
    entries.extend((0..1_000_000).map(|i| (format!("{i:x}"), ino)));
    entries.sort();
    g.close();
    let e = Image::open(&s.image).err().unwrap();
    assert!(matches!(e, CollectError::Invalid(FormatError::TooManyEntries)), "{e}");
}

#[test]
fn a_file_in_several_extents_past_holes_comes_back_byte_for_byte() {
    let s = setup_with_room(80);
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    // Block 0, a hole of two blocks, then more than one copy step (64 MiB)
    // of data, the file ending inside its last block.
    let first: Vec<u8> = (0..BLOCK).map(|i| (i % 7) as u8 + 1).collect();
    let big: Vec<u8> = (0..(64 << 20) + 3 * BLOCK).map(|i| (i % 251) as u8).collect();
    let mut extents = g.data(&first);
    let mut second = g.data(&big);
    second[0].logical = 3;
    extents.append(&mut second);
    let size = (3 * BLOCK + big.len() - 100) as u64;
    g.add(data, "gappy", 1, 0o644, size, Kind::File(extents));
    g.close();
    let image = Image::open(&s.image).unwrap();
    write_back(&image, 1, &s.host, image.size()).unwrap();
    let back = fs::read(s.host.join("gappy")).unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(&back[..BLOCK], &first[..]);
    assert!(back[BLOCK..3 * BLOCK].iter().all(|&b| b == 0), "the hole reads as zeros");
    assert!(back[3 * BLOCK..] == big[..big.len() - 100], "the data after the hole, cut at the file's size");
}

/// The reviewer's attack: the host path was checked, then a write-back of
/// another job planted a symlink in one of its components (here its parent,
/// pointing at a tree of the same shape elsewhere). Nothing goes there.
#[test]
fn a_symlink_planted_on_the_way_after_validation_is_refused_not_followed() {
    let s = setup();
    let mut g = Guest::open(&s.image);
    let data = g.dir_of("/data");
    g.file(data, "planted", 1, 0o644, b"guest's");
    let out = g.dir_of("/out");
    g.file(out, "o.txt", 0, 0o644, b"guest's");
    g.close();
    let image = Image::open(&s.image).unwrap();
    let victim = s.tmp.path().join("victim");
    fs::create_dir_all(victim.join("host")).unwrap();
    fs::write(victim.join("host/precious"), "kept").unwrap();
    let parent = s.host.parent().unwrap();
    fs::rename(parent, s.tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&victim, parent).unwrap();

    let e = write_back(&image, 1, &s.host, image.size()).unwrap_err();
    assert!(matches!(e, CollectError::Entry { problem: EntryProblem::NotADirectory, .. }), "{e}");
    assert_eq!(names(&victim.join("host")), ["precious"]);
    assert_eq!(names(&victim), ["host"], "no staging copy there either");
    assert_eq!(crate::job::collect::remove_stale_staging(&s.host), 0);

    // The outputs directory, existing or to be made beneath the link.
    for dest in [victim.clone(), victim.join("new/deeper")] {
        let dest = parent.join(dest.strip_prefix(&victim).unwrap());
        let e = collect_outputs(&image, 0, &dest, MIB).unwrap_err();
        assert!(matches!(e, CollectError::Entry { problem: EntryProblem::NotADirectory, .. }), "{e}");
    }
    assert_eq!(names(&victim), ["host"]);
}

/// A filesystem mounted inside a rw tree after it was staged: the tree is
/// swapped all the same, but removing the old one never enters the mount.
#[test]
fn removing_the_old_tree_never_enters_another_filesystem() {
    let s = setup();
    let image = Image::open(&s.image).unwrap();
    fs::create_dir(s.host.join("sub/mnt")).unwrap();
    let Some(mut tmpfs) = Tmpfs::mount(&s.host.join("sub/mnt")) else { return };
    fs::write(s.host.join("sub/mnt/theirs"), "not the tree's").unwrap();
    write_back(&image, 1, &s.host, image.size()).unwrap();
    let parent = s.host.parent().unwrap();
    let staging: Vec<String> = names(parent).into_iter().filter(|n| n.starts_with(".host.mvm-")).collect();
    assert_eq!(staging.len(), 1, "the old tree stays where the mount keeps it");
    tmpfs.moved_to(&parent.join(&staging[0]).join("sub/mnt"));
    assert_eq!(fs::read(parent.join(&staging[0]).join("sub/mnt/theirs")).unwrap(), b"not the tree's");
}

/// A staging directory made but not opened (here: out of descriptors) is
/// removed at once. Run in a child process of its own, since the limit on
/// descriptors is the whole process's.
#[test]
fn a_staging_directory_that_cannot_be_opened_is_not_left() {
    // The descriptor limit is the whole process's: the test runs itself
    // again, alone in a child process, to run out of descriptors there.
    let Some(dir) = std::env::var_os("MVM_TEST_STAGING_DIR") else {
        let tmp = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "job::tests::collect::a_staging_directory_that_cannot_be_opened_is_not_left"])
            .args(["--test-threads=1"])
            .env("MVM_TEST_STAGING_DIR", tmp.path())
            .output()
            .unwrap();
        assert!(child.status.success(), "{}", String::from_utf8_lossy(&child.stdout));
        assert_eq!(names(tmp.path()), ["done"], "no staging directory left");
        return;
    };
    let dir = PathBuf::from(dir);
    let parent = fs::File::open(&dir).unwrap();
    let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
    // SAFETY: a valid rlimit; this process runs this test alone.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut filler = Vec::new();
    while let Ok(fd) = std::os::fd::AsFd::as_fd(&parent).try_clone_to_owned() {
        filler.push(fd);
    }
    let made = crate::job::collect::make_staging(std::os::fd::AsFd::as_fd(&parent), "host".as_ref(), true);
    assert_eq!(made.err(), Some(rustix::io::Errno::MFILE));
    drop(filler);
    fs::write(dir.join("done"), "").unwrap();
}

/// The longest name validation lets a rw mount have still leaves room for
/// its staging copy's.
#[test]
fn a_rw_mount_with_the_longest_name_allowed_is_written_back() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("h".repeat(crate::job::collect::MAX_RW_NAME));
    fs::create_dir(&host).unwrap();
    let image = tmp.path().join("fs.img");
    build_image(&image, &[host_mount("/d", &host, false)], 1).unwrap();
    let mut g = Guest::open(&image);
    let root = g.meta.mounts[0].root;
    g.file(root, "new", 0, 0o644, b"x");
    g.close();
    let opened = Image::open(&image).unwrap();
    write_back(&opened, 0, &host, opened.size()).unwrap();
    assert_eq!(fs::read(host.join("new")).unwrap(), b"x");
    assert_eq!(crate::job::collect::remove_stale_staging(&host), 0);
}
