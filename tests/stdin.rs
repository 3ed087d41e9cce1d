//! A job's stdin end to end: `[run] stdin = FILE`, 1 GiB piped through
//! `mvm up` with its memory flat, empty and closed stdin, and jobs that do
//! not read (all of) their stdin while it stays open. (The API's stdin file
//! is tested in api.rs, with the daemon.)

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{mvm, text, Measured};

/// Reads fd 0 to its end through a 64 KiB buffer and prints
/// `<bytes> <s1> <s2>`: s1 the sum of the bytes, s2 the sum of s1 after each
/// byte (Fletcher's sums, mod 2^64), so order matters. Exits 9 if a read fails.
const COUNT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (global $pos (mut i32) (i32.const 64))
  (func $char (param $c i32)
    (i32.store8 (global.get $pos) (local.get $c))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func $digits (param $v i64)
    (local $start i32) (local $end i32) (local $t i32)
    (local.set $start (global.get $pos))
    (loop $next
      (call $char (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $next (i64.ne (local.get $v) (i64.const 0))))
    (local.set $end (i32.sub (global.get $pos) (i32.const 1)))
    (block $done (loop $swap
      (br_if $done (i32.ge_u (local.get $start) (local.get $end)))
      (local.set $t (i32.load8_u (local.get $start)))
      (i32.store8 (local.get $start) (i32.load8_u (local.get $end)))
      (i32.store8 (local.get $end) (local.get $t))
      (local.set $start (i32.add (local.get $start) (i32.const 1)))
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (br $swap))))
  (func (export "_start")
    (local $n i32) (local $i i32) (local $end i32) (local $count i64) (local $s1 i64) (local $s2 i64)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $eof (loop $more
      (if (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)) (then (call $exit (i32.const 9))))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $eof (i32.eqz (local.get $n)))
      (local.set $count (i64.add (local.get $count) (i64.extend_i32_u (local.get $n))))
      (local.set $i (i32.const 65536))
      (local.set $end (i32.add (i32.const 65536) (local.get $n)))
      (loop $byte
        (local.set $s1 (i64.add (local.get $s1) (i64.load8_u (local.get $i))))
        (local.set $s2 (i64.add (local.get $s2) (local.get $s1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $byte (i32.lt_u (local.get $i) (local.get $end))))
      (br $more)))
    (call $digits (local.get $count)) (call $char (i32.const 32))
    (call $digits (local.get $s1)) (call $char (i32.const 32))
    (call $digits (local.get $s2)) (call $char (i32.const 10))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.sub (global.get $pos) (i32.const 64)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Reads stdin once (up to 16 bytes), echoes what it got, and exits 3.
const READS_ONCE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 3))))"#;

/// Never touches stdin.
const IGNORES: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

const GUEST_MIB: u64 = 32;

/// Fletcher's sums over a stream, as COUNT computes them.
#[derive(Default, Debug, PartialEq)]
struct Sums {
    count: u64,
    s1: u64,
    s2: u64,
}

impl Sums {
    fn add(&mut self, data: &[u8]) {
        for &b in data {
            self.s1 = self.s1.wrapping_add(u64::from(b));
            self.s2 = self.s2.wrapping_add(self.s1);
        }
        self.count += data.len() as u64;
    }

    fn line(&self) -> String {
        format!("{} {} {}\n", self.count, self.s1, self.s2)
    }
}

/// A job folder running `module` in a small guest; `run` is added to [run].
fn job(module: &str, run: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        format!("name = \"stdin\"\n[guest]\nmemory_mib = {GUEST_MIB}\ntimeout_s = 100\n[run]\nwasm = \"m.wat\"\n{run}");
    std::fs::write(dir.path().join("job.toml"), toml).unwrap();
    std::fs::write(dir.path().join("m.wat"), module).unwrap();
    dir
}

/// Pseudo-random bytes; `block` varies them from one call to the next.
fn pattern(block: u64, out: &mut [u8]) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d);
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Runs `mvm up job` with `feed` writing its stdin (a pipe) on a thread of
/// its own; the pipe closes when `feed` returns. Fails the test after
/// `limit`.
fn up_feeding(job: &Path, limit: Duration, feed: impl FnOnce(&mut dyn Write) + Send + 'static) -> Measured {
    common::measure_feeding(mvm().arg("up").arg(job), limit, Some(Box::new(feed)))
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn run_stdin_names_a_file_the_job_reads_to_its_end() {
    common::require_kvm();
    let dir = job(COUNT, "stdin = \"data/input.bin\"\n");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let mut data = vec![0u8; 3 << 20];
    pattern(1, &mut data);
    // Not a multiple of the buffers: the last read is short.
    data.truncate(data.len() - 12345);
    std::fs::write(dir.path().join("data/input.bin"), &data).unwrap();
    let mut sums = Sums::default();
    sums.add(&data);
    // mvm's own stdin is a pipe that stays open (until mvm has ended): the
    // file is read instead.
    let mut command = mvm();
    command.arg("up").arg(dir.path().join("job.toml")).stdin(Stdio::piped());
    let out = common::measure_feeding(&mut command, common::RUN_LIMIT, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), sums.line());
}

#[test]
fn a_missing_stdin_file_is_refused_naming_the_key_and_line() {
    let dir = job(COUNT, "stdin = \"missing.bin\"\n");
    let out = common::run(mvm().arg("up").arg(dir.path().join("job.toml")));
    assert_eq!(out.status.code(), Some(125));
    let expected = format!("job.toml:7: run.stdin: no such file: {}", dir.path().join("missing.bin").display());
    assert!(text(&out.stderr).contains(&expected), "{}", text(&out.stderr));
    std::fs::create_dir(dir.path().join("missing.bin")).unwrap();
    let out = common::run(mvm().arg("up").arg(dir.path().join("job.toml")));
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("job.toml:7: run.stdin: not a regular file"), "{}", text(&out.stderr));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_gibibyte_streams_through_mvm_up_with_its_memory_flat() {
    common::require_kvm();
    const BLOCK: usize = 1 << 20;
    const BLOCKS: u64 = 1024;
    let dir = job(COUNT, "");
    let (sums_tx, sums_rx) = std::sync::mpsc::channel();
    let ran = up_feeding(&dir.path().join("job.toml"), common::RUN_LIMIT, move |stdin| {
        let mut sums = Sums::default();
        let mut block = vec![0u8; BLOCK];
        for n in 0..BLOCKS {
            pattern(n, &mut block);
            sums.add(&block);
            stdin.write_all(&block).expect("mvm took its stdin to the end");
        }
        sums_tx.send(sums).unwrap();
    });
    let sums = sums_rx.recv().unwrap();
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
    assert_eq!(sums.count, BLOCKS * BLOCK as u64);
    assert_eq!(text(&ran.stdout), sums.line());
    let rss_mib = ran.max_rss_kib / 1024;
    eprintln!(
        "1 GiB through stdin: {:.2} s, mvm's peak RSS {rss_mib} MiB (guest RAM {GUEST_MIB} MiB)",
        ran.wall.as_secs_f64()
    );
    // mvm's own few tens of MiB (the compiler included) and the guest's RAM:
    // nothing that grows with the stream.
    assert!(rss_mib < GUEST_MIB + 160, "peak RSS {rss_mib} MiB for a 1 GiB stream");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn empty_and_closed_stdin_end_at_once() {
    common::require_kvm();
    let dir = job(COUNT, "");
    let out = common::run(mvm().arg("up").arg(dir.path().join("job.toml")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0 0 0\n", "stdin from /dev/null");

    let mut command = mvm();
    command.arg("up").arg(dir.path().join("job.toml"));
    // SAFETY: close is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let out = common::measure_feeding(&mut command, common::RUN_LIMIT, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0 0 0\n", "closed stdin");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn jobs_that_stop_reading_do_not_wait_for_a_stdin_that_stays_open() {
    common::require_kvm();
    // The pipe stays open, unwritten, until mvm has ended: mvm must end on its own.
    let dir = job(IGNORES, "");
    let mut command = mvm();
    command.arg("up").arg(dir.path().join("job.toml")).stdin(Stdio::piped());
    let ran = common::measure_feeding(&mut command, Duration::from_secs(60), None);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
    assert!(ran.wall < Duration::from_secs(30), "{:?}", ran.wall);

    // Reads a little of an endless stream, then exits: the writer gets EPIPE.
    let dir = job(READS_ONCE, "");
    let ran = up_feeding(&dir.path().join("job.toml"), Duration::from_secs(60), |stdin| {
        let chunk = [b'x'; 4096];
        while stdin.write_all(&chunk).is_ok() {}
    });
    assert_eq!(ran.status.code(), Some(3), "{}", text(&ran.stderr));
    assert_eq!(text(&ran.stdout), "x".repeat(16));
}

/// Writes 100 lines and at once a prompt without a newline (the guest
/// hands output over on its own only a millisecond after the last time,
/// and these writes come quicker than that), then echoes one read of stdin.
const PROMPTS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "hi\nname? ")
  (func (export "_start")
    (local $n i32)
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 3))
    (loop $lines
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $lines (i32.lt_u (local.get $n) (i32.const 100))))
    (i32.store (i32.const 0) (i32.const 35))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_prompt_is_out_before_the_job_waits_for_its_answer() {
    common::require_kvm();
    let dir = job(PROMPTS, "");
    let mut child = mvm()
        .arg("up")
        .arg(dir.path().join("job.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            bytes.extend_from_slice(&buf[..n]);
            let _ = got_tx.send(bytes.clone());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let prompt = format!("{}name? ", "hi\n".repeat(100));
    while text(&seen) != prompt {
        let left = deadline.saturating_duration_since(Instant::now());
        match got_rx.recv_timeout(left) {
            Ok(bytes) => seen = bytes,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no prompt while the job waits for stdin; got {:?}", text(&seen));
            }
        }
    }
    child.stdin.take().unwrap().write_all(b"Ada\n").unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    while let Ok(bytes) = got_rx.recv_timeout(Duration::from_secs(10)) {
        seen = bytes;
    }
    assert_eq!(text(&seen), format!("{prompt}Ada\n"));
}
