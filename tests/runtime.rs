//! The guest runtime end to end: every CPU exception is reported by name with
//! its RIP, the clocks agree with the host's, a sleeping guest costs the host
//! no CPU and wakes on time, and running out of memory is reported as such.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{boot, mvm};

const OUT_OF_MEMORY: i32 = 122;
const CRASHED: i32 = 123;

/// `mvm.test=fault:<kind>` → (vector name and number as mvm reports them).
const FAULTS: [(&str, &str); 9] = [
    ("ud", "#UD invalid opcode (vector 6"),
    ("bp", "#BP breakpoint (vector 3"),
    ("de", "#DE divide error (vector 0"),
    ("gp", "#GP general protection fault (vector 13"),
    ("pf", "#PF page fault (vector 14, error code 0x2, cr2 0x7f0000000000"),
    ("stack-overflow", "#DF double fault (vector 8, error code 0x0, cr2 0x"),
    ("df", "#DF double fault (vector 8, error code 0x0)"),
    // The page at 0 is not mapped: a null pointer faults.
    ("null", "#PF page fault (vector 14, error code 0x0, cr2 0x8)"),
    // A present page mapped read-only (as wasmtime's code is): the write faults.
    ("write-read-only", "#PF page fault (vector 14, error code 0x3, cr2 0x"),
];

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn every_exception_is_reported_by_name_with_its_rip() {
    common::require_kvm();
    for (kind, report) in FAULTS {
        let (code, stdout, stderr) = boot(&["--cmdline", &format!("mvm.test=fault:{kind}")]);
        assert_eq!(code, CRASHED, "{kind}: {stdout}{stderr}");
        let line = stderr.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("mvm: guest crashed: {report}")), "{kind}: {stderr}");
        let rip = line.rsplit("at rip=0x").next().unwrap();
        let rip = u64::from_str_radix(rip, 16).unwrap_or_else(|_| panic!("{kind}: no rip in {line}"));
        assert!((0x20_0000..0x40_0000).contains(&rip), "{kind}: rip {rip:#x} is not in the guest kernel");
        // The guest's own report on the console, with the same RIP first in the backtrace.
        assert!(stdout.contains("guest fault: "), "{kind}: {stdout}");
        assert!(stdout.contains(&format!("backtrace: {rip:#x}")), "{kind}: {stdout}");
    }
}

/// The guest's virtual memory above RAM (wasmtime's memories): 2 MiB blocks
/// and 4 KiB pages keep their contents through changes of access, a block
/// changed in part is split, and released memory comes back zeroed.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_virtual_memory_keeps_contents_through_changes_of_access() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--memory-mib", "32", "--cmdline", "mvm.test=vmem mvm.exit=0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("vmem: ok"), "{stdout}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn code_on_a_page_without_execute_permission_does_not_run() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=fault:exec-no-execute"]);
    assert_eq!(code, CRASHED, "{stdout}{stderr}");
    // Error code 0x11: a present page, an instruction fetch; the fetch
    // itself is what faults, at the page's own address.
    let line = stderr.lines().next().unwrap_or_default();
    let page = line.split("cr2 ").nth(1).and_then(|rest| rest.split(')').next()).unwrap_or_default();
    assert!(line.starts_with("mvm: guest crashed: #PF page fault (vector 14, error code 0x11, cr2 0x"), "{stderr}");
    assert!(line.ends_with(&format!("at rip={page}")), "{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn stack_overflow_is_named_as_such() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=fault:stack-overflow"]);
    assert_eq!(code, CRASHED);
    assert!(stderr.contains(", stack overflow) at rip="), "{stderr}");
    assert!(stdout.contains("#DF double fault (stack overflow)"), "{stdout}");
    // The backtrace walks the recursion's frames.
    let backtrace = stdout.lines().find(|l| l.starts_with("backtrace:")).unwrap();
    assert!(backtrace.split(' ').count() > 10, "{backtrace}");
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Over a 5 s sleep, the guest's monotonic clock runs at the host's rate to
/// 0.1%, and its wall clock reads the host's time. The guest reads the
/// host's clock (through its clock port) beside its own, so how late its
/// lines reach the test (a busy host delays them by milliseconds) does not
/// enter the comparison.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_clocks_agree_with_the_host() {
    common::require_kvm();
    let mut child = mvm()
        .args(["boot", "--cmdline", "mvm.test=sleep:5000", "--timeout-s", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut samples = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("clock ") {
            samples.push((now_ns(), field(&line, "host_ns"), field(&line, "wall_ns"), field(&line, "mono_ns")));
        }
    }
    assert!(child.wait().unwrap().success());
    let [(arrived0, host0, wall0, mono0), (arrived1, host1, wall1, mono1)] = samples[..] else {
        panic!("two clock lines: {samples:?}")
    };
    for (arrived, host, wall) in [(arrived0, host0, wall0), (arrived1, host1, wall1)] {
        // The host time the guest read is the host's, a little before its line arrived.
        let behind_ms = (arrived as f64 - host as f64) / 1e6;
        assert!((-5.0..50.0).contains(&behind_ms), "the guest's host time is {behind_ms} ms behind the host's");
        let wall_error_ms = (wall as f64 - host as f64) / 1e6;
        assert!(wall_error_ms.abs() < 1.0, "guest wall clock is off the host's by {wall_error_ms} ms");
    }
    let host_elapsed = (host1 - host0) as f64;
    assert!(host_elapsed >= 5e9, "the sleep took {host_elapsed} ns of host time");
    for (what, guest_elapsed) in [("monotonic", mono1 - mono0), ("wall", wall1 - wall0)] {
        let error = (guest_elapsed as f64 - host_elapsed).abs() / host_elapsed;
        assert!(error < 0.001, "{what} clock off by {:.4}% over {:.1} s", error * 100.0, host_elapsed / 1e9);
    }
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_sleeping_guest_uses_no_host_cpu() {
    common::require_kvm();
    let started = Instant::now();
    let (code, cpu, stdout) = common::run_measuring_cpu(mvm().args(["boot", "--cmdline", "mvm.test=sleep:2000"]));
    assert_eq!(code, 0, "{stdout}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Below 5% of one core over the 2 s sleep, boot and teardown included.
    assert!(cpu < Duration::from_millis(100), "mvm used {cpu:?} of CPU over a 2 s sleep");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_deadline_wakes_the_guest_on_time() {
    common::require_kvm();
    // Not early: the guest halts again when woken before its deadline, so
    // an early wake-up shows as more halts (a second one may be needed
    // when its clock and the host's differ by microseconds). On time:
    // within 1 ms in the best of five runs (a busy host delays some;
    // scripts/bench-idle measures the error properly), and never grossly late.
    let mut lateness = Vec::new();
    for _ in 0..5 {
        let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=sleep:100", "--timeout-s", "30"]);
        assert_eq!(code, 0, "{stderr}");
        let slept = stdout.lines().find(|l| l.starts_with("slept ")).expect("a slept line");
        let (asked, actual) = (field(slept, "requested_ns"), field(slept, "actual_ns"));
        let halts = field(stdout.lines().find(|l| l.starts_with("sleep halts=")).expect("a halts line"), "halts");
        assert!((1..=2).contains(&halts), "a 100 ms sleep took {halts} halts: woken early");
        lateness.push(Duration::from_nanos(actual.checked_sub(asked).expect("the guest slept less than it asked")));
    }
    lateness.sort();
    assert!(lateness[0] < Duration::from_millis(1), "woke late by {lateness:?}");
    assert!(lateness[4] < Duration::from_millis(50), "woke late by {lateness:?}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn running_out_of_guest_memory_is_reported() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--memory-mib", "16", "--cmdline", "mvm.test=oom"]);
    assert_eq!(code, OUT_OF_MEMORY, "{stdout}{stderr}");
    assert!(stderr.contains("mvm: guest out of memory (guest RAM 16 MiB)"), "{stderr}");
    let report = stdout.lines().find(|l| l.starts_with("guest out of memory: cannot allocate")).expect("report");
    // The heap got most of the RAM before it ran out.
    let in_use_kib: u64 = report.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(in_use_kib > 10 * 1024, "{report}");
}
