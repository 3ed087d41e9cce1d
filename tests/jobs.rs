//! `mvm up` end to end: every example, every way a job can end (a guest
//! kernel crash included), outputs (after a trap too, over their cap, into a
//! directory that cannot be made), separate output streams, host entropy, bad
//! job files, and a sleeping job that costs no CPU. Examples run from
//! temporary copies, never in place.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{mvm, text};

const TRAP: i32 = 121;
const OUT_OF_MEMORY: i32 = 122;
const GUEST_CRASHED: i32 = 123;
const TIMEOUT: i32 = 124;
const MVM_ERROR: i32 = 125;

/// A file of an example in the source tree, to read. A job run from there
/// would write its `out/` into the checkout: run [`common::example`]'s copy.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

fn up(job: &Path, extra: &[&str]) -> Output {
    common::run(mvm().arg("up").args(extra).arg(job))
}

/// A job folder in a temporary directory: job.toml plus the given files.
fn job_dir(toml: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.toml"), toml).unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

fn last_line(out: &Output) -> String {
    text(&out.stderr).lines().last().unwrap_or_default().to_string()
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn hello_example() {
    common::require_kvm();
    let hello = common::example("hello");
    let out = up(&hello.job(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from a WebAssembly job in its own VM\n");
    assert_eq!(last_line(&out), "mvm: job hello ended: exit 0");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn wordcount_example_reads_its_input_and_writes_an_output() {
    common::require_kvm();
    let work = common::example("wordcount");
    assert!(
        work.path.join("wc.wasm").exists(),
        "examples/wordcount/wc.wasm is missing: run scripts/setup (or examples/wordcount/build.sh)"
    );
    let words = std::fs::read_to_string(work.path.join("data/words.txt")).unwrap();
    let out = up(&work.job(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (lines, words_n, bytes) = (words.lines().count(), words.split_whitespace().count(), words.len());
    assert_eq!(text(&out.stdout), format!("{lines:7} {words_n:7} {bytes:7} /in/words.txt\n"));
    let counts = std::fs::read_to_string(work.path.join("out/counts.txt")).unwrap();
    assert_eq!(counts, format!("lines={lines} words={words_n} bytes={bytes}\n"));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn outputs_example_brings_back_every_file() {
    common::require_kvm();
    let work = common::example("outputs");
    let out = up(&work.job(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "wrote 3 outputs\n");
    let outdir = work.path.join("out");
    assert_eq!(std::fs::read_to_string(outdir.join("result.txt")).unwrap(), "42\n");
    assert_eq!(std::fs::read_to_string(outdir.join("logs/run.log")).unwrap(), "ran to the end\n");
    let data = std::fs::read(outdir.join("data.bin")).unwrap();
    assert_eq!(data, (0..65536u32).map(|i| i as u8).collect::<Vec<_>>());
    let report: serde_json::Value = serde_json::from_str(&last_line(&out)).expect("a JSON report");
    assert_eq!(report["reason"], "exit");
    assert_eq!(report["status"], 0);
    assert_eq!(report["outputs"]["files"].as_array().unwrap().len(), 3);
    assert_eq!(report["outputs"]["bytes"], 3 + 15 + 65536);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn memory_hog_ends_out_of_memory() {
    common::require_kvm();
    let memhog = common::example("memhog");
    let out = up(&memhog.job(), &[]);
    assert_eq!(out.status.code(), Some(OUT_OF_MEMORY), "{}", text(&out.stderr));
    assert_eq!(last_line(&out), "mvm: job memhog ended: out of memory (guest RAM 24 MiB)");
}

/// The cpu example gets its quarter of a core: its CPU time (wait4), less
/// what the same job costs when it exits at once, over its wall time. A busy
/// host can only give it less, so the upper bound is tight (a 10%
/// over-grant fails it) and the lower one loose.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn cpu_example_runs_under_its_quota() {
    common::require_kvm();
    // A copy of the example: `mvm up` makes its out/ beside the job file.
    let work = tempfile::tempdir().unwrap();
    for file in ["job.toml", "cpu.wat"] {
        std::fs::copy(example("cpu").join(file), work.path().join(file)).unwrap();
    }
    let exits = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
    let toml = std::fs::read_to_string(work.path().join("job.toml")).unwrap().replace("cpu.wat", "exits.wat");
    let boot = job_dir(&toml, &[("exits.wat", exits)]);
    let (code, boot_cpu, _) = common::run_measuring_cpu(mvm().arg("up").arg(boot.path().join("job.toml")));
    assert_eq!(code, 0);
    let started = std::time::Instant::now();
    let (code, cpu, stdout) = common::run_measuring_cpu(mvm().arg("up").arg(work.path().join("job.toml")));
    let wall = started.elapsed();
    assert_eq!(code, 0);
    assert_eq!(stdout, "done\n");
    let share = cpu.saturating_sub(boot_cpu).as_secs_f64() / wall.as_secs_f64();
    assert!(
        (0.05..0.25 * 1.03).contains(&share),
        "used {cpu:?} of CPU in {wall:?} ({boot_cpu:?} to start): {share:.3} of a core at a quota of 0.25"
    );
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_sleeping_job_uses_no_cpu() {
    common::require_kvm();
    let sleeper = common::example("sleeper");
    let (code, cpu, stdout) = common::run_measuring_cpu(mvm().arg("up").arg(sleeper.job()));
    assert_eq!(code, 0);
    assert_eq!(stdout, "slept 2 s\n");
    // Below 5% of one core over the 2 s sleep, boot and module load included.
    assert!(cpu < Duration::from_millis(100), "used {cpu:?} of CPU");
}

const EXIT_7: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))"#;

const TRAPS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (unreachable)))"#;

const SPINS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))"#;

/// Writes "out" to stdout and "err" to stderr, then 16 random bytes (as raw
/// bytes) to stdout.
const STREAMS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "out\n")
  (data (i32.const 110) "err\n")
  (func $put (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $put (i32.const 1) (i32.const 100) (i32.const 4))
    (call $put (i32.const 2) (i32.const 110) (i32.const 4))
    (drop (call $random (i32.const 200) (i32.const 16)))
    (call $put (i32.const 1) (i32.const 200) (i32.const 16))))"#;

fn inline_job(module: &str, guest: &str) -> tempfile::TempDir {
    job_dir(
        &format!("name = \"t\"\n[guest]\nmemory_mib = 16\n{guest}\n[run]\nwasm = \"m.wat\"\n"),
        &[("m.wat", module)],
    )
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn every_way_a_job_ends() {
    common::require_kvm();
    let dir = inline_job(EXIT_7, "");
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!((out.status.code(), last_line(&out)), (Some(7), "mvm: job t ended: exit 7".to_string()));

    let dir = inline_job(TRAPS, "");
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!(out.status.code(), Some(TRAP), "{}", text(&out.stderr));
    assert!(last_line(&out).starts_with("mvm: job t ended: trap: "), "{}", text(&out.stderr));
    assert!(last_line(&out).contains("unreachable"), "{}", text(&out.stderr));

    let dir = inline_job(SPINS, "timeout_s = 1");
    let out = up(&dir.path().join("job.toml"), &["--json"]);
    assert_eq!(out.status.code(), Some(TIMEOUT), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(report["reason"], "timeout");
    assert_eq!(report["end"], "timeout after 1 s");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn stdout_and_stderr_stay_separate_and_randomness_comes_from_the_host() {
    common::require_kvm();
    let dir = inline_job(STREAMS, "");
    let first = up(&dir.path().join("job.toml"), &[]);
    let second = up(&dir.path().join("job.toml"), &[]);
    for out in [&first, &second] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(&out.stdout[..4], b"out\n");
        assert_eq!(out.stdout.len(), 4 + 16);
        assert!(text(&out.stderr).starts_with("err\n"), "{}", text(&out.stderr));
    }
    assert_ne!(first.stdout[4..], second.stdout[4..], "two jobs drew the same random bytes");
}

#[test]
fn bad_job_files_name_the_key_and_line() {
    let cases: [(&str, &str); 4] = [
        ("[guest]\nmemory_mib = 0\n[run]\nwasm = \"m.wat\"\n", "job.toml:2: guest.memory_mib: must be at least 2"),
        ("[guest]\nmemroy_mib = 16\n[run]\nwasm = \"m.wat\"\n", "job.toml:2: unknown key guest.memroy_mib"),
        ("[run]\nwasm = \"m.wat\"\n[files]\ninputs = [\"missing.txt\"]\n", "job.toml:4: files.inputs[0]: no such file"),
        ("[guest]\ncpu_quota = 512.0\n[run]\nwasm = \"m.wat\"\n", "job.toml:2: guest.cpu_quota"),
    ];
    for (toml, expected) in cases {
        let dir = job_dir(toml, &[("m.wat", EXIT_7)]);
        let out = up(&dir.path().join("job.toml"), &[]);
        assert_eq!(out.status.code(), Some(MVM_ERROR), "{toml}");
        assert!(text(&out.stderr).contains(expected), "{toml}: expected {expected:?} in {}", text(&out.stderr));
    }
    let dir = job_dir("[run]\nwasm = \"m.wat\"\n", &[("m.wat", "(module (func")]);
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!(out.status.code(), Some(MVM_ERROR));
    assert!(text(&out.stderr).contains("m.wat"), "{}", text(&out.stderr));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn an_interrupted_job_leaves_no_files_behind() {
    common::require_kvm();
    let tmp = tempfile::tempdir().unwrap();
    let sleeper = common::example("sleeper");
    let child = mvm()
        .arg("up")
        .arg(sleeper.job())
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job's images are staged, then interrupt it.
    let staged = || std::fs::read_dir(tmp.path()).unwrap().count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while staged() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(staged(), 1, "the job staged its images in TMPDIR");
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("staged files removed"), "{}", text(&out.stderr));
    assert_eq!(staged(), 0, "nothing left in TMPDIR");
}

/// A module that writes `len` bytes to /out/`name` (`data`, then zeros) and
/// then runs the WAT instructions `then`; it exits 1 if the write fails.
fn writes_one_output(name: &str, data: &str, len: u32, then: &str) -> String {
    let pages = (65536 + len).div_ceil(65536);
    let (name_len, data) = (name.len(), data.escape_default());
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") {pages})
  (data (i32.const 1024) "{name}")
  (data (i32.const 65536) "{data}")
  (func (export "_start")
    (if (call $open (i32.const 4) (i32.const 0) (i32.const 1024) (i32.const {name_len}) (i32.const 9)
          (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 200))
      (then (call $exit (i32.const 1))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const {len}))
    (if (call $write (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $exit (i32.const 1))))
    {then}))"#
    )
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn outputs_are_collected_after_a_trap() {
    common::require_kvm();
    let kept = "written before the trap\n";
    let dir = inline_job(&writes_one_output("kept.txt", kept, kept.len() as u32, "(unreachable)"), "");
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!(out.status.code(), Some(TRAP), "{}", text(&out.stderr));
    assert!(last_line(&out).starts_with("mvm: job t ended: trap: "), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("out/kept.txt")).unwrap(), kept);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn outputs_over_outputs_max_mib_are_refused_and_mvm_exits_125() {
    common::require_kvm();
    // 2 MiB against a 1 MiB cap; the job's disk has room for it (disk_mib),
    // so it is mvm's check on the host that refuses it.
    let module = writes_one_output("big.bin", "", 2 << 20, "");
    let dir = job_dir(
        "name = \"t\"\n[guest]\nmemory_mib = 32\n[run]\nwasm = \"m.wat\"\n[files]\noutputs_max_mib = 1\n",
        &[("m.wat", &module)],
    );
    let out = up(&dir.path().join("job.toml"), &["--json"]);
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&last_line(&out)).expect("a JSON report");
    assert_eq!((report["reason"].as_str(), report["status"].as_u64()), (Some("exit"), Some(125)), "{report}");
    assert_eq!(report["outputs"]["error"], "outputs exceed outputs_max_mib (1 MiB)", "{report}");
    assert!(!dir.path().join("out/big.bin").exists(), "nothing over the cap is written");

    // The same job under a 2 MiB cap brings its 2 MiB back: exactly the cap
    // is allowed.
    std::fs::write(
        dir.path().join("job.toml"),
        "name = \"t\"\n[guest]\nmemory_mib = 32\n[run]\nwasm = \"m.wat\"\n[files]\noutputs_max_mib = 2\n",
    )
    .unwrap();
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(dir.path().join("out/big.bin")).unwrap().len(), 2 << 20);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn outputs_that_cannot_be_written_make_a_successful_job_exit_125() {
    common::require_kvm();
    // A regular file where the outputs directory's parent should be: not
    // even root can make the directory.
    let module = writes_one_output("r.txt", "result", 6, "");
    let toml = "name = \"t\"\n[guest]\nmemory_mib = 16\n[run]\nwasm = \"m.wat\"\n[files]\noutputs = \"blocker/out\"\n";
    let dir = job_dir(toml, &[("m.wat", &module), ("blocker", "a file")]);
    let out = up(&dir.path().join("job.toml"), &[]);
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().rev().take(2).collect();
    assert_eq!(lines[1], "mvm: job t ended: exit 0", "{stderr}");
    let blocked = dir.path().canonicalize().unwrap().join("blocker/out");
    let expected = format!(
        "mvm: outputs not fully collected: {}: its path goes through a symbolic link or a non-directory",
        blocked.display()
    );
    assert!(lines[0].starts_with(&expected), "expected {expected:?} in {stderr}");
    // The JSON report's status is the one mvm exits with.
    let out = up(&dir.path().join("job.toml"), &["--json"]);
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(report["status"], MVM_ERROR, "{report}");
    let error = format!("{}: its path goes through", blocked.display());
    assert!(report["outputs"]["error"].as_str().is_some_and(|e| e.starts_with(&error)), "{report}");
}

/// The guest kernel with `ud2` over the first instruction of its job
/// runtime (`mvm_guest::job::run`): it boots, prints its banner, and takes an
/// invalid-opcode fault as soon as it starts the job.
fn guest_that_faults_in_its_job_runtime() -> Vec<u8> {
    let mut elf = std::fs::read(common::guest_elf()).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (shoff, shentsize, shnum) = (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| shoff + i * shentsize;
    let symtab = (0..shnum).map(section).find(|&sh| u32_at(sh + 4) == 2).expect("the guest ELF has a symbol table");
    let strtab = u64_at(section(u32_at(symtab + 40) as usize) + 24) as usize;
    let (symbols, size) = (u64_at(symtab + 24) as usize, u64_at(symtab + 32) as usize);
    let address = (symbols..symbols + size)
        .step_by(24)
        .find(|&sym| {
            let name = &elf[strtab + u32_at(sym) as usize..];
            name.starts_with(b"_ZN9mvm_guest3job3run17h")
        })
        .map(|sym| u64_at(sym + 8))
        .expect("the guest ELF has mvm_guest::job::run");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let offset = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == 1)
        .find_map(|ph| {
            let (file_offset, vaddr, filesz) = (u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32));
            (vaddr..vaddr + filesz).contains(&address).then(|| (file_offset + address - vaddr) as usize)
        })
        .expect("mvm_guest::job::run is in a loaded segment");
    elf[offset..offset + 2].copy_from_slice(&[0x0f, 0x0b]);
    elf
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_guest_kernel_crash_ends_the_job_123_with_the_guests_console() {
    common::require_kvm();
    let dir = job_dir(
        "name = \"t\"\n[guest]\nkernel = \"vmlinux\"\nmemory_mib = 16\n[run]\nwasm = \"m.wat\"\n",
        &[("m.wat", EXIT_7)],
    );
    std::fs::write(dir.path().join("vmlinux"), guest_that_faults_in_its_job_runtime()).unwrap();
    let out = up(&dir.path().join("job.toml"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(GUEST_CRASHED), "{stderr}");
    assert!(last_line(&out).starts_with("mvm: job t ended: guest crashed: #UD invalid opcode"), "{stderr}");
    let console = stderr.split_once("mvm: the guest's console:\n").map(|(_, c)| c).expect("the console is printed");
    let banner = console.lines().next().unwrap_or_default();
    assert!(banner.starts_with("mvm-guest ") && banner.ends_with(", job"), "the guest's banner: {stderr}");
    assert!(console.contains("guest fault: #UD invalid opcode"), "the guest's own report: {stderr}");
    assert!(!dir.path().join("out").exists(), "a crashed guest's output disk is not read");
}
