//! CPU quota end to end (`mvm boot --cpu-quota`): a CPU-bound guest gets its
//! share of a core and no more, a throttled VM still stops at its timeout, a
//! throttled sleeping guest still wakes on time, and quotas that make no
//! sense are refused. Timing bounds are wide on purpose: test machines are
//! noisy (scripts/bench-quota measures the share properly).

mod common;

use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{boot, mvm};

const MVM_ERROR: i32 = 125;
const TIMEOUT: i32 = 124;

/// The tests that measure CPU time run one at a time, so that they do not
/// compete for the host's CPUs (two on the project's machines).
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

/// Runs mvm and measures its CPU time with wait4 (which reaps it:
/// `Child::wait` is not called).
#[allow(clippy::zombie_processes)]
fn measure(args: &[&str]) -> Measured {
    let started = Instant::now();
    let mut child = mvm().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            pipe.read_to_string(&mut out).unwrap();
            out
        })
    };
    let stdout_reader = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr_reader = read_all(Box::new(child.stderr.take().unwrap()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (Child::wait was not called).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid);
    let wall = started.elapsed();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let output = stdout_reader.join().unwrap() + &stderr_reader.join().unwrap();
    Measured { code: libc::WEXITSTATUS(status), cpu: tv(usage.ru_utime) + tv(usage.ru_stime), wall, output }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// The guest's own time for its CPU loop, from `cpu iterations=N ns=T ...`.
fn loop_time(run: &Measured) -> Duration {
    assert_eq!(run.code, 0, "{}", run.output);
    let line = run.output.lines().find(|l| l.starts_with("cpu iterations=")).expect("a cpu line");
    Duration::from_nanos(field(line, "ns"))
}

const LOOP: &str = "mvm.test=cpu:400000000";

/// A quarter of a core: the loop takes about 4 times as long as unthrottled,
/// and mvm uses about a quarter of its wall time in CPU time.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_quarter_core_quota_gives_a_busy_guest_a_quarter_core() {
    common::require_kvm();
    let _serial = one_at_a_time();
    // The faster of two: other work on the host slows an unthrottled guest
    // more than a throttled one, which needs only a quarter of a core.
    let free = (0..2).map(|_| loop_time(&measure(&["boot", "--cmdline", LOOP]))).min().unwrap();
    let throttled = measure(&["boot", "--cpu-quota", "0.25", "--cmdline", LOOP]);
    let slowdown = loop_time(&throttled).as_secs_f64() / free.as_secs_f64();
    assert!((2.2..6.5).contains(&slowdown), "the loop took {slowdown:.2} times as long at a quota of 0.25");
    let share = throttled.cpu.as_secs_f64() / throttled.wall.as_secs_f64();
    assert!(
        (0.15..0.40).contains(&share),
        "mvm used {:?} of CPU in {:?}: {share:.3} of a core at a quota of 0.25",
        throttled.cpu,
        throttled.wall
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

/// A sleeping guest uses almost no CPU, so its quota never parks it: it
/// wakes on time and costs nothing meanwhile.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_throttled_sleeping_guest_wakes_on_time() {
    common::require_kvm();
    let _serial = one_at_a_time();
    let run = measure(&["boot", "--cpu-quota", "0.25", "--cmdline", "mvm.test=sleep:1000"]);
    assert_eq!(run.code, 0, "{}", run.output);
    let slept = run.output.lines().find(|l| l.starts_with("slept ")).expect("a slept line");
    let (asked, actual) = (field(slept, "requested_ns"), field(slept, "actual_ns"));
    assert!(actual >= asked, "woke {} µs early", (asked - actual) / 1000);
    let late = Duration::from_nanos(actual - asked);
    assert!(late < Duration::from_millis(50), "woke {late:?} late at a quota of 0.25");
    assert!(run.cpu < Duration::from_millis(100), "mvm used {:?} of CPU over a 1 s sleep", run.cpu);
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

/// All of the host's CPUs is the largest quota; it leaves a guest alone.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn the_host_cpu_count_is_the_largest_quota() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cpu-quota", &host_cpus().to_string(), "--cmdline", "mvm.exit=7"]);
    assert_eq!(code, 7, "{stdout}{stderr}");
}
