//! What every integration test needs: the mvm binary, the guest kernel file,
//! and the rule for hosts without KVM.

#![allow(dead_code)] // each test file uses its own subset

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The mvm binary, with its default compiled-code cache under target/ (a
/// test that wants another sets XDG_CACHE_HOME or --cache-dir itself): the
/// suite never writes into the user's own cache, and runs after the first
/// reuse its compiled modules.
pub fn mvm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mvm"));
    command.env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
    command
}

/// The tiny guest as a file, as build.rs built it (the same bytes as
/// `--kernel builtin`).
pub fn guest_elf() -> PathBuf {
    PathBuf::from(env!("MVM_GUEST_ELF"))
}

/// Fails the test, saying why, when this host has no usable KVM. Tests that
/// need KVM carry `#[cfg_attr(mvm_skip_kvm, ignore = ...)]`: with
/// MVM_SKIP_KVM=1 (a host without KVM on purpose) they are reported as
/// ignored in the summary instead of being run.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm and this host has none; set MVM_SKIP_KVM=1 if that is deliberate"
    );
}

/// Fails the test when it does not run as root. Tests that need root carry
/// `#[cfg_attr(mvm_skip_root, ignore = ...)]`: MVM_SKIP_ROOT=1 says the
/// suite runs unprivileged on purpose, and they are reported as ignored.
pub fn require_root() {
    assert!(is_root(), "this test needs root; set MVM_SKIP_ROOT=1 if the suite runs unprivileged on purpose");
}

/// The banner's mode on this host: "pvm" on a PVM host, "native" on VMX/SVM.
pub fn expected_mode() -> &'static str {
    let out = run(mvm().arg("check"));
    assert!(out.status.success(), "mvm check failed: {}", text(&out.stderr));
    if text(&out.stdout).lines().any(|l| l == "host: pvm") {
        "pvm"
    } else {
        "native"
    }
}

pub fn max_vcpus() -> u64 {
    let out = run(mvm().arg("check"));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("max_vcpus: "))
        .and_then(|n| n.parse().ok())
        .expect("mvm check prints max_vcpus")
}

/// The longest one command of a test may run: a hang then fails its test,
/// with what the command printed, instead of hanging the whole suite.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to its end, as `Command::output` does, but kills it and fails
/// the test when it runs longer than [`RUN_LIMIT`].
pub fn run(cmd: &mut Command) -> Output {
    let done = measure_within(cmd, RUN_LIMIT);
    Output { status: done.status, stdout: done.stdout, stderr: done.stderr }
}

/// A command that ran to its end: how it ended, its CPU time (user and
/// system, every thread, from wait4), its wall time, its output and its
/// peak RSS (wait4's ru_maxrss: for mvm, guest RAM it touched included).
pub struct Measured {
    pub status: ExitStatus,
    pub cpu: Duration,
    pub wall: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub max_rss_kib: u64,
}

impl Measured {
    /// The exit code; fails the test if the command was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("killed: {}; stderr: {}", self.status, text(&self.stderr)))
    }
}

/// Runs `cmd` to its end, its stdin empty, and measures it. Kills it,
/// failing the test, when it runs longer than `limit`.
pub fn measure_within(cmd: &mut Command, limit: Duration) -> Measured {
    measure_feeding(cmd.stdin(Stdio::null()), limit, None)
}

/// What writes a child's stdin, a pipe that closes when it returns.
pub type Feed = Box<dyn FnOnce(&mut dyn std::io::Write) + Send>;

/// Runs `cmd` to its end and measures it, with `feed` writing its stdin on
/// a thread of its own (without one, stdin is as `cmd` sets it). Kills it,
/// failing the test, when it runs longer than `limit`. The child is reaped
/// by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn measure_feeding(cmd: &mut Command, limit: Duration, feed: Option<Feed>) -> Measured {
    let started = Instant::now();
    if feed.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot run mvm");
    let fed = feed.map(|feed| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || feed(&mut stdin))
    });
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (Child::wait is not called).
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        assert_eq!(reaped, 0, "wait4: {}", std::io::Error::last_os_error());
        if started.elapsed() > limit {
            // SAFETY: `pid` is our child and not reaped, so still ours to
            // kill and reap.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            let stderr = stderr.join().unwrap_or_default();
            panic!("{cmd:?} still ran after {limit:?} and was killed; its stderr: {}", text(&stderr));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some(fed) = fed {
        fed.join().unwrap();
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Measured {
        status: ExitStatus::from_raw(status),
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        wall: started.elapsed(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `mvm boot` with `args` and returns (exit status, stdout, stderr).
pub fn boot(args: &[&str]) -> (i32, String, String) {
    let out = run(mvm().arg("boot").args(args));
    let code = out.status.code().expect("mvm was killed by a signal");
    (code, text(&out.stdout), text(&out.stderr))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd` to its end (bounded by [`RUN_LIMIT`]) and returns its exit
/// status, the CPU time (user + system) it used, from wait4, and its stdout.
pub fn run_measuring_cpu(cmd: &mut Command) -> (i32, Duration, String) {
    let done = measure_within(cmd, RUN_LIMIT);
    (done.code(), done.cpu, text(&done.stdout))
}

/// A copy of `examples/NAME` in a temporary directory (removed on drop), so
/// that the job writes its `out/` there, never into the source tree, and two
/// tests can run the same example at once. The copy keeps the folder's name.
pub struct Example {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Example {
    pub fn job(&self) -> PathBuf {
        self.path.join("job.toml")
    }
}

pub fn example(name: &str) -> Example {
    let dir = tempfile::tempdir().expect("cannot make a temporary directory");
    let path = copy_example(name, dir.path());
    Example { _dir: dir, path }
}

/// Copies `examples/NAME` into `parent/NAME` and returns that path. An `out/`
/// left by running the example by hand is not copied: it would hide a job
/// that writes nothing.
pub fn copy_example(name: &str, parent: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    assert!(source.is_dir(), "no example {name} at {}", source.display());
    let copy = parent.join(name);
    copy_tree(&source, &copy);
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let (source, kind) = (entry.path(), entry.file_type().unwrap());
        if kind.is_dir() && entry.file_name() != "out" {
            copy_tree(&source, &to.join(entry.file_name()));
        } else if kind.is_file() {
            std::fs::copy(&source, to.join(entry.file_name()))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", source.display()));
        }
    }
}
