//! The filesystem disk as built from host trees, checked by decoding it.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mvm_wasi::fsimage::{Inode, Kind, Limits, Metadata, Mount, Superblock, BLOCK, NO_MOUNT, ROOT};

use crate::job::image::{build_image, preopens, EntryProblem, ImageError, ImageMount, Source};
use crate::job::spec::Input;

pub(super) const LIMITS: Limits = Limits { max_inodes: 1 << 20, max_entries: 1 << 20, max_extents: 1 << 30 };

/// An image's superblock and metadata, and its inodes by number.
pub(super) struct Decoded {
    pub sb: Superblock,
    pub meta: Metadata,
    pub file: fs::File,
}

impl Decoded {
    pub fn read(image: &Path) -> Decoded {
        let file = fs::File::open(image).unwrap();
        let len = file.metadata().unwrap().len();
        let mut block = vec![0u8; BLOCK];
        file.read_exact_at(&mut block, 0).unwrap();
        let sb = Superblock::decode(&block, len / BLOCK as u64).unwrap();
        let mut bytes = vec![0u8; sb.meta_len as usize];
        file.read_exact_at(&mut bytes, sb.meta_start * BLOCK as u64).unwrap();
        let meta = Metadata::decode(&bytes, sb.total_blocks, LIMITS).unwrap();
        Decoded { sb, meta, file }
    }

    pub fn lookup(&self, path: &str) -> &Inode {
        lookup(&self.meta, path)
    }

    pub fn names(&self, path: &str) -> Vec<String> {
        let Kind::Dir(entries) = &self.lookup(path).kind else { panic!("{path}: not a directory") };
        entries.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn data(&self, path: &str) -> Vec<u8> {
        let inode = self.lookup(path);
        let Kind::File(extents) = &inode.kind else { panic!("{path}: not a file") };
        let mut data = vec![0u8; inode.size as usize];
        for e in extents {
            let from = e.logical as usize * BLOCK;
            let len = (e.count as usize * BLOCK).min(data.len() - from);
            self.file.read_exact_at(&mut data[from..from + len], e.start * BLOCK as u64).unwrap();
        }
        data
    }
}

/// The inode at `path`, `/`-separated, from the root.
pub(super) fn lookup<'a>(meta: &'a Metadata, path: &str) -> &'a Inode {
    let inode = |ino: u64| meta.inodes.iter().find(|i| i.ino == ino).unwrap();
    let mut at = inode(ROOT);
    for name in path.split('/').filter(|c| !c.is_empty()) {
        let Kind::Dir(entries) = &at.kind else { panic!("{path}: not a directory") };
        let ino = entries.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{path}: no {name}")).1;
        at = inode(ino);
    }
    at
}

pub(super) fn host_mount(guest: &str, host: &Path, read_only: bool) -> ImageMount {
    let source = if host.is_dir() { Source::Dir(host.to_owned()) } else { Source::File(host.to_owned()) };
    ImageMount { guest: guest.into(), read_only, source, label: format!("files.mount {guest}") }
}

/// A tmpfs mounted at a directory for as long as it lives; `None` where
/// mvm's tests may not mount (not root).
pub(super) struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    pub(super) fn mount(at: &Path) -> Option<Tmpfs> {
        let path = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call; no data.
        let mounted = unsafe { libc::mount(c"none".as_ptr(), path.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        (mounted == 0).then_some(Tmpfs(path))
    }

    /// Where it is now that a directory above it was renamed.
    pub(super) fn moved_to(&mut self, at: &Path) {
        self.0 = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path this value owns.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A host tree: `top.txt`, `sub/inner.bin` (just over 1 MiB), `sub/empty`,
/// `sub/link` (a symlink out of the tree), `sub/hard` (a hard link to
/// `top.txt`), `nested` (a file a deeper mount hides).
pub(super) fn tree(at: &Path) -> Vec<u8> {
    fs::create_dir_all(at.join("sub")).unwrap();
    fs::write(at.join("top.txt"), "top\n").unwrap();
    fs::set_permissions(at.join("top.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let big: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i % 251) as u8).collect();
    fs::write(at.join("sub/inner.bin"), &big).unwrap();
    fs::set_permissions(at.join("sub/inner.bin"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(at.join("sub/empty"), "").unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", at.join("sub/link")).unwrap();
    fs::hard_link(at.join("top.txt"), at.join("sub/hard")).unwrap();
    fs::write(at.join("nested"), "hidden by a mount").unwrap();
    fs::set_permissions(at.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    big
}

#[test]
fn an_image_holds_every_mount_and_the_directories_that_lead_to_them() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    let big = tree(&host);
    fs::write(tmp.path().join("words.txt"), "a b c").unwrap();
    fs::write(tmp.path().join("conf"), "k=v").unwrap();
    fs::create_dir(tmp.path().join("deeper")).unwrap();
    fs::write(tmp.path().join("deeper/d.txt"), "d").unwrap();
    let mounts = vec![
        ImageMount {
            guest: "/in".into(),
            read_only: true,
            source: Source::Files(vec![Input {
                name: "words.txt".into(),
                path: tmp.path().join("words.txt"),
                given: tmp.path().join("words.txt"),
            }]),
            label: "files.inputs".into(),
        },
        ImageMount { guest: "/out".into(), read_only: false, source: Source::Empty, label: "files.outputs".into() },
        host_mount("/data/set", &host, true),
        host_mount("/etc/app/conf", &tmp.path().join("conf"), false),
        host_mount("/data/set/nested/deep", &tmp.path().join("deeper"), true),
    ];
    let image = tmp.path().join("fs.img");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let summary = build_image(&image, &mounts, 3).unwrap();

    let d = Decoded::read(&image);
    assert_eq!((d.sb.total_blocks, summary.total_blocks), (summary.used_blocks + 3 * 256, d.sb.total_blocks));
    assert_eq!(fs::metadata(&image).unwrap().len(), d.sb.total_blocks * BLOCK as u64, "sized for the free room");
    assert!(fs::metadata(&image).unwrap().blocks() * 512 < 3 << 20, "the free room is sparse");
    let roots: Vec<(u64, bool)> = d.meta.mounts.iter().map(|m: &Mount| (m.root, m.read_only)).collect();
    let expected: Vec<(u64, bool)> = ["/in", "/out", "/data/set", "/etc/app/conf", "/data/set/nested/deep"]
        .iter()
        .zip([true, false, true, false, true])
        .map(|(p, ro)| (d.lookup(p).ino, ro))
        .collect();
    assert_eq!(roots, expected, "the mount table is in job order");
    for (path, mount) in [("/", NO_MOUNT), ("/data", NO_MOUNT), ("/etc", NO_MOUNT), ("/etc/app", NO_MOUNT)] {
        let inode = d.lookup(path);
        assert_eq!((inode.mount, inode.perm), (mount, 0o755), "{path} only leads to mounts");
    }
    assert!(d.lookup("/").mtim >= before, "directories made for the job are made now");
    assert_eq!(d.names("/"), ["data", "etc", "in", "out"]);
    assert_eq!(d.names("/in"), ["words.txt"]);
    assert_eq!(d.names("/out"), Vec::<String>::new());
    assert_eq!(d.names("/data/set"), ["nested", "sub", "top.txt"]);
    assert_eq!(d.names("/data/set/sub"), ["empty", "hard", "inner.bin", "link"]);
    assert_eq!(d.data("/in/words.txt"), b"a b c");
    assert_eq!(d.data("/etc/app/conf"), b"k=v");
    assert_eq!(d.data("/data/set/top.txt"), b"top\n");
    assert_eq!(d.data("/data/set/sub/inner.bin"), big);
    assert_eq!(d.data("/data/set/sub/empty"), b"");
    assert_eq!(d.data("/data/set/nested/deep/d.txt"), b"d");
    let nested = d.lookup("/data/set/nested");
    assert_eq!(nested.mount, NO_MOUNT, "the file a deeper mount hides gives way to a directory leading to it");
    let link = d.lookup("/data/set/sub/link");
    assert_eq!(link.kind, Kind::Symlink("../../../etc/passwd".into()), "kept as a link, never followed");
    assert_eq!(d.lookup("/data/set/sub/hard").ino, d.lookup("/data/set/top.txt").ino, "a hard link stays one inode");
    let top = d.lookup("/data/set/top.txt");
    let meta = fs::metadata(host.join("top.txt")).unwrap();
    assert_eq!(top.perm, 0o640);
    assert_eq!(top.mtim, meta.mtime() as u64 * 1_000_000_000 + meta.mtime_nsec() as u64);
    assert_eq!((d.lookup("/data/set/sub/inner.bin").perm, d.lookup("/data/set/sub").perm), (0o755, 0o750));
    assert_eq!(d.lookup("/data/set").mount, 2);
}

#[test]
fn a_mount_at_the_root_is_the_root_and_the_last_preopen() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    tree(&host);
    let mounts = vec![host_mount("/", &host, true)];
    let image = tmp.path().join("fs.img");
    build_image(&image, &mounts, 1).unwrap();
    let d = Decoded::read(&image);
    assert_eq!(d.meta.mounts, [Mount { root: ROOT, read_only: true }]);
    assert_eq!(d.lookup("/").mount, 0);
    assert_eq!(d.names("/"), ["nested", "sub", "top.txt"]);
    assert_eq!(preopens(&mounts), ["/"]);
}

#[test]
fn preopens_follow_the_mount_table_then_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, "").unwrap();
    let mounts = vec![
        ImageMount { guest: "/in".into(), read_only: true, source: Source::Files(vec![]), label: String::new() },
        ImageMount { guest: "/out".into(), read_only: false, source: Source::Empty, label: String::new() },
        host_mount("/src", tmp.path(), true),
        host_mount("/etc/f", &file, true),
    ];
    assert_eq!(preopens(&mounts), ["/in", "/out", "/src", "/"], "a file mount is reached through /");
}

#[test]
fn what_a_job_cannot_be_given_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let build = |host: &Path| {
        let image = tmp.path().join("fs.img");
        build_image(&image, &[host_mount("/m", host, true)], 1).unwrap_err()
    };
    let with_socket = tmp.path().join("sockets");
    fs::create_dir_all(with_socket.join("a")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(with_socket.join("a/s")).unwrap();
    let e = build(&with_socket);
    assert!(
        matches!(&e, ImageError::Entry { path, problem: EntryProblem::Unsupported("socket"), .. } if path == &with_socket.join("a/s")),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "files.mount /m: {}: a socket cannot be given to a job; remove it or mount a tree without it",
            with_socket.join("a/s").display()
        )
    );

    let non_utf8 = tmp.path().join("names");
    fs::create_dir(&non_utf8).unwrap();
    let bad: PathBuf = non_utf8.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::write(&bad, "").unwrap();
    let e = build(&non_utf8);
    assert!(matches!(&e, ImageError::Entry { path, problem: EntryProblem::NameNotUtf8, .. } if path == &bad), "{e}");

    let e =
        build_image(&tmp.path().join("fs.img"), &[host_mount("/m", &tmp.path().join("gone"), true)], 1).unwrap_err();
    assert!(matches!(e, ImageError::Read { .. }), "{e}");
}

#[test]
fn identical_trees_give_identical_images() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    tree(&host);
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    let mounts = [host_mount("/d", &host, true)];
    build_image(&a, &mounts, 1).unwrap();
    build_image(&b, &mounts, 1).unwrap();
    let (da, db) = (Decoded::read(&a), Decoded::read(&b));
    let strip = |m: &Metadata| m.inodes.iter().map(|i| (i.ino, i.kind.clone(), i.perm, i.size)).collect::<Vec<_>>();
    assert_eq!(strip(&da.meta), strip(&db.meta), "entries are staged in name order");
}

#[test]
fn a_tree_deeper_than_a_write_back_may_bring_back_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    let mut deepest = host.clone();
    for _ in 0..crate::job::collect::MAX_DEPTH {
        deepest.push("d");
    }
    fs::create_dir_all(&deepest).unwrap();
    let image = tmp.path().join("fs.img");
    build_image(&image, &[host_mount("/m", &host, false)], 1).unwrap();
    fs::create_dir(deepest.join("d")).unwrap();
    let e = build_image(&image, &[host_mount("/m", &host, false)], 1).unwrap_err();
    assert!(matches!(&e, ImageError::TooDeep { path, .. } if path == &deepest.join("d")), "{e}");
}

#[test]
fn a_sparse_file_takes_only_its_data_in_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    fs::create_dir(&host).unwrap();
    let sparse = fs::File::create(host.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"middle", 32 << 20).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    let image = tmp.path().join("fs.img");
    let summary = build_image(&image, &[host_mount("/m", &host, true)], 1).unwrap();
    let d = Decoded::read(&image);
    let data = d.data("/m/sparse");
    assert_eq!(data.len(), 64 << 20);
    assert_eq!((&data[32 << 20..(32 << 20) + 6], &data[(64 << 20) - 3..]), (&b"middle"[..], &b"end"[..]));
    assert!(data[..32 << 20].iter().all(|&b| b == 0));
    let Kind::File(extents) = &d.lookup("/m/sparse").kind else { panic!("not a file") };
    // Linux's filesystems tell holes (tmpfs, ext4, xfs, btrfs, overlayfs
    // over them): only the two blocks holding data are in the image.
    assert_eq!(extents.iter().map(|e| (e.logical, e.count)).collect::<Vec<_>>(), [(8192, 1), (16383, 1)]);
    assert!(summary.used_blocks < 8, "{summary:?}");
}

#[test]
fn a_jobs_mounts_are_its_shorthands_then_its_mounts_in_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    fs::write(dir.join("m.wat"), "(module)").unwrap();
    fs::create_dir(dir.join("src")).unwrap();
    fs::write(dir.join("words.txt"), "w").unwrap();
    let toml = "[run]\nwasm = \"m.wat\"\n[files]\ninputs = [\"words.txt\"]\noutputs = \"out\"\n\
                [[files.mount]]\nhost = \"src\"\nguest = \"/src\"\n[[files.mount]]\nhost = \"m.wat\"\nguest = \"/m\"\nmode = \"rw\"\n";
    let limits = crate::job::HostLimits { memory_mib: 1024, cpus: 1 };
    let spec = crate::job::JobSpec::parse(toml, &dir.join("job.toml"), &limits).unwrap();
    let file = dir.join("job.toml").display().to_string();
    assert_eq!(
        crate::job::image::mounts(&spec),
        [
            ImageMount {
                guest: "/in".into(),
                read_only: true,
                source: Source::Files(vec![Input {
                    name: "words.txt".into(),
                    path: dir.join("words.txt"),
                    given: dir.join("words.txt")
                }]),
                label: "files.inputs".into()
            },
            ImageMount { guest: "/out".into(), read_only: false, source: Source::Empty, label: "files.outputs".into() },
            ImageMount {
                guest: "/src".into(),
                read_only: true,
                source: Source::Dir(dir.join("src")),
                label: format!("{file}:6: files.mount[0]")
            },
            ImageMount {
                guest: "/m".into(),
                read_only: false,
                source: Source::File(dir.join("m.wat")),
                label: format!("{file}:9: files.mount[1]")
            },
        ]
    );
}

#[test]
fn a_mount_that_changed_type_since_validation_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, "").unwrap();
    let as_dir =
        ImageMount { guest: "/m".into(), read_only: true, source: Source::Dir(file.clone()), label: String::new() };
    let e = build_image(&tmp.path().join("a.img"), &[as_dir], 1).unwrap_err();
    assert!(matches!(e, ImageError::Entry { problem: EntryProblem::Changed, .. }), "{e}");
    let as_file = ImageMount {
        guest: "/m".into(),
        read_only: true,
        source: Source::File(tmp.path().to_owned()),
        label: String::new(),
    };
    let e = build_image(&tmp.path().join("b.img"), &[as_file], 1).unwrap_err();
    assert!(matches!(e, ImageError::Entry { problem: EntryProblem::Changed, .. }), "{e}");
}

/// A mount's host path and an input, checked at validation, then a symlink
/// planted in a component (as another job's write-back could): the image
/// is not built from where the link leads.
#[test]
fn a_symlink_planted_on_the_way_after_validation_is_refused_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    fs::create_dir_all(secret.join("d")).unwrap();
    fs::write(secret.join("d/f"), "secret").unwrap();
    std::os::unix::fs::symlink(&secret, tmp.path().join("a")).unwrap();
    let input = Input { name: "f".into(), path: tmp.path().join("a/d/f"), given: tmp.path().join("a/d/f") };
    let cases = [
        host_mount("/m", &tmp.path().join("a/d"), true),
        host_mount("/m", &tmp.path().join("a/d/f"), true),
        ImageMount { guest: "/in".into(), read_only: true, source: Source::Files(vec![input]), label: String::new() },
    ];
    for mount in cases {
        let e = build_image(&tmp.path().join("i.img"), std::slice::from_ref(&mount), 1).unwrap_err();
        assert!(matches!(e, ImageError::Entry { problem: EntryProblem::Symlinked, .. }), "{mount:?}: {e}");
    }
}

#[test]
fn a_mount_point_inside_a_mounted_tree_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    tree(&host);
    fs::create_dir(host.join("sub/mnt")).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&host.join("sub/mnt")) else { return };
    for read_only in [true, false] {
        let e = build_image(&tmp.path().join("i.img"), &[host_mount("/m", &host, read_only)], 1).unwrap_err();
        let ImageError::Entry { path, problem: EntryProblem::OtherFilesystem, .. } = &e else { panic!("{e}") };
        assert_eq!(path, &host.join("sub/mnt"));
    }
}
