//! The engine over images built as the host builds them (testing.rs), read
//! back with fsimage's own decoder after `save`.

use std::string::String;
use std::vec::Vec;

use super::*;
use crate::testing::{read_back, standard_image, DiskError, ImageBuilder, MemDisk};

type TestFs = Fs<MemDisk>;

const MIB: usize = 1 << 20;

fn load(disk: MemDisk) -> TestFs {
    Fs::load(disk, 4 * MIB).unwrap()
}

fn standard(free: u64) -> TestFs {
    load(standard_image(&[("a.txt", b"alpha"), ("big", &pattern(3 * BLOCK + 10))], free))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn at(fs: &TestFs, path: &str) -> u64 {
    fs.resolve(ROOT, path.as_bytes(), false).unwrap()
}

fn read_all(fs: &mut TestFs, ino: u64) -> Vec<u8> {
    let mut buf = vec![0u8; fs.node(ino).size as usize];
    let n = fs.read(ino, 0, &mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

/// A file's bytes as the host would read them from the saved image.
fn saved_content(disk: &MemDisk, meta: &Metadata, ino: u64) -> Vec<u8> {
    let inode = meta.inodes.iter().find(|i| i.ino == ino).unwrap();
    let Kind::File(extents) = &inode.kind else { panic!("not a file") };
    let mut out = vec![0u8; inode.size as usize];
    for e in extents {
        for i in 0..e.count as u64 {
            let from = ((e.start + i) as usize) * BLOCK;
            let to = ((e.logical + i) as usize) * BLOCK;
            if to < out.len() {
                let n = BLOCK.min(out.len() - to);
                out[to..to + n].copy_from_slice(&disk.data[from..from + n]);
            }
        }
    }
    out
}

fn entry(meta: &Metadata, dir: u64, name: &str) -> Option<u64> {
    let Kind::Dir(entries) = &meta.inodes.iter().find(|i| i.ino == dir).unwrap().kind else { panic!() };
    entries.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
}

#[test]
fn an_image_loads_with_its_tree_data_and_modes() {
    let mut fs = standard(64);
    let input = at(&fs, "in");
    assert!(!fs.writable(input) && !fs.writable(ROOT));
    assert!(fs.writable(at(&fs, "out")));
    let a = at(&fs, "in/a.txt");
    assert_eq!(read_all(&mut fs, a), b"alpha");
    let big = at(&fs, "in/big");
    assert_eq!(read_all(&mut fs, big), pattern(3 * BLOCK + 10));
    let stat = fs.stat(a);
    assert_eq!((stat.kind, stat.nlink, stat.size, stat.mtim), (FileType::File, 1, 5, 20));
    assert_eq!(fs.stat(ROOT).nlink, 4, "the root holds two directories");
    assert_eq!(fs.find_dir("/in"), Some(input));
    assert_eq!(fs.find_dir("/in/a.txt"), None);
    assert_eq!(fs.find_dir("/"), Some(ROOT));
}

#[test]
fn saving_writes_the_tree_back_for_the_host_to_read() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let sub = fs.mkdir(out, "sub", 100).unwrap();
    let file = fs.create_file(sub, "f", 100).unwrap();
    fs.write(file, 0, b"hello", 101).unwrap();
    fs.write(file, 2 * BLOCK as u64, b"far", 102).unwrap();
    fs.symlink(out, "link", "sub/f", 103).unwrap();
    fs.link(file, out, "hard", 104).unwrap();
    // Open and unlinked: not saved.
    let gone = fs.create_file(out, "gone", 100).unwrap();
    fs.open(gone);
    fs.unlink(out, "gone", 105).unwrap();
    fs.save().unwrap();
    let disk = &fs.disk;
    assert_eq!(disk.writes.last(), Some(&(0, BLOCK)), "the superblock last");
    let meta = read_back(disk);
    let sub_ino = entry(&meta, out, "sub").unwrap();
    assert_eq!(sub_ino, sub);
    let f = entry(&meta, sub, "f").unwrap();
    assert_eq!(entry(&meta, out, "hard"), Some(f));
    assert_eq!(entry(&meta, out, "gone"), None);
    assert!(meta.inodes.iter().all(|i| i.ino != gone));
    let content = saved_content(disk, &meta, f);
    assert_eq!(&content[..5], b"hello");
    assert!(content[5..2 * BLOCK].iter().all(|b| *b == 0));
    assert_eq!(&content[2 * BLOCK..], b"far");
    let Kind::File(extents) = &meta.inodes.iter().find(|i| i.ino == f).unwrap().kind else { panic!() };
    assert_eq!(extents.len(), 2, "the hole between has no blocks");
    let link = meta.inodes.iter().find(|i| Some(i.ino) == entry(&meta, out, "link")).unwrap();
    assert_eq!(link.kind, Kind::Symlink("sub/f".into()));
    assert_eq!(link.perm, SYMLINK_PERM);
    let file_inode = meta.inodes.iter().find(|i| i.ino == f).unwrap();
    assert_eq!((file_inode.perm, file_inode.mtim), (FILE_PERM, 102));
    // Inputs come back as they were, blocks and all.
    let big = entry(&meta, at(&fs, "in"), "big").unwrap();
    assert_eq!(saved_content(disk, &meta, big), pattern(3 * BLOCK + 10));
    // And the saved image loads again.
    let mut again = load(MemDisk::new(fs.disk.data.clone()));
    let f = at(&again, "out/sub/f");
    assert_eq!(&read_all(&mut again, f)[..5], b"hello");
    assert!(again.resolve(ROOT, b"out/gone", false).is_err());
}

#[test]
fn data_reads_back_at_any_offset_with_holes_as_zeros() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 0).unwrap();
    let data = pattern(3 * BLOCK);
    assert_eq!(fs.write(f, 100, &data, 1).unwrap(), data.len());
    let mut buf = vec![0xffu8; 200];
    assert_eq!(fs.read(f, 0, &mut buf, 2).unwrap(), 200);
    assert!(buf[..100].iter().all(|b| *b == 0));
    assert_eq!(&buf[100..], &data[..100]);
    assert_eq!(fs.read(f, 100 + 3 * BLOCK as u64 - 5, &mut buf, 2).unwrap(), 5, "stops at the end");
    assert_eq!(fs.read(f, 1 << 40, &mut buf, 2).unwrap(), 0);
    assert_eq!(fs.write(f, 1 << 40, b"", 2), Ok(0));
    assert_eq!(fs.stat(f).size, 100 + 3 * BLOCK as u64, "an empty write extends nothing");
    assert_eq!(fs.write(f, i64::MAX as u64, b"x", 2), Err(errno::FBIG));
    assert_eq!(fs.stat(f).atim, 2);
    assert_eq!(fs.stat(f).mtim, 1);
}

#[test]
fn truncating_drops_data_and_extending_reads_zeros() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 0).unwrap();
    fs.write(f, 0, &pattern(2 * BLOCK), 1).unwrap();
    fs.save().unwrap();
    let used = fs.space.available();
    fs.set_size(f, 10, 2).unwrap();
    assert_eq!(fs.space.available(), used + 1, "the second block is free again");
    fs.set_size(f, 2 * BLOCK as u64, 3).unwrap();
    let content = read_all(&mut fs, f);
    assert_eq!(&content[..10], &pattern(10)[..]);
    assert!(content[10..].iter().all(|b| *b == 0), "the cut-off tail reads as zeros");
    assert_eq!(fs.stat(f).mtim, 3);
    fs.save().unwrap();
    let meta = read_back(&fs.disk);
    assert_eq!(saved_content(&fs.disk, &meta, f), content);
}

#[test]
fn small_files_made_and_removed_while_cached_never_reach_the_disk() {
    let mut fs = standard(4096);
    let out = at(&fs, "out");
    let writes_before = fs.disk.writes.len();
    for i in 0..500 {
        let dir = fs.mkdir(out, &format!("d{i}"), 1).unwrap();
        let f = fs.create_file(dir, "f", 1).unwrap();
        fs.write(f, 0, format!("file {i}").as_bytes(), 1).unwrap();
        assert_eq!(read_all(&mut fs, f), format!("file {i}").as_bytes());
        fs.unlink(dir, "f", 2).unwrap();
        fs.rmdir(out, &format!("d{i}"), 2).unwrap();
    }
    assert_eq!(fs.disk.writes.len(), writes_before);
    assert_eq!(fs.cache.blocks(), 0);
    assert_eq!(fs.cache.pending_blocks(), 0);
}

#[test]
fn a_file_four_times_the_cache_streams_in_large_requests() {
    let cache = 4 * MIB;
    let total = 4 * cache;
    let mut fs = Fs::load(standard_image(&[], (total / BLOCK) as u64 + 64), cache).unwrap();
    let out = at(&fs, "out");
    let f = fs.create_file(out, "stream", 0).unwrap();
    let chunk = pattern(10_000);
    let mut written = 0;
    let before = fs.disk.writes.len();
    while written < total {
        let n = chunk.len().min(total - written);
        assert_eq!(fs.write(f, written as u64, &chunk[..n], 1).unwrap(), n);
        written += n;
        assert!(fs.cache.blocks() <= fs.cache.capacity());
    }
    fs.save().unwrap();
    let data_writes: Vec<usize> = fs.disk.writes[before..].iter().map(|(_, len)| *len).collect();
    // Every data write is a full request but the last of each flush.
    let small = data_writes.iter().filter(|len| **len < REQUEST_MAX).count();
    assert!(data_writes.len() <= total / REQUEST_MAX + 8, "{} writes", data_writes.len());
    assert!(small <= 8, "{small} small writes of {}", data_writes.len());
    let meta = read_back(&fs.disk);
    let Kind::File(extents) = &meta.inodes.iter().find(|i| i.ino == f).unwrap().kind else { panic!() };
    assert!(extents.len() <= 2, "contiguous on disk: {} extents", extents.len());

    // Read back with small reads: read-ahead keeps requests large.
    let mut fs = Fs::load(MemDisk::new(fs.disk.data.clone()), cache).unwrap();
    let f = at(&fs, "out/stream");
    let before = fs.disk.transfers.len();
    let mut buf = vec![0u8; 10_000];
    let mut at_ = 0;
    while at_ < total {
        let n = fs.read(f, at_ as u64, &mut buf, 1).unwrap();
        let expect = chunk.len().min(total - at_);
        assert_eq!(n, expect);
        assert_eq!(&buf[..n], &chunk[..n], "at {at_}");
        at_ += n;
        assert!(fs.cache.blocks() <= fs.cache.capacity());
    }
    let reads = fs.disk.transfers.len() - before;
    assert!(reads <= total / REQUEST_MAX + 4, "{reads} reads");
    // Large reads skip the cache and still go in large requests.
    let before = fs.disk.transfers.len();
    let mut big = vec![0u8; 2 * MIB];
    assert_eq!(fs.read(f, MIB as u64, &mut big, 1).unwrap(), 2 * MIB);
    assert!(fs.disk.transfers.len() - before <= 3);
    assert_eq!(&big[..10_000 - (MIB % 10_000)], &chunk[MIB % 10_000..]);
}

#[test]
fn a_full_disk_is_enospc_part_way_and_saving_still_succeeds() {
    let mut fs = standard(40);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "fill", 0).unwrap();
    let data = pattern(100 * BLOCK);
    let n = fs.write(f, 0, &data, 1).unwrap();
    assert!(n > 0 && n < data.len(), "a partial write: {n}");
    assert_eq!(n % BLOCK, 0);
    assert_eq!(fs.write(f, n as u64, b"more", 2), Err(errno::NOSPC));
    // Overwriting what has blocks needs none.
    assert_eq!(fs.write(f, 0, b"again", 3), Ok(5));
    // Metadata growth too is refused before it could not be saved.
    let mut made = 0;
    loop {
        match fs.create_file(out, &format!("a-rather-long-name-to-fill-the-metadata-{made:05}"), 4) {
            Ok(_) => made += 1,
            Err(e) => {
                assert_eq!(e, errno::NOSPC);
                break;
            }
        }
        assert!(made < 100_000);
    }
    fs.save().unwrap();
    let meta = read_back(&fs.disk);
    let Kind::Dir(entries) = &meta.inodes.iter().find(|i| i.ino == out).unwrap().kind else { panic!() };
    assert_eq!(entries.len(), made + 1);
    let mut expect = data[..n].to_vec();
    expect[..5].copy_from_slice(b"again");
    assert_eq!(saved_content(&fs.disk, &meta, f), expect);
    // Freeing room makes writes possible again.
    fs.unlink(out, "fill", 5).unwrap();
    let g = fs.create_file(out, "g", 6);
    assert!(g.is_ok() || g == Err(errno::NOSPC));
}

#[test]
fn read_only_mounts_and_leading_directories_refuse_changes() {
    let mut fs = standard(64);
    let input = at(&fs, "in");
    let a = at(&fs, "in/a.txt");
    assert_eq!(fs.create_file(input, "x", 1), Err(errno::ROFS));
    assert_eq!(fs.mkdir(ROOT, "x", 1), Err(errno::ROFS));
    assert_eq!(fs.write(a, 0, b"x", 1), Err(errno::ROFS));
    assert_eq!(fs.set_size(a, 0, 1), Err(errno::ROFS));
    assert_eq!(fs.unlink(input, "a.txt", 1), Err(errno::ROFS));
    assert_eq!(fs.set_times(a, SetTime::Now, SetTime::Keep, 1), Err(errno::ROFS));
    // Mount roots cannot go, even from a writable place.
    assert_eq!(fs.rmdir(ROOT, "out", 1), Err(errno::BUSY));
    assert_eq!(fs.rename(ROOT, "in", ROOT, "x", 1), Err(errno::BUSY));
    let out = at(&fs, "out");
    assert_eq!(fs.rename(input, "a.txt", out, "a", 1), Err(errno::ROFS));
    assert_eq!(fs.link(a, out, "a", 1), Err(errno::XDEV));
}

#[test]
fn renames_and_links_across_writable_mounts_are_exdev() {
    let mut image = ImageBuilder::new();
    let one = image.mount("/one", false);
    image.file(one, "f", b"1");
    image.mount("/two", false);
    let mut fs = load(image.build(64));
    let two = at(&fs, "two");
    let f = at(&fs, "one/f");
    assert_eq!(fs.rename(one, "f", two, "f", 1), Err(errno::XDEV));
    assert_eq!(fs.link(f, two, "f", 1), Err(errno::XDEV));
}

#[test]
fn rename_follows_posix() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let a = fs.mkdir(out, "a", 1).unwrap();
    let b = fs.mkdir(a, "b", 1).unwrap();
    let f = fs.create_file(out, "f", 1).unwrap();
    let g = fs.create_file(out, "g", 1).unwrap();
    fs.write(g, 0, b"g", 1).unwrap();
    assert_eq!(fs.rename(out, "a", b, "x", 2), Err(errno::INVAL), "into its own subtree");
    assert_eq!(fs.rename(out, "a", out, "f", 2), Err(errno::NOTDIR));
    assert_eq!(fs.rename(out, "f", out, "a", 2), Err(errno::ISDIR));
    assert_eq!(fs.rename(out, "nope", out, "x", 2), Err(errno::NOENT));
    let c = fs.mkdir(out, "c", 1).unwrap();
    fs.create_file(c, "inside", 1).unwrap();
    assert_eq!(fs.rename(out, "a", out, "c", 2), Err(errno::NOTEMPTY));
    // A file replaces a file; the replaced one goes.
    fs.rename(out, "f", out, "g", 3).unwrap();
    assert_eq!(fs.lookup(out, "g").unwrap(), Some(f));
    assert!(!fs.exists(g));
    // A directory replaces an empty one and moves with its contents.
    let e = fs.mkdir(out, "e", 1).unwrap();
    fs.rename(out, "a", out, "e", 4).unwrap();
    assert!(!fs.exists(e));
    assert_eq!(fs.lookup(out, "e").unwrap(), Some(a));
    assert_eq!(fs.lookup(a, "b").unwrap(), Some(b));
    fs.rename(a, "b", c, "b2", 5).unwrap();
    assert_eq!(fs.parent(b), c);
    assert_eq!(fs.stat(c).nlink, 3);
    assert_eq!(fs.stat(a).nlink, 2);
    // Two names of one file: nothing happens.
    fs.link(f, out, "h", 6).unwrap();
    fs.rename(out, "g", out, "h", 7).unwrap();
    assert_eq!(fs.stat(f).nlink, 2);
    assert_eq!(fs.stat(f).ctim, 6);
}

#[test]
fn an_unlinked_file_stays_readable_until_closed() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 1).unwrap();
    fs.write(f, 0, b"still here", 1).unwrap();
    fs.save().unwrap();
    let free = fs.space.available();
    fs.open(f);
    fs.unlink(out, "f", 2).unwrap();
    assert_eq!(fs.stat(f).nlink, 0);
    assert_eq!(read_all(&mut fs, f), b"still here");
    fs.close(f).unwrap();
    assert!(!fs.exists(f));
    assert_eq!(fs.space.available(), free + 1);
}

#[test]
fn directories_are_removed_only_when_empty_and_links_are_for_files() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let d = fs.mkdir(out, "d", 1).unwrap();
    fs.create_file(d, "f", 1).unwrap();
    assert_eq!(fs.rmdir(out, "d", 2), Err(errno::NOTEMPTY));
    assert_eq!(fs.unlink(out, "d", 2), Err(errno::ISDIR));
    assert_eq!(fs.rmdir(d, "f", 2), Err(errno::NOTDIR));
    assert_eq!(fs.link(d, out, "d2", 2), Err(errno::PERM));
    let s = fs.symlink(out, "s", "d", 2).unwrap();
    assert_eq!(fs.link(s, out, "s2", 2), Err(errno::PERM), "each symlink is named once");
    assert_eq!(fs.mkdir(out, "d", 2), Err(errno::EXIST));
    assert_eq!(fs.mkdir(out, &"n".repeat(256), 2), Err(errno::NAMETOOLONG));
    fs.unlink(d, "f", 3).unwrap();
    fs.open(d);
    fs.rmdir(out, "d", 3).unwrap();
    assert_eq!(fs.create_file(d, "late", 4), Err(errno::NOENT), "a removed directory takes nothing new");
    fs.close(d).unwrap();
    assert!(!fs.exists(d));
    assert_eq!(fs.symlink(out, "s", "", 1), Err(errno::NOENT));
    assert_eq!(fs.symlink(out, "s", &"t".repeat(4096), 1), Err(errno::NAMETOOLONG));
}

#[test]
fn paths_resolve_inside_their_directory_only() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let a = fs.mkdir(out, "a", 1).unwrap();
    let f = fs.create_file(a, "f", 1).unwrap();
    fs.symlink(out, "to-f", "a/f", 1).unwrap();
    fs.symlink(a, "up", "../a/f", 1).unwrap();
    fs.symlink(out, "out-of-it", "../in/a.txt", 1).unwrap();
    fs.symlink(out, "abs", "/in/a.txt", 1).unwrap();
    fs.symlink(out, "loop", "loop", 1).unwrap();
    fs.symlink(out, "to-a", "a/", 1).unwrap();
    let r = |fs: &TestFs, path: &str, follow| fs.resolve(out, path.as_bytes(), follow);
    assert_eq!(r(&fs, "a/../a/./f", false), Ok(f));
    assert_eq!(r(&fs, "a/f/", false), Err(errno::NOTDIR));
    assert_eq!(r(&fs, "a/f/..", false), Err(errno::NOTDIR));
    assert_eq!(r(&fs, "a//", false), Ok(a));
    assert_eq!(r(&fs, ".", false), Ok(out));
    assert_eq!(r(&fs, "..", false), Err(errno::PERM));
    assert_eq!(r(&fs, "a/../../in", false), Err(errno::PERM));
    assert_eq!(r(&fs, "/in", false), Err(errno::PERM));
    assert_eq!(r(&fs, "", false), Err(errno::NOENT));
    assert_eq!(r(&fs, "a/nope", false), Err(errno::NOENT));
    assert_eq!(r(&fs, "a\0", false), Err(errno::INVAL));
    assert_eq!(fs.resolve(out, b"\xff", false), Err(errno::ILSEQ));
    assert_eq!(r(&fs, &"n".repeat(256), false), Err(errno::NAMETOOLONG));
    assert_eq!(r(&fs, "to-f", true), Ok(f));
    assert_ne!(r(&fs, "to-f", false), Ok(f), "the link itself");
    assert_eq!(r(&fs, "a/up", true), Ok(f));
    assert_eq!(r(&fs, "out-of-it", true), Err(errno::PERM));
    assert_eq!(r(&fs, "abs", true), Err(errno::PERM));
    assert_eq!(r(&fs, "loop", true), Err(errno::LOOP));
    assert_eq!(r(&fs, "to-a/f", false), Ok(f), "an intermediate symlink is always followed");
    assert_eq!(r(&fs, "to-a/", false), Ok(a), "a trailing slash follows the last one");
    // From the root, the same link stays inside and resolves.
    assert_eq!(fs.resolve(ROOT, b"out/out-of-it", true), Ok(at(&fs, "in/a.txt")));
    let p = fs.resolve_parent(out, b"a/new/", errno::EXIST).unwrap();
    assert_eq!(p, Parent { dir: a, name: "new", trailing_slash: true });
    assert_eq!(fs.resolve_parent(out, b"a/..", errno::EXIST), Err(errno::EXIST));
    assert_eq!(fs.resolve_parent(out, b"../x", errno::EXIST), Err(errno::PERM));
    assert_eq!(fs.resolve_parent(out, b"nope/x", errno::EXIST), Err(errno::NOENT));
    fs.unlink(out, "loop", 2).unwrap();
}

#[test]
fn times_follow_the_changes_and_can_be_set() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 5).unwrap();
    assert_eq!((fs.stat(f).atim, fs.stat(f).mtim, fs.stat(f).ctim), (5, 5, 5));
    assert_eq!((fs.stat(out).mtim, fs.stat(out).ctim), (5, 5));
    fs.write(f, 0, b"x", 6).unwrap();
    assert_eq!((fs.stat(f).mtim, fs.stat(f).ctim, fs.stat(f).atim), (6, 6, 5));
    fs.set_times(f, SetTime::At(100), SetTime::Now, 7).unwrap();
    assert_eq!((fs.stat(f).atim, fs.stat(f).mtim, fs.stat(f).ctim), (100, 7, 7));
    fs.set_times(f, SetTime::Keep, SetTime::At(200), 8).unwrap();
    assert_eq!((fs.stat(f).atim, fs.stat(f).mtim, fs.stat(f).ctim), (100, 200, 8));
}

#[test]
fn inode_numbers_are_stable_and_new_ones_unique() {
    let mut fs = standard(64);
    let out = at(&fs, "out");
    let a = at(&fs, "in/a.txt");
    let first = fs.create_file(out, "x", 1).unwrap();
    fs.unlink(out, "x", 1).unwrap();
    let second = fs.create_file(out, "x", 1).unwrap();
    assert_ne!(first, second);
    assert!(first > a && second > a);
    assert_eq!(fs.stat(a).ino, a);
}

fn corrupt(edit: impl FnOnce(&mut Vec<u8>)) -> Result<TestFs, LoadError<DiskError>> {
    let mut disk = standard_image(&[("a", b"a"), ("b", b"b")], 8);
    edit(&mut disk.data);
    Fs::load(disk, MIB)
}

#[test]
fn hostile_images_are_refused_at_load() {
    assert!(matches!(corrupt(|d| d[0] = b'X'), Err(LoadError::Format(FormatError::NotAnImage))));
    // Metadata claimed past the image's end.
    assert!(matches!(
        corrupt(|d| d[32..40].copy_from_slice(&u64::MAX.to_le_bytes())),
        Err(LoadError::Format(FormatError::MetadataOutside))
    ));
    // Two files on one block: b's extent pointed at a's block.
    let mut image = ImageBuilder::new();
    let m = image.mount("/in", true);
    image.file(m, "a", b"a");
    image.file(m, "b", b"b");
    let fsimage::Kind::File(extents) = &mut image.inodes[3].kind else { panic!() };
    extents[0].start = 1;
    assert!(matches!(Fs::load(image.build(8), MIB), Err(LoadError::SharedBlock(1))));
    // A full image leaves no room for its own metadata.
    let mut full = standard_image(&[("a", b"a")], 0);
    let meta_start = u64::from_le_bytes(full.data[24..32].try_into().unwrap());
    full.data.truncate((meta_start as usize + 1) * BLOCK);
    full.data[16..24].copy_from_slice(&(meta_start + 1).to_le_bytes());
    // The metadata's own block is free once loaded, so that one fits.
    assert!(Fs::load(MemDisk::new(full.data.clone()), MIB).is_ok());
    assert!(matches!(Fs::load(MemDisk::zeroed(0), MIB), Err(LoadError::Format(FormatError::NotAnImage))));
    assert_eq!(std::format!("{}", LoadError::<DiskError>::SharedBlock(7)), "block 7 belongs to two files");
}

#[test]
fn an_image_without_a_free_run_for_its_metadata_is_refused() {
    // Every block holds data: nothing is left for the metadata to be written to.
    let mut image = ImageBuilder::new();
    let m = image.mount("/in", true);
    image.file(m, "a", &pattern(BLOCK));
    let mut disk = image.build(0);
    // Point the metadata at the data block's neighbour, then claim the
    // metadata block as the file's too, so that no block is free.
    let sb = Superblock::decode(&disk.data[..BLOCK], 3).unwrap();
    assert_eq!(sb.total_blocks, 3);
    let meta = read_back(&disk);
    let mut inodes = meta.inodes.clone();
    let fsimage::Kind::File(extents) = &mut inodes.iter_mut().find(|i| matches!(i.kind, Kind::File(_))).unwrap().kind
    else {
        panic!()
    };
    extents[0].count = 2;
    let bytes = Metadata { mounts: meta.mounts.clone(), inodes }.encode();
    let start = sb.meta_start as usize * BLOCK;
    disk.data[start..start + bytes.len()].copy_from_slice(&bytes);
    disk.data[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let _ = String::new();
    assert!(matches!(Fs::load(disk, MIB), Err(LoadError::Full)));
}

#[test]
fn many_small_files_beyond_the_cache_go_out_together() {
    let mut fs = standard(4096);
    let out = at(&fs, "out");
    let before = fs.disk.writes.len();
    let mut files = Vec::new();
    for i in 0..3000 {
        let dir = match i % 10 {
            0 => fs.mkdir(out, &format!("d{i}"), 1).unwrap(),
            _ => files.last().map(|(d, _)| *d).unwrap(),
        };
        let f = fs.create_file(dir, &format!("f{i}"), 1).unwrap();
        fs.write(f, 0, format!("small file {i}").as_bytes(), 1).unwrap();
        files.push((dir, f));
        assert!(fs.cache.blocks() <= fs.cache.capacity());
    }
    let flushed = fs.disk.writes.len() - before;
    assert!(flushed <= 3000 / REQUEST_BLOCKS as usize + 2, "{flushed} writes for 3000 files");
    assert!(fs.disk.writes[before..].iter().all(|(_, len)| *len == REQUEST_MAX));
    fs.save().unwrap();
    let meta = read_back(&fs.disk);
    for (i, (_, f)) in files.iter().enumerate().step_by(97) {
        assert_eq!(saved_content(&fs.disk, &meta, *f), format!("small file {i}").as_bytes());
    }
    // Read back cold: the files lie together, so one request brings dozens.
    let mut fs = load(MemDisk::new(fs.disk.data.clone()));
    let before = fs.disk.transfers.len();
    for (i, (_, f)) in files.iter().enumerate() {
        assert_eq!(read_all(&mut fs, *f), format!("small file {i}").as_bytes());
    }
    let reads = fs.disk.transfers.len() - before;
    assert!(reads <= 3000 / 32 + 10, "{reads} reads for 3000 files");
}

#[test]
fn blocks_read_ahead_past_a_file_are_forgotten_when_rewritten() {
    let mut image = ImageBuilder::new();
    let out = image.mount("/out", false);
    image.file(out, "a", b"AAAA");
    image.file(out, "b", b"BBBB");
    let mut fs = load(image.build(64));
    let (a, b) = (at(&fs, "out/a"), at(&fs, "out/b"));
    assert_eq!(fs.mapping(b, 0).map(|m| m.0), Some(2));
    assert_eq!(read_all(&mut fs, a), b"AAAA");
    assert!(fs.cache.holds_near(2), "b's block came with a's");
    let before = fs.disk.transfers.len();
    assert_eq!(read_all(&mut fs, b), b"BBBB");
    assert_eq!(fs.disk.transfers.len(), before, "and was read from there");
    // A block read ahead, then freed and written by another file, is not
    // served stale.
    let mut fs = load(MemDisk::new(fs.disk.data.clone()));
    let a = at(&fs, "out/a");
    read_all(&mut fs, a);
    assert!(fs.cache.holds_near(2));
    fs.unlink(out, "b", 1).unwrap();
    let c = fs.create_file(out, "c", 1).unwrap();
    fs.write(c, 0, &[b'C'; BLOCK], 1).unwrap();
    fs.flush_all().unwrap();
    assert_eq!(fs.mapping(c, 0).map(|m| m.0), Some(2), "c took b's old block");
    assert!(!fs.cache.holds_near(2));
}

#[test]
fn a_small_cache_keeps_its_bound_with_smaller_requests() {
    let cache = 256 << 10;
    let mut fs = Fs::load(standard_image(&[], 1024), cache).unwrap();
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 0).unwrap();
    let data = pattern(2 * MIB + 123);
    for (i, chunk) in data.chunks(3000).enumerate() {
        assert_eq!(fs.write(f, (i * 3000) as u64, chunk, 1).unwrap(), chunk.len());
        assert!(fs.cache.blocks() <= 64);
    }
    fs.save().unwrap();
    let largest = fs.disk.writes.iter().map(|(_, len)| *len).max().unwrap();
    assert_eq!(largest, 16 * BLOCK, "a quarter of the cache per request");
    let mut fs = Fs::load(MemDisk::new(fs.disk.data.clone()), cache).unwrap();
    let f = at(&fs, "out/f");
    assert_eq!(read_all(&mut fs, f), data);
    assert!(fs.cache.blocks() <= 64);
}

#[test]
fn data_read_ahead_of_a_large_file_never_hides_later_changes() {
    let mut image = ImageBuilder::new();
    let out = image.mount("/out", false);
    image.file(out, "big", &pattern(64 * BLOCK));
    let mut fs = load(image.build(256));
    let f = at(&fs, "out/big");
    let mut buf = vec![0u8; 100];
    let before = fs.disk.transfers.len();
    fs.read(f, 0, &mut buf, 1).unwrap();
    fs.read(f, 20 * BLOCK as u64, &mut buf, 1).unwrap();
    assert_eq!(fs.disk.transfers.len() - before, 1, "one request for both");
    assert_eq!(fs.cache.blocks(), 0, "and nothing cached");
    // A write lands in the cache, which reads see first.
    fs.write(f, 20 * BLOCK as u64, b"new", 2).unwrap();
    fs.read(f, 20 * BLOCK as u64, &mut buf[..3], 3).unwrap();
    assert_eq!(&buf[..3], b"new");
    // Flushed and dropped from the cache, it is read from the disk again.
    fs.make_room_for(fs.cache.capacity()).unwrap();
    assert_eq!(fs.cache.blocks(), 0);
    fs.read(f, 20 * BLOCK as u64, &mut buf[..3], 4).unwrap();
    assert_eq!(&buf[..3], b"new");
    // Cut short and extended: zeros, whatever was read before.
    fs.read(f, 30 * BLOCK as u64, &mut buf, 5).unwrap();
    fs.set_size(f, 10, 6).unwrap();
    fs.set_size(f, 64 * BLOCK as u64, 7).unwrap();
    fs.read(f, 30 * BLOCK as u64, &mut buf, 8).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
}

#[test]
fn large_writes_stream_past_the_cache_in_whole_requests() {
    let mut fs = standard(4096);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 0).unwrap();
    let len = 8 * MIB + (128 << 10) + 5000;
    let data = pattern(len);
    let before = fs.disk.writes.len();
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        assert_eq!(fs.write(f, (i * (64 << 10)) as u64, chunk, 1).unwrap(), chunk.len());
        assert_eq!(fs.cache.blocks(), 0, "never through the cache");
    }
    // What is still gathered reads back, and takes a small write into it.
    let mut buf = vec![0u8; len - 8 * MIB];
    assert_eq!(fs.read(f, 8 * MIB as u64, &mut buf, 2).unwrap(), buf.len());
    assert_eq!(buf, data[8 * MIB..]);
    fs.write(f, 8 * MIB as u64 + 10, b"inside", 3).unwrap();
    assert_eq!(fs.cache.blocks(), 0);
    let writes: Vec<usize> = fs.disk.writes[before..].iter().map(|(_, len)| *len).collect();
    assert_eq!(writes, vec![REQUEST_MAX; 8], "a request per mebibyte, the rest still gathered");
    fs.save().unwrap();
    let meta = read_back(&fs.disk);
    let mut expect = data.clone();
    expect[8 * MIB + 10..8 * MIB + 16].copy_from_slice(b"inside");
    assert_eq!(saved_content(&fs.disk, &meta, f), expect);
    let Kind::File(extents) = &meta.inodes.iter().find(|i| i.ino == f).unwrap().kind else { panic!() };
    assert_eq!(extents.len(), 1);
    assert_eq!(fs.cache.pending_blocks(), 0);
}

#[test]
fn a_stream_cut_short_or_removed_is_not_written() {
    let mut fs = standard(4096);
    let out = at(&fs, "out");
    let f = fs.create_file(out, "f", 0).unwrap();
    fs.write(f, 0, &pattern(100 * BLOCK), 1).unwrap();
    let writes = fs.disk.writes.len();
    fs.set_size(f, 0, 2).unwrap();
    assert_eq!(fs.cache.pending_blocks(), 0);
    assert_eq!(fs.disk.writes.len(), writes, "nothing of it written");
    fs.set_size(f, 100 * BLOCK as u64, 3).unwrap();
    let mut buf = vec![1u8; 100 * BLOCK];
    fs.read(f, 0, &mut buf, 4).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // Cut inside: what is kept is written, the rest reads as zeros.
    fs.write(f, 0, &pattern(100 * BLOCK), 5).unwrap();
    fs.set_size(f, 10 * BLOCK as u64 + 7, 6).unwrap();
    fs.set_size(f, 100 * BLOCK as u64, 7).unwrap();
    fs.read(f, 0, &mut buf, 8).unwrap();
    assert_eq!(buf[..10 * BLOCK + 7], pattern(10 * BLOCK + 7)[..]);
    assert!(buf[10 * BLOCK + 7..].iter().all(|b| *b == 0));
    // A removed file's stream goes with it.
    let g = fs.create_file(out, "g", 9).unwrap();
    fs.write(g, 0, &pattern(50 * BLOCK), 9).unwrap();
    let writes = fs.disk.writes.len();
    fs.unlink(out, "g", 10).unwrap();
    assert_eq!(fs.disk.writes.len(), writes);
    fs.save().unwrap();
    let meta = read_back(&fs.disk);
    assert_eq!(saved_content(&fs.disk, &meta, f), buf);
}

/// A small deterministic generator (xorshift), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn any_sequence_of_changes_saves_an_image_the_decoder_accepts() {
    let (mut saved, mut with_data) = (0, 0);
    for seed in 1..=20u64 {
        let mut fs = Fs::load(standard_image(&[("a", b"input")], 600), 256 << 10).unwrap();
        let out = at(&fs, "out");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let names = ["a", "b", "c", "d/e", "d", "d/f", "g/h/i", "g", "g/h", "a-much-longer-name-than-thirty-bytes"];
        let mut open = Vec::new();
        for step in 0..400u64 {
            let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].as_bytes();
            let path = pick(&mut rng);
            let Ok(p) = fs.resolve_parent(out, path, errno::EXIST) else { continue };
            let (dir, name) = (p.dir, String::from(p.name));
            let target = fs.lookup(dir, &name).unwrap();
            let _ = match rng.below(10) {
                0 => fs.mkdir(dir, &name, step).map(drop),
                1 => fs.create_file(dir, &name, step).map(drop),
                2 | 3 => match target {
                    Some(f) if fs.node(f).kind() == FileType::File => {
                        let len = rng.below(3 * 64 * BLOCK as u64) as usize;
                        let at = rng.below(8 * BLOCK as u64);
                        fs.write(f, at, &pattern(len), step).map(drop)
                    }
                    _ => Ok(()),
                },
                4 => match target {
                    Some(f) if fs.node(f).kind() == FileType::File => {
                        fs.set_size(f, rng.below(10 * BLOCK as u64), step)
                    }
                    _ => Ok(()),
                },
                5 => fs.unlink(dir, &name, step).or_else(|_| fs.rmdir(dir, &name, step)),
                6 => {
                    let Ok(q) = fs.resolve_parent(out, pick(&mut rng), errno::EXIST) else { continue };
                    let (to_dir, to) = (q.dir, String::from(q.name));
                    fs.rename(dir, &name, to_dir, &to, step)
                }
                7 => match target {
                    Some(f) => {
                        let Ok(q) = fs.resolve_parent(out, pick(&mut rng), errno::EXIST) else { continue };
                        let (to_dir, to) = (q.dir, String::from(q.name));
                        fs.link(f, to_dir, &to, step)
                    }
                    None => Ok(()),
                },
                8 => fs.symlink(dir, &name, "../some/where", step).map(drop),
                _ => match target {
                    // Held open, so that removing it leaves it alive.
                    Some(f) if open.len() < 4 => {
                        fs.open(f);
                        open.push(f);
                        Ok(())
                    }
                    _ => match open.pop() {
                        Some(f) => fs.close(f),
                        None => Ok(()),
                    },
                },
            };
        }
        fs.save().unwrap();
        // The decoder checks every rule of the format; the saved image
        // loads again with the same files.
        let meta = read_back(&fs.disk);
        let mut again = Fs::load(MemDisk::new(fs.disk.data.clone()), 256 << 10).unwrap();
        saved += meta.inodes.len();
        for inode in &meta.inodes {
            if let Kind::File(extents) = &inode.kind {
                with_data += usize::from(!extents.is_empty());
                assert_eq!(read_all(&mut again, inode.ino), saved_content(&fs.disk, &meta, inode.ino), "seed {seed}");
                assert_eq!(read_all(&mut again, inode.ino), read_all(&mut fs, inode.ino), "seed {seed}");
            }
        }
    }
    // Not a vacuous run: the sequences leave trees with data behind.
    assert!(saved > 20 * 6 && with_data > 20, "{saved} inodes, {with_data} files with data");
}
