//! WASI preview 1's file functions end to end under `mvm up`: the
//! self-checking C program tests/wasi/files.c (compiled here for
//! wasm32-wasi) runs in a job with a read-only mount, a writable mount and
//! `outputs`, and what it left in each comes back to the host as it should;
//! tests/wasi/bulk.c writes and reads back several times its RAM.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{mvm, text};

/// Compiles tests/wasi/`name` to `dest` with Debian's wasm32-wasi C
/// toolchain, as examples/wordcount/build.sh does.
fn compile(name: &str, dest: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wasi").join(name);
    let out = Command::new("clang-14")
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-Wall", "-Werror", "-o"])
        .arg(dest)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run clang-14 ({e}): install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 \
                 (scripts/setup does)"
            )
        });
    assert!(
        out.status.success(),
        "clang-14 could not compile {} (scripts/setup installs clang-14 lld-14 wasi-libc \
         libclang-rt-14-dev-wasm32):\n{}",
        source.display(),
        text(&out.stderr)
    );
}

const JOB: &str = r#"name = "files"

[guest]
memory_mib = 64
timeout_s = 60

[run]
wasm = "files.wasm"
args = ["/out", "--rw", "/rw", "--ro", "/ro", "--mvm"]

[files]
outputs = "out/"

[[files.mount]]
host = "ro/"
guest = "/ro"
mode = "ro"

[[files.mount]]
host = "rw/"
guest = "/rw"
mode = "rw"
"#;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Every entry under `dir`, relative to it, sorted, directories with a
/// trailing slash and symlinks as "name -> target".
fn listing(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(dir).unwrap().to_str().unwrap().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                found.push(format!("{rel} -> {}", std::fs::read_link(entry.path()).unwrap().display()));
            } else if kind.is_dir() {
                found.push(format!("{rel}/"));
                stack.push(entry.path());
            } else {
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn wasi_file_functions_end_to_end_with_mounts() {
    common::require_kvm();
    let job = tempfile::tempdir().unwrap();
    let dir = job.path();
    compile("files.c", &dir.join("files.wasm"));
    std::fs::write(dir.join("job.toml"), JOB).unwrap();
    write(&dir.join("ro/hello.txt"), "hello\n");
    write(&dir.join("rw/keep.txt"), "keep\n");
    write(&dir.join("rw/change.txt"), "old\n");
    write(&dir.join("rw/gone.txt"), "gone\n");
    write(&dir.join("rw/olddir/inner.txt"), "inner\n");

    let out = common::measure_within(mvm().arg("up").arg(dir.join("job.toml")), Duration::from_secs(180));
    let stdout = text(&out.stdout);
    assert_eq!(out.code(), 0, "stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).lines().last(), Some("mvm: job files ended: exit 0"));
    let last = stdout.lines().last().unwrap_or_default();
    let n: usize = last
        .strip_prefix("all ")
        .and_then(|rest| rest.strip_suffix(" checks passed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the last line is not \"all N checks passed\":\n{stdout}"));
    let passed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(passed.len(), n, "{stdout}");
    assert_eq!(passed.len() + 1, stdout.lines().count(), "lines other than checks:\n{stdout}");

    // /out: the result and the tree of 500 files, nothing else (the scratch dir was removed).
    let outputs = dir.join("out");
    assert_eq!(std::fs::read_to_string(outputs.join("result.txt")).unwrap(), format!("{last}\n"));
    let mut want = vec!["result.txt".to_string(), "tree/".to_string()];
    for d in 0..10 {
        want.push(format!("tree/d{d:02}/"));
        for e in 0..5 {
            want.push(format!("tree/d{d:02}/e{e}/"));
            for f in 0..10 {
                let file = format!("tree/d{d:02}/e{e}/f{f}.txt");
                assert_eq!(std::fs::read_to_string(outputs.join(&file)).unwrap(), format!("{file}\n"));
                want.push(file);
            }
        }
    }
    want.sort();
    assert_eq!(listing(&outputs), want);

    // The rw mount: every change came back, and nothing else.
    let rw = dir.join("rw");
    assert_eq!(
        listing(&rw),
        [
            "change.txt",
            "keep.txt",
            "link -> keep.txt",
            "made/",
            "made/deep/",
            "made/deep/file.txt",
            "newdir/",
            "newdir/inner.txt"
        ]
    );
    assert_eq!(std::fs::read_to_string(rw.join("change.txt")).unwrap(), "old\nnew\n");
    assert_eq!(std::fs::read_to_string(rw.join("keep.txt")).unwrap(), "keep\n");
    assert_eq!(std::fs::read_to_string(rw.join("made/deep/file.txt")).unwrap(), "made\n");
    assert_eq!(std::fs::read_to_string(rw.join("newdir/inner.txt")).unwrap(), "inner\n");
    let keep = std::fs::metadata(rw.join("keep.txt")).unwrap();
    assert_eq!((keep.mtime(), keep.mtime_nsec()), (1_500_000_000, 250_000_000), "keep.txt's mtime");

    // The ro mount: as it was.
    assert_eq!(listing(&dir.join("ro")), ["hello.txt"]);
    assert_eq!(std::fs::read_to_string(dir.join("ro/hello.txt")).unwrap(), "hello\n");
}

/// bulk.c's contents (see its header), computed again here.
fn small_len(i: u32) -> usize {
    1024 + ((i.wrapping_mul(2_654_435_761) >> 7) % 7169) as usize
}

fn small_byte(i: u32, k: u32) -> u8 {
    i.wrapping_mul(31).wrapping_add(k * 7).wrapping_add(k >> 8) as u8
}

fn big_byte(o: u64) -> u8 {
    ((o ^ (o >> 11) ^ (o >> 19)) * 13) as u8
}

/// A job with 16 MiB of RAM writes 3,000 small files and a 64 MiB file
/// (about 5 times its RAM, and more than any write-back cache it could
/// hold), reads every byte back (the oldest from disk), overwrites part of
/// the big file in place; then the host finds exactly those bytes in its
/// outputs.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_job_reads_back_five_times_its_ram_from_disk() {
    common::require_kvm();
    let job = tempfile::tempdir().unwrap();
    let dir = job.path();
    compile("bulk.c", &dir.join("bulk.wasm"));
    let (files, big_mib) = (3000u32, 64u64);
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"bulk\"\n[guest]\nmemory_mib = 16\ntimeout_s = 120\n[run]\nwasm = \"bulk.wasm\"\n\
             args = [\"/out\", \"{files}\", \"{big_mib}\"]\n[files]\noutputs = \"out/\"\noutputs_max_mib = 128\n\
             disk_mib = 128\n"
        ),
    )
    .unwrap();
    let out = common::measure_within(mvm().arg("up").arg(dir.join("job.toml")), Duration::from_secs(300));
    assert_eq!(out.code(), 0, "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    let small_bytes: usize = (0..files).map(small_len).sum();
    let bytes = small_bytes as u64 + (big_mib << 20);
    assert_eq!(
        text(&out.stdout),
        format!("bulk: {files} files and {big_mib} MiB, {bytes} bytes written and read back\n")
    );

    let outputs = dir.join("out");
    for i in 0..files {
        let path = outputs.join(format!("bulk/d{:02}/f{i:04}", i / 100));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let want: Vec<u8> = (0..small_len(i) as u32).map(|k| small_byte(i, k)).collect();
        assert!(data == want, "{} differs from what the job wrote", path.display());
    }
    let big = std::fs::read(outputs.join("big.bin")).unwrap();
    assert_eq!(big.len() as u64, big_mib << 20);
    let (start, end) = ((big_mib << 19) + 100, (big_mib << 19) + (1 << 20) + 4096);
    for (o, &byte) in big.iter().enumerate() {
        let o = o as u64;
        let want = big_byte(o) ^ if (start..end).contains(&o) { 0xff } else { 0 };
        assert_eq!(byte, want, "big.bin differs at byte {o}");
    }
}
