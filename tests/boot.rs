//! `mvm boot` end to end: the builtin guest boots under /dev/kvm, prints its
//! banner and exits with the status it was given; every way a boot can go
//! wrong ends with a clear message and a non-zero status, never a hang.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{boot, expected_mode, guest_elf, mvm, run, text};

const MVM_ERROR: i32 = 125;
const TIMEOUT: i32 = 124;
const CRASHED: i32 = 123;

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn builtin_guest_prints_banner_and_exits_zero() {
    common::require_kvm();
    let mode = expected_mode();
    let (code, stdout, stderr) = boot(&["--cmdline", "hello world"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    // The VMM's own words come first: the PVM switch token (on PVM only) and
    // the TSC frequency.
    let pvm_token = if mode == "pvm" { "mvm.pvm=1 " } else { "" };
    let start = format!("mvm-guest 0.1.0: mode={mode} 64 MiB RAM, cmdline \"{pvm_token}mvm.tsc_khz=");
    assert!(stdout.starts_with(&start), "{stdout}");
    assert!(stdout.ends_with(" hello world\"\n"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_exit_status_passes_through() {
    common::require_kvm();
    for status in ["1", "42", "255"] {
        let (code, stdout, _) = boot(&["--cmdline", &format!("mvm.exit={status}")]);
        assert_eq!(code.to_string(), status, "stdout: {stdout}");
    }
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn banner_reports_the_memory_size() {
    common::require_kvm();
    for mib in ["4", "37", "3500"] {
        let (code, stdout, stderr) = boot(&["--memory-mib", mib]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(&format!(" {mib} MiB RAM,")), "{mib}: {stdout}");
    }
}

/// A running mvm, killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mvm boot ARGS` and polls `seen` on its process id until it
/// returns Some, for at most 20 s; returns what it found.
fn watch_boot<T>(args: &[&str], mut seen: impl FnMut(u32) -> Option<T>) -> T {
    let child = mvm().arg("boot").args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut running = Running(child);
    let started = Instant::now();
    loop {
        if let Some(found) = seen(running.0.id()) {
            return found;
        }
        if let Some(status) = running.0.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(running.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("mvm boot {args:?} ended ({status}) before the test saw what it waited for: {stderr}");
        }
        let pid = running.0.id();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "mvm boot {args:?}: not seen within 20 s; its vCPU threads and their syscalls: {:?}",
            vcpu_threads(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of process `pid`'s threads that are vCPU threads ("vcpuN"),
/// with their /proc syscall lines, sorted by name.
fn vcpu_threads(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut threads: Vec<(String, String)> = tasks
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?.trim().to_string();
            let syscall = std::fs::read_to_string(task.path().join("syscall")).ok()?;
            name.starts_with("vcpu").then_some((name, syscall))
        })
        .collect();
    threads.sort();
    threads
}

/// Whether a /proc syscall line is a thread blocked in the KVM_RUN ioctl:
/// "16 <fd> 0xae80 ...".
fn in_kvm_run(syscall: &str) -> bool {
    let words: Vec<&str> = syscall.split_whitespace().collect();
    words.len() > 2 && words[0] == "16" && words[2] == "0xae80"
}

/// The indices of the KVM vCPUs process `pid` holds (its
/// anon_inode:kvm-vcpu:N descriptors), sorted.
fn kvm_vcpus(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut vcpus: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| target.to_str()?.strip_prefix("anon_inode:kvm-vcpu:")?.parse().ok())
        .collect();
    vcpus.sort();
    vcpus
}

/// `--vcpus N` creates N vCPUs in KVM. The builtin guest has no interrupt
/// controller to start the others, so only vCPU 0 gets a thread.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn several_vcpus_are_created() {
    common::require_kvm();
    let args = ["--vcpus", "4", "--cmdline", "mvm.test=sleep:20000", "--timeout-s", "60"];
    // Once vCPU 0 has a thread, every vCPU exists.
    let (vcpus, threads) = watch_boot(&args, |pid| {
        let threads = vcpu_threads(pid);
        (!threads.is_empty()).then(|| (kvm_vcpus(pid), threads))
    });
    assert_eq!(vcpus, [0, 1, 2, 3]);
    let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["vcpu0"]);
}

/// With the in-kernel irqchip (a kernel from a file), each of N vCPUs runs
/// on its own thread, in KVM_RUN: the boot vCPU halted in the irqchip
/// (where the builtin guest's halt would end the VM), the others waiting
/// for their start-up IPI.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn several_vcpus_run_with_the_irqchip() {
    common::require_kvm();
    let elf = guest_elf();
    let args = ["--kernel", elf.to_str().unwrap(), "--vcpus", "3", "--cmdline", "mvm.test=halt", "--timeout-s", "60"];
    let threads = watch_boot(&args, |pid| {
        let threads = vcpu_threads(pid);
        (threads.len() >= 3 && threads.iter().all(|(_, syscall)| in_kvm_run(syscall))).then_some(threads)
    });
    let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["vcpu0", "vcpu1", "vcpu2"]);
}

/// The in-kernel irqchip comes with a kernel from a file: its 8259 PIC
/// keeps the mask the guest writes, where the builtin guest (no irqchip)
/// reads an empty bus.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn kernel_from_a_file_boots_with_the_irqchip() {
    common::require_kvm();
    let elf = guest_elf();
    let (code, stdout, stderr) =
        boot(&["--kernel", elf.to_str().unwrap(), "--cmdline", "mvm.test=pic mvm.exit=3", "--timeout-s", "30"]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stdout.starts_with("mvm-guest 0.1.0: mode="), "{stdout}");
    assert!(stdout.contains("pic mask wrote=0x5a read=0x5a\n"), "{stdout}");
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=pic", "--timeout-s", "30"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("pic mask wrote=0x5a read=0xff\n"), "{stdout}");
}

/// A guest that resets (as Linux does with reboot=k) is stopped, not
/// rebooted, and that counts as a normal end.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_guest_reset_ends_with_status_zero() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=reset", "--timeout-s", "30"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("mvm: guest asked for a reset; the VM was stopped"), "{stderr}");
}

/// A halt that nothing can end (no deadline armed, no device that could
/// wake the vCPU) is a crash, reported at once rather than at a timeout.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_guest_halted_for_good_is_a_crash() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=halt", "--timeout-s", "10"]);
    assert_eq!(code, CRASHED, "{stdout}{stderr}");
    assert!(stderr.contains("mvm: guest crashed (halted with nothing to wake it) at rip=0x"), "{stderr}");
    assert!(stderr.contains("vcpu0: rip=0x"), "{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_panic_is_reported_with_its_status() {
    common::require_kvm();
    let (code, stdout, stderr) = boot(&["--cmdline", "mvm.test=panic"]);
    assert_eq!(code, 101);
    assert!(stdout.contains("guest panic: panicked at"), "{stdout}");
    assert!(stdout.contains("self-test panic requested"), "{stdout}");
    assert!(stderr.contains("guest panicked (status 101)"), "{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn bad_guest_argument_panics_in_the_guest() {
    common::require_kvm();
    let (code, stdout, _) = boot(&["--cmdline", "mvm.exit=256"]);
    assert_eq!(code, 101);
    assert!(stdout.contains("mvm.exit=256: expected a status from 0 to 255"), "{stdout}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn triple_fault_is_reported_with_rip() {
    common::require_kvm();
    let (code, _, stderr) = boot(&["--cmdline", "mvm.test=triple-fault"]);
    assert_eq!(code, CRASHED, "{stderr}");
    assert!(stderr.contains("mvm: guest crashed (triple fault) at rip=0x"), "{stderr}");
    assert!(stderr.contains("vcpu0: rip=0x"), "{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn spinning_guest_is_stopped_by_the_timeout() {
    common::require_kvm();
    // Not a speed check: a broken timeout must fail the test, not hang it.
    let args = ["boot", "--cmdline", "mvm.test=spin", "--timeout-s", "0.5"];
    let done = common::measure_within(mvm().args(args), Duration::from_secs(30));
    let stderr = text(&done.stderr);
    assert_eq!(done.status.code(), Some(TIMEOUT), "{stderr}");
    assert!(stderr.contains("timeout after 0.5 s"), "{stderr}");
}

fn assert_error(args: &[&str], expected: &str) {
    let (code, stdout, stderr) = boot(args);
    assert_eq!(code, MVM_ERROR, "{args:?}: stdout {stdout} stderr {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr:?}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
}

#[test]
fn missing_kvm_device_says_so() {
    let out = run(mvm().args(["--kvm-device", "/nonexistent/kvm", "boot"]));
    assert_eq!(out.status.code(), Some(MVM_ERROR));
    assert!(text(&out.stderr).contains("/nonexistent/kvm: no such device: KVM is not available"));
}

#[test]
fn a_device_that_is_not_kvm_says_so() {
    let out = run(mvm().args(["--kvm-device", "/dev/null", "boot"]));
    assert_eq!(out.status.code(), Some(MVM_ERROR));
    assert!(text(&out.stderr).contains("/dev/null: not a KVM device"), "{}", text(&out.stderr));
}

/// Runs mvm as an unprivileged user: as `nobody` through setpriv (util-linux,
/// which scripts/setup installs) when the tests run as root, as the user
/// otherwise.
fn unprivileged(args: &[&str]) -> std::process::Output {
    let mut cmd = if common::is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_mvm")]);
        c
    } else {
        mvm()
    };
    run(cmd.args(args))
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root to make a device node: MVM_SKIP_ROOT=1")]
fn inaccessible_kvm_device_says_how_to_fix_it() {
    common::require_kvm();
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    // A KVM device node only root may open, whatever /dev/kvm's own mode is.
    let node = dir.path().join("kvm");
    let made = std::process::Command::new("mknod").arg(&node).args(["c", "10", "232"]).status();
    assert!(made.is_ok_and(|s| s.success()), "mknod {} failed", node.display());
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = unprivileged(&["--kvm-device", node.to_str().unwrap(), "boot"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{stderr}");
    assert!(stderr.contains("permission denied: add your user to the kvm group"), "{stderr}");
}

#[test]
fn missing_kernel_file() {
    assert_error(&["--kernel", "/nonexistent/vmlinux"], "kernel /nonexistent/vmlinux: no such file");
}

#[test]
fn unreadable_kernel_file() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::copy(guest_elf(), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = unprivileged(&["boot", "--kernel", kernel.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{stderr}");
    assert!(stderr.contains(&format!("kernel {}: cannot read", kernel.display())), "{stderr}");
    assert!(stderr.contains("ermission denied"), "{stderr}");
}

#[test]
fn kernel_that_is_a_directory() {
    assert_error(&["--kernel", "/"], "kernel /: is a directory");
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vmlinux");
    std::fs::write(&script, b"#!/bin/sh\necho this is no kernel\n").unwrap();
    assert_error(&["--kernel", script.to_str().unwrap()], "not an x86-64 ELF vmlinux or a bzImage");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_error(&["--kernel", empty.to_str().unwrap()], "not an x86-64 ELF vmlinux or a bzImage");
}

/// The guest ELF with its last loadable segment grown to `memsz` bytes.
fn guest_with_segment_size(memsz: u64) -> Vec<u8> {
    let mut elf = std::fs::read(guest_elf()).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(&elf, 0x36), u16_at(&elf, 0x38));
    let last_load = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .rfind(|ph| u32::from_le_bytes(elf[*ph..*ph + 4].try_into().unwrap()) == 1)
        .expect("the guest has a PT_LOAD segment");
    elf[last_load + 0x28..last_load + 0x30].copy_from_slice(&memsz.to_le_bytes());
    elf
}

#[test]
fn kernel_too_big_for_guest_ram() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, guest_with_segment_size(1 << 30)).unwrap();
    assert_error(
        &["--kernel", kernel.to_str().unwrap(), "--memory-mib", "64"],
        "MiB) but the VM's RAM below 3 GiB ends at 0x4000000: raise --memory-mib",
    );
}

#[test]
fn memory_too_small_for_the_kernel() {
    assert_error(&["--memory-mib", "2"], "kernel builtin: needs guest memory up to");
    assert_error(&["--memory-mib", "0"], "guest memory of 0 MiB is too small");
}

#[test]
fn memory_larger_than_the_host() {
    assert_error(&["--memory-mib", "100000000"], "is more than this host has");
}

#[test]
fn zero_vcpus_are_refused() {
    assert_error(&["--vcpus", "0"], "--vcpus must be at least 1");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn more_vcpus_than_kvm_allows_are_refused() {
    common::require_kvm();
    let too_many = (common::max_vcpus() + 1).to_string();
    assert_error(&["--vcpus", &too_many], "but this host's KVM allows at most");
}

#[test]
fn bad_command_lines() {
    assert_error(&["--cmdline", &"x".repeat(5000)], "command line is longer than 4095 bytes");
    assert_error(&["--cmdline", "caf\u{e9}"], "command line may hold only printable ASCII");
}

#[test]
fn bad_flag_values_are_refused_by_the_parser() {
    for args in [&["--timeout-s", "0"][..], &["--timeout-s", "soon"], &["--memory-mib", "lots"], &["--vcpus", "many"]] {
        let out = run(mvm().arg("boot").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("invalid value"), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn help_explains_every_flag() {
    let out = run(mvm().arg("--help"));
    let help = text(&out.stdout);
    for word in ["boot", "check", "--verbose", "--kvm-device", "Exit status"] {
        assert!(help.contains(word), "mvm --help lacks {word}: {help}");
    }
    let out = run(mvm().args(["boot", "--help"]));
    let help = text(&out.stdout);
    for word in ["--kernel", "--memory-mib", "--vcpus", "--cmdline", "--timeout-s", "mvm.exit"] {
        assert!(help.contains(word), "mvm boot --help lacks {word}: {help}");
    }
}
