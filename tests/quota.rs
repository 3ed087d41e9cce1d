//! CPU quota end to end (`mvm boot --cpu-quota`): a CPU-bound guest gets its
//! share of a core and no more, a throttled VM still stops at its timeout, a
//! throttled sleeping guest still wakes on time, and quotas that make no
//! sense are refused. The share is measured in CPU time (wait4), with what
//! booting costs taken off. A busy host can only give a throttled guest less
//! than its quota, never more, so the upper bounds are tight (a 10%
//! over-grant fails them) and the lower bounds loose (scripts/bench-quota
//! measures the share properly).

mod common;

use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{boot, mvm, text};

const MVM_ERROR: i32 = 125;
const TIMEOUT: i32 = 124;

/// The tests that measure CPU time or wake-ups, or that keep a CPU busy,
/// run one at a time, so that they do not compete for the host's CPUs (two
/// on the project's machines).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Measured {
    code: i32,
    /// User + system time of the mvm process, every thread included.
    cpu: Duration,
    wall: Duration,
    /// stdout then stderr: the guest's reports, then mvm's.
    output: String,
}

/// How long any mvm run of these tests may take before it is killed.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs mvm and measures its CPU time. Kills it, failing the test, after
/// [`LIMIT`].
fn measure(args: &[&str]) -> Measured {
    let done = common::measure_within(mvm().args(args), LIMIT);
    Measured { code: done.code(), cpu: done.cpu, wall: done.wall, output: text(&done.stdout) + &text(&done.stderr) }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Fails unless the guest ran its CPU loop to the end and said so:
/// `cpu iterations=N ns=T ...`.
fn assert_looped(run: &Measured) {
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(run.output.lines().any(|l| l.starts_with("cpu iterations=")), "no cpu line: {}", run.output);
}

const LOOP: &str = "mvm.test=cpu:400000000";

/// The CPU share of `run` beyond what `boot` (the same VM ending at once)
/// cost: its CPU time beyond boot's over its whole wall time, which, if
/// anything, underestimates the share.
fn share(run: &Measured, boot: &Measured) -> f64 {
    run.cpu.saturating_sub(boot.cpu).as_secs_f64() / run.wall.as_secs_f64()
}

/// A quarter of a core: mvm uses a quarter of its wall time in CPU time,
/// no more (a 10% over-grant fails), and not much less on an idle host (the
/// low bound only catches a gate that stays closed: a busy host gives less).
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_quarter_core_quota_gives_a_busy_guest_a_quarter_core() {
    common::require_kvm();
    let _serial = one_at_a_time();
    let boot = measure(&["boot", "--cpu-quota", "0.25", "--cmdline", "mvm.exit=0"]);
    assert_eq!(boot.code, 0, "{}", boot.output);
    let run = measure(&["boot", "--cpu-quota", "0.25", "--cmdline", LOOP]);
    assert_looped(&run);
    let share = share(&run, &boot);
    assert!(
        (0.05..0.25 * 1.03).contains(&share),
        "mvm used {:?} of CPU in {:?} ({:?} to boot): {share:.3} of a core at a quota of 0.25",
        run.cpu,
        run.wall,
        boot.cpu
    );
}

/// The vCPU is parked most of the time at a quota of 0.1; the timeout still
/// stops the VM on time.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_throttled_vm_still_stops_at_its_timeout() {
    common::require_kvm();
    let _serial = one_at_a_time();
    let run = measure(&["boot", "--cpu-quota", "0.1", "--timeout-s", "1", "--cmdline", "mvm.test=spin"]);
    assert_eq!(run.code, TIMEOUT, "{}", run.output);
    assert!(run.output.contains("mvm: timeout after 1 s"), "{}", run.output);
    assert!(run.wall < Duration::from_secs(3), "a 1 s timeout took {:?}", run.wall);
    // About 0.1 s of spinning, plus boot.
    assert!(run.cpu < Duration::from_millis(400), "a spinning guest at a quota of 0.1 used {:?}", run.cpu);
}

/// Spins, then sleeps 10 ms, five times over, and prints the latest
/// wake-up: `late_us=N`. Each spin is CPU enough for a few periods' budget
/// at a quarter of a core, so each sleep starts with the budget spent, and
/// the VM can be in debt when its deadline comes. Waking early traps.
const SPIN_THEN_SLEEP: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "late_us=")
  (global $sink (mut i64) (i64.const 0))
  (func $now (result i64)
    (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 200)))
    (i64.load (i32.const 200)))
  (func $spin (param $n i32) (local $x i64)
    (local.set $x (i64.const 0x9e3779b97f4a7c15))
    (loop $round
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $round (local.get $n)))
    (global.set $sink (i64.xor (global.get $sink) (local.get $x))))
  ;; poll_oneoff on one subscription: the monotonic clock, relative.
  (func $sleep (param $ns i64)
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (local.get $ns))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 192))))
  ;; "late_us=" then the decimal digits of $v, written backwards from 1000.
  (func $print (param $v i64) (local $p i32)
    (local.set $p (i32.const 1000))
    (i32.store8 (i32.const 1000) (i32.const 10))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (i32.store (i32.const 300) (i32.const 16))
    (i32.store (i32.const 304) (i32.const 8))
    (i32.store (i32.const 308) (local.get $p))
    (i32.store (i32.const 312) (i32.sub (i32.const 1001) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 2) (i32.const 320))))
  (func (export "_start") (local $round i32) (local $before i64) (local $late i64) (local $worst i64)
    (loop $again
      (call $spin (i32.const 5000000))
      (local.set $before (call $now))
      (call $sleep (i64.const 10000000))
      (local.set $late (i64.sub (i64.sub (call $now) (local.get $before)) (i64.const 10000000)))
      (if (i64.lt_s (local.get $late) (i64.const 0)) (then unreachable))
      (if (i64.gt_s (local.get $late) (local.get $worst)) (then (local.set $worst (local.get $late))))
      (local.set $round (i32.add (local.get $round) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $round) (i32.const 5))))
    (call $print (i64.div_u (local.get $worst) (i64.const 1000)))))"#;

const EXIT_AT_ONCE: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// A job folder in a temporary directory: `module` as job.wat, run at a
/// quarter of a core.
fn quarter_core_job(module: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "name = \"quota\"\n[guest]\nmemory_mib = 16\ncpu_quota = 0.25\ntimeout_s = 10\n[run]\nwasm = \"job.wat\"\n";
    std::fs::write(dir.path().join("job.toml"), toml).unwrap();
    std::fs::write(dir.path().join("job.wat"), module).unwrap();
    dir
}

fn up(job: &tempfile::TempDir) -> Measured {
    measure(&["up", job.path().join("job.toml").to_str().unwrap()])
}

/// A throttled guest that goes to sleep with its budget spent still wakes
/// on time: when its deadline comes in a period it may not run in, it runs
/// as soon as the next one starts, not later; it never wakes early. And it
/// was throttled: it used no more than its quota.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_throttled_sleeping_guest_wakes_on_time() {
    common::require_kvm();
    let _serial = one_at_a_time();
    let (boot_job, run_job) = (quarter_core_job(EXIT_AT_ONCE), quarter_core_job(SPIN_THEN_SLEEP));
    // Compiling runs on the host, outside the quota: once, so that the
    // measured runs take the code from the cache and charge only the VM.
    up(&run_job);
    let boot = up(&boot_job);
    assert_eq!(boot.code, 0, "{}", boot.output);
    let run = up(&run_job);
    assert_eq!(run.code, 0, "{}", run.output);
    let late = run.output.lines().find(|l| l.starts_with("late_us=")).expect("a late_us line");
    let late = Duration::from_micros(field(late, "late_us"));
    // Two periods: the rest of one the budget is spent in, and one more
    // that an overrun can leave closed; then a margin for a busy host.
    assert!(late < Duration::from_millis(50), "woke {late:?} late at a quota of 0.25");
    let share = share(&run, &boot);
    assert!(share < 0.25 * 1.05, "used {:?} of CPU in {:?}: {share:.3} of a core", run.cpu, run.wall);
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Refused before KVM is opened, so no KVM is needed.
#[test]
fn quotas_that_make_no_sense_are_refused() {
    let too_many = (host_cpus() + 1).to_string();
    for quota in ["0", "-1", "-0.5", "nan", "inf", too_many.as_str()] {
        let (code, stdout, stderr) = boot(&["--cpu-quota", quota]);
        assert_eq!(code, MVM_ERROR, "--cpu-quota {quota}: {stdout}{stderr}");
        assert!(stderr.contains("mvm: error: cannot boot the VM: --cpu-quota "), "--cpu-quota {quota}: {stderr}");
    }
    let (_, _, stderr) = boot(&["--cpu-quota", &too_many]);
    assert!(stderr.contains(&format!("more than this host's {} CPUs", host_cpus())), "{stderr}");
}

/// The names of the threads of a running `mvm boot` with `quota`, spinning
/// in the guest, once the VM has started: the controller, if any, has been
/// spawned by then, and every thread but the main one names itself when it
/// first runs.
fn threads_with_quota(quota: &str) -> Vec<String> {
    let mut child = mvm()
        .args(["-v", "boot", "--cpu-quota", quota, "--timeout-s", "30", "--cmdline", "mvm.test=spin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            if line.contains("VM started in") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(20));
    let pid = child.id();
    let threads = || -> Vec<(u32, String)> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("mvm ended while its guest should spin")
            .map(|task| {
                let path = task.unwrap().path();
                let tid = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
                (tid, std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string())
            })
            .collect()
    };
    let named = started.is_ok().then(|| {
        let waited = Instant::now();
        loop {
            let threads = threads();
            if threads.iter().all(|(tid, name)| *tid == pid || name != "mvm") {
                break Ok(threads);
            }
            if waited.elapsed() > Duration::from_secs(10) {
                break Err(threads);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    started.unwrap_or_else(|_| panic!("mvm boot --cpu-quota {quota} did not start its VM within 20 s"));
    let named = named.unwrap().unwrap_or_else(|threads| panic!("threads still unnamed after 10 s: {threads:?}"));
    named.into_iter().map(|(_, name)| name).collect()
}

/// All of the host's CPUs is the largest quota; it leaves a guest alone:
/// no thread throttles it, where a quota that binds has one.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn the_host_cpu_count_is_the_largest_quota() {
    common::require_kvm();
    // Its spinning guests would take CPU from the tests that measure it.
    let _serial = one_at_a_time();
    let (code, stdout, stderr) = boot(&["--cpu-quota", &host_cpus().to_string(), "--cmdline", "mvm.exit=7"]);
    assert_eq!(code, 7, "{stdout}{stderr}");
    let threads = threads_with_quota(&host_cpus().to_string());
    assert!(threads.iter().any(|t| t == "vcpu0"), "{threads:?}");
    assert!(!threads.iter().any(|t| t == "vcpu-quota"), "a quota of all the host's CPUs throttles: {threads:?}");
    let threads = threads_with_quota("0.5");
    assert!(threads.iter().any(|t| t == "vcpu-quota"), "a quota of half a core does not throttle: {threads:?}");
}
