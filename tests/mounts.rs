//! `[[files.mount]]` end to end: a job reads and writes through its mounts,
//! ro mounts and the directories leading to mounts refuse changes, rw
//! mounts come back after `exit` (and only then), a job writes more than
//! its RAM to disk, a full disk is ENOSPC, and bad mounts stop mvm before
//! any VM. The jobs are WAT programs generated from a list of file
//! operations, each checked against the errno it expects.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;

use common::{mvm, text};

const MVM_ERROR: i32 = 125;
const TIMEOUT: i32 = 124;
/// WASI errno values (wasi_snapshot_preview1 `errno`).
const ESUCCESS: u16 = 0;
const ENOSPC: u16 = 51;
const EROFS: u16 = 69;
/// `rights::fd_read`, `rights::fd_write`.
const RIGHT_READ: u64 = 1 << 1;
const RIGHT_WRITE: u64 = 1 << 6;

/// One file operation of a generated job, on a preopened directory `fd`.
enum Op<'a> {
    /// Creates or truncates `path` and writes `data`; the errno of the
    /// open (and, when it succeeds, of the write) must be `expect`.
    Write {
        fd: u32,
        path: &'a str,
        data: &'a [u8],
        expect: u16,
    },
    /// Writes `mib` MiB into a new `path`, 64 KiB at a time, all of which
    /// must succeed.
    Fill {
        fd: u32,
        path: &'a str,
        mib: u32,
    },
    /// Writes into a new `path` until a write fails; that errno must be
    /// `expect`.
    FillUntil {
        fd: u32,
        path: &'a str,
        expect: u16,
    },
    /// Prints the first 4 KiB of `path` to stdout.
    Cat {
        fd: u32,
        path: &'a str,
    },
    Mkdir {
        fd: u32,
        path: &'a str,
        expect: u16,
    },
    Unlink {
        fd: u32,
        path: &'a str,
        expect: u16,
    },
    /// Never returns: for a job that must time out.
    Spin,
}

/// A WAT job doing `ops` in order; the first one that goes otherwise than
/// expected exits with 10 + its index.
fn job_wat(ops: &[Op]) -> String {
    let mut data = String::new();
    let mut body = String::new();
    let mut next = 1024u32;
    let mut string = |s: &[u8], data: &mut String| {
        let at = next;
        let escaped: String = s.iter().map(|b| format!("\\{b:02x}")).collect();
        writeln!(data, "  (data (i32.const {at}) \"{escaped}\")").unwrap();
        next += s.len() as u32 + 16;
        (at, s.len() as u32)
    };
    for (i, op) in ops.iter().enumerate() {
        let fail = 10 + i;
        match op {
            Op::Write { fd, path, data: bytes, expect } => {
                let (p, pl) = string(path.as_bytes(), &mut data);
                let (d, dl) = string(bytes, &mut data);
                writeln!(
                    body,
                    "    (local.set $e (call $open (i32.const {fd}) (i32.const {p}) (i32.const {pl}) (i32.const 9) (i64.const {RIGHT_WRITE})))\n\
                     \x20   (if (i32.eqz (local.get $e)) (then (local.set $e (call $write_all (i32.const {d}) (i32.const {dl}))) (drop (call $fd_close (i32.load (i32.const 200))))))\n\
                     \x20   (if (i32.ne (local.get $e) (i32.const {expect})) (then (call $proc_exit (i32.const {fail}))))"
                )
                .unwrap();
            }
            Op::Fill { fd, path, mib } => {
                let (p, pl) = string(path.as_bytes(), &mut data);
                writeln!(
                    body,
                    "    (if (call $open (i32.const {fd}) (i32.const {p}) (i32.const {pl}) (i32.const 9) (i64.const {RIGHT_WRITE})) (then (call $proc_exit (i32.const {fail}))))\n\
                     \x20   (local.set $n (i32.mul (i32.const {mib}) (i32.const 16)))\n\
                     \x20   (loop $more\n\
                     \x20     (if (call $write_all (i32.const 131072) (i32.const 65536)) (then (call $proc_exit (i32.const {fail}))))\n\
                     \x20     (local.set $n (i32.sub (local.get $n) (i32.const 1)))\n\
                     \x20     (br_if $more (local.get $n)))\n\
                     \x20   (drop (call $fd_close (i32.load (i32.const 200))))"
                )
                .unwrap();
            }
            Op::FillUntil { fd, path, expect } => {
                let (p, pl) = string(path.as_bytes(), &mut data);
                writeln!(
                    body,
                    "    (if (call $open (i32.const {fd}) (i32.const {p}) (i32.const {pl}) (i32.const 9) (i64.const {RIGHT_WRITE})) (then (call $proc_exit (i32.const {fail}))))\n\
                     \x20   (loop $more\n\
                     \x20     (local.set $e (call $write_all (i32.const 131072) (i32.const 65536)))\n\
                     \x20     (br_if $more (i32.eqz (local.get $e))))\n\
                     \x20   (drop (call $fd_close (i32.load (i32.const 200))))\n\
                     \x20   (if (i32.ne (local.get $e) (i32.const {expect})) (then (call $proc_exit (i32.const {fail}))))"
                )
                .unwrap();
            }
            Op::Cat { fd, path } => {
                let (p, pl) = string(path.as_bytes(), &mut data);
                writeln!(
                    body,
                    "    (if (call $open (i32.const {fd}) (i32.const {p}) (i32.const {pl}) (i32.const 0) (i64.const {RIGHT_READ})) (then (call $proc_exit (i32.const {fail}))))\n\
                     \x20   (i32.store (i32.const 208) (i32.const 65536))\n\
                     \x20   (i32.store (i32.const 212) (i32.const 4096))\n\
                     \x20   (if (call $fd_read (i32.load (i32.const 200)) (i32.const 208) (i32.const 1) (i32.const 216)) (then (call $proc_exit (i32.const {fail}))))\n\
                     \x20   (drop (call $fd_close (i32.load (i32.const 200))))\n\
                     \x20   (i32.store (i32.const 212) (i32.load (i32.const 216)))\n\
                     \x20   (drop (call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 216)))"
                )
                .unwrap();
            }
            Op::Mkdir { fd, path, expect } | Op::Unlink { fd, path, expect } => {
                let (p, pl) = string(path.as_bytes(), &mut data);
                let func = if matches!(op, Op::Mkdir { .. }) { "$mkdir" } else { "$unlink" };
                writeln!(
                    body,
                    "    (if (i32.ne (call {func} (i32.const {fd}) (i32.const {p}) (i32.const {pl})) (i32.const {expect})) (then (call $proc_exit (i32.const {fail}))))"
                )
                .unwrap();
            }
            Op::Spin => writeln!(body, "    (loop $forever (br $forever))").unwrap(),
        }
    }
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 3)
{data}
  ;; Opens a path under a preopen into the fd at 200; returns the errno.
  (func $open (param $dir i32) (param $path i32) (param $len i32) (param $oflags i32) (param $rights i64) (result i32)
    (call $path_open (local.get $dir) (i32.const 0) (local.get $path) (local.get $len)
      (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 200)))
  ;; Writes all of [data, data + len) to the fd at 200; returns the errno.
  (func $write_all (param $data i32) (param $len i32) (result i32)
    (local $e i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 208) (local.get $data))
        (i32.store (i32.const 212) (local.get $len))
        (local.set $e (call $fd_write (i32.load (i32.const 200)) (i32.const 208) (i32.const 1) (i32.const 216)))
        (if (local.get $e) (then (return (local.get $e))))
        (local.set $data (i32.add (local.get $data) (i32.load (i32.const 216))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 216))))
        (br $more)))
    (i32.const 0))
  (func (export "_start")
    (local $e i32) (local $n i32)
{body}  ))
"#
    )
}

/// A job directory: job.toml (`[run] wasm = "job.wat"` plus `rest`) and the
/// job generated from `ops`.
fn job_dir(rest: &str, ops: &[Op]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.wat"), job_wat(ops)).unwrap();
    std::fs::write(
        dir.path().join("job.toml"),
        format!("[guest]\nmemory_mib = 16\ntimeout_s = 60\n[run]\nwasm = \"job.wat\"\n{rest}"),
    )
    .unwrap();
    dir
}

fn up(dir: &Path) -> Output {
    common::run(mvm().arg("up").arg(dir.join("job.toml")))
}

fn mount(host: &str, guest: &str, mode: &str) -> String {
    format!("[[files.mount]]\nhost = \"{host}\"\nguest = \"{guest}\"\nmode = \"{mode}\"\n")
}

/// Every entry beneath `root`, with file contents, to compare trees.
fn listing(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                todo.push(path.clone());
                out.push((rel, None));
            } else {
                out.push((rel, Some(std::fs::read(&path).unwrap())));
            }
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_rw_mount_comes_back_with_what_the_job_changed() {
    common::require_kvm();
    let ops = [
        Op::Cat { fd: 3, path: "a.txt" },
        Op::Write { fd: 3, path: "a.txt", data: b"new", expect: ESUCCESS },
        Op::Mkdir { fd: 3, path: "made", expect: ESUCCESS },
        Op::Write { fd: 3, path: "made/f", data: b"f", expect: ESUCCESS },
        Op::Unlink { fd: 3, path: "keep/k", expect: ESUCCESS },
        // fd 4 is "/": the same mount, reached by its absolute path.
        Op::Write { fd: 4, path: "data/abs.txt", data: b"through /", expect: ESUCCESS },
    ];
    let dir = job_dir(&mount("data", "/data", "rw"), &ops);
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("keep")).unwrap();
    std::fs::write(data.join("a.txt"), "old").unwrap();
    std::fs::write(data.join("keep/k"), "k").unwrap();
    let out = up(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "old");
    let some = |s: &str| Some(s.as_bytes().to_vec());
    assert_eq!(
        listing(&data),
        [
            ("a.txt".into(), some("new")),
            ("abs.txt".into(), some("through /")),
            ("keep".into(), None),
            ("made".into(), None),
            ("made/f".into(), some("f")),
        ]
    );
    assert_eq!(names(dir.path()), ["data", "job.toml", "job.wat"], "no staging copy left, and no out/ without outputs");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn ro_mounts_and_the_directories_leading_to_mounts_refuse_changes() {
    common::require_kvm();
    let ops = [
        Op::Cat { fd: 3, path: "words.txt" },
        Op::Write { fd: 3, path: "words.txt", data: b"x", expect: EROFS },
        Op::Write { fd: 3, path: "new.txt", data: b"x", expect: EROFS },
        Op::Mkdir { fd: 3, path: "d", expect: EROFS },
        // fd 4 is "/", which only leads to /src/data: read-only too.
        Op::Write { fd: 4, path: "top.txt", data: b"x", expect: EROFS },
        Op::Mkdir { fd: 4, path: "src/made", expect: EROFS },
    ];
    let dir = job_dir(&mount("data", "/src/data", "ro"), &ops);
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/words.txt"), "one two").unwrap();
    let out = up(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one two");
    assert_eq!(listing(&dir.path().join("data")), [("words.txt".into(), Some(b"one two".to_vec()))]);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_job_that_times_out_leaves_its_rw_mount_as_it_was() {
    common::require_kvm();
    let ops = [
        Op::Write { fd: 3, path: "a.txt", data: b"half-written", expect: ESUCCESS },
        Op::Unlink { fd: 3, path: "b.txt", expect: ESUCCESS },
        Op::Spin,
    ];
    let dir = job_dir(&mount("data", "/data", "rw"), &ops);
    let toml = std::fs::read_to_string(dir.path().join("job.toml")).unwrap().replace("timeout_s = 60", "timeout_s = 3");
    std::fs::write(dir.path().join("job.toml"), toml).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    std::fs::write(data.join("b.txt"), "b").unwrap();
    let before = listing(&data);
    let out = up(dir.path());
    assert_eq!(out.status.code(), Some(TIMEOUT), "{}", text(&out.stderr));
    assert_eq!(listing(&data), before);
    assert_eq!(names(dir.path()), ["data", "job.toml", "job.wat"]);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_job_writes_four_times_its_ram_to_disk() {
    common::require_kvm();
    let ops = [Op::Fill { fd: 3, path: "big.bin", mib: 64 }];
    let dir = job_dir(&format!("[files]\ndisk_mib = 80\n{}", mount("data", "/data", "rw")), &ops);
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let out = up(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let meta = std::fs::metadata(dir.path().join("data/big.bin")).unwrap();
    assert_eq!(meta.len(), 64 << 20, "64 MiB written by a job with 16 MiB of RAM");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn past_disk_mib_a_write_is_enospc() {
    common::require_kvm();
    let ops = [Op::FillUntil { fd: 3, path: "big.bin", expect: ENOSPC }];
    let dir = job_dir(&format!("[files]\ndisk_mib = 2\n{}", mount("data", "/data", "rw")), &ops);
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let out = up(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let len = std::fs::metadata(dir.path().join("data/big.bin")).unwrap().len();
    assert!(len > 0 && len <= 2 << 20, "what fitted comes back ({len} bytes)");
}

/// Refused by the job file's checks: no KVM needed, and nothing is left.
#[test]
fn bad_mounts_stop_mvm_before_any_vm() {
    let cases = [
        (mount("missing", "/m", "ro"), "job.toml:7: files.mount[0].host: no such file: "),
        (mount("data", "m", "ro"), "job.toml:8: files.mount[0].guest: must be an absolute path"),
        (mount("data", "/m", "rw") + &mount("data", "/n", "ro"), "job.toml:11: files.mount[1].host: host path "),
        (
            mount("data", "/m", "rw") + &mount("other", "/m/sub", "ro"),
            "job.toml:12: files.mount[1].guest: guest path /m/sub lies inside rw mount /m",
        ),
    ];
    for (rest, expected) in cases {
        let dir = job_dir(&rest, &[]);
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        let before = names(dir.path());
        let out = up(dir.path());
        assert_eq!(out.status.code(), Some(MVM_ERROR), "{rest}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(expected), "{rest}: {}", text(&out.stderr));
        assert_eq!(names(dir.path()), before, "{rest}: nothing left behind");
    }
}
