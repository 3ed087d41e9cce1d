//! `mvm up job.toml`: run a WebAssembly job in its own VM.
//!
//! The job file is checked before anything else; the module is compiled
//! ahead of time (or its code taken from the cache) before anything is
//! staged, so that a bad module leaves nothing behind; the compiled code,
//! arguments, environment and input files are staged into a job disk image
//! and an empty output disk image in a private temporary directory (removed
//! when mvm ends); the builtin guest runs the module with its stdout and stderr on two
//! virtio consoles streamed live to mvm's own, and its stdin on the first
//! console's receive queue, read from `[run] stdin`'s file or else from
//! mvm's own stdin as the job consumes it; what the job wrote under /out
//! is unpacked, as hostile input, into the job's output directory. One line
//! on stderr says why the job ended (`--json`: a JSON object instead).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use mvm_api::job::{self, Cache, HostLimits, JobSpec, Kernel};
use mvm_vmm::power::ExitReason;
use mvm_vmm::virtio::{ConsoleConfig, ConsoleSink, DiskConfig, NetConfig, NotifyPath};
use mvm_vmm::{KernelSource, VmConfig, VmEnd};

use crate::status;

/// Room on the output disk beyond the data cap, for ustar headers and padding.
const OUTPUT_HEADROOM: u64 = 4 << 20;
/// How much of the guest's diagnostic console (COM1) is kept for a report.
const DIAGNOSTICS_MAX: usize = 64 * 1024;

/// Why a job ended: the line mvm prints and the status it exits with.
struct Ending {
    reason: &'static str,
    line: String,
    status: u8,
    /// Whether the guest got to write its outputs.
    outputs: bool,
}

impl Ending {
    /// Whether the guest's console explains the ending (the guest kernel
    /// itself failed), so that mvm prints it.
    fn shows_console(&self) -> bool {
        self.reason == "guest crashed"
    }

    /// mvm's exit status: the job's, except that a job which succeeded but
    /// whose outputs could not all be collected is an error (125), so that
    /// no caller takes its results for complete.
    fn exit_status(&self, outputs_failed: bool) -> u8 {
        if outputs_failed && self.status == 0 {
            status::MVM_ERROR
        } else {
            self.status
        }
    }
}

fn ending(end: &VmEnd, memory_mib: u64) -> Ending {
    let crashed = |detail: String| Ending {
        reason: "guest crashed",
        line: format!("guest crashed: {detail}"),
        status: status::GUEST_CRASHED,
        outputs: false,
    };
    match end {
        VmEnd::PowerOff(exit) if exit.reason == ExitReason::Exit => {
            let line = format!("exit {}", exit.status);
            Ending { reason: "exit", line, status: exit.status, outputs: true }
        }
        VmEnd::PowerOff(exit) => {
            crashed(format!("the guest kernel stopped ({:?}, status {})", exit.reason, exit.status))
        }
        VmEnd::Trap { message } => {
            let line = format!("trap: {message}");
            Ending { reason: "trap", line, status: status::TRAP, outputs: true }
        }
        VmEnd::OutOfMemory { .. } => Ending {
            reason: "out of memory",
            line: format!("out of memory (guest RAM {memory_mib} MiB)"),
            status: status::OUT_OF_MEMORY,
            outputs: false,
        },
        VmEnd::TimedOut(limit) => Ending {
            reason: "timeout",
            line: format!("timeout after {} s", limit.as_secs_f64()),
            status: status::TIMEOUT,
            outputs: false,
        },
        VmEnd::Crashed(crash) => crashed(crash.detail()),
        VmEnd::Reset => crashed("the guest kernel reset".to_string()),
    }
}

/// The size of the output disk for outputs of at most `max_bytes`: room for
/// the archive's headers and padding beyond the data.
fn output_image_bytes(max_bytes: u64) -> u64 {
    max_bytes + OUTPUT_HEADROOM
}

/// The guest's COM1 output, kept (the first 64 KiB) for when a job fails.
#[derive(Clone, Default)]
struct Diagnostics(Arc<Mutex<Vec<u8>>>);

impl Write for Diagnostics {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = DIAGNOSTICS_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes SIGINT and SIGTERM remove the staged images in `dir` before mvm
/// exits (with 128 + the signal, as a shell reports it). The signals are
/// blocked in this thread before any other exists, so every thread inherits
/// the mask and only the waiting thread ever sees them; the VM's threads die
/// with the process.
fn remove_on_signal(dir: PathBuf) -> anyhow::Result<()> {
    // SAFETY: an all-zero sigset_t is a valid argument for sigemptyset,
    // which initializes it.
    let mut signals: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `signals` is a valid sigset_t owned by this frame; blocking
    // SIGINT and SIGTERM in this thread has no effect on memory.
    let blocked = unsafe {
        libc::sigemptyset(&mut signals);
        libc::sigaddset(&mut signals, libc::SIGINT);
        libc::sigaddset(&mut signals, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut())
    };
    anyhow::ensure!(blocked == 0, "cannot block SIGINT and SIGTERM: {}", std::io::Error::from_raw_os_error(blocked));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `signals` lives in this closure and `signal` is a valid out-pointer.
            if unsafe { libc::sigwait(&signals, &mut signal) } != 0 {
                return;
            }
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("mvm: interrupted (signal {signal}): the job's VM was stopped and its staged files removed");
            std::process::exit(128 + signal);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// mvm's own stdin as a file of its own (a second descriptor of it). Taken
/// before mvm opens anything: when fd 0 is closed, the next file opened
/// would be fd 0, and the job would read it. A closed stdin reads as empty.
fn own_stdin() -> anyhow::Result<File> {
    match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Ok(File::from(fd)),
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => {
            File::open("/dev/null").context("mvm's stdin is closed, and /dev/null cannot be opened in its place")
        }
        Err(err) => Err(err).context("cannot take mvm's stdin for the job"),
    }
}

/// The job's stdin: `[run] stdin`'s file, else mvm's own. The file was
/// checked with the job file; it is checked again once open (its name may
/// lead elsewhere by now), opened without waiting in case it became a FIFO.
fn job_stdin(spec: &JobSpec, own: File) -> anyhow::Result<File> {
    let Some(path) = &spec.stdin else { return Ok(own) };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("run.stdin: cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("run.stdin: cannot access {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "run.stdin: not a regular file: {}", path.display());
    Ok(file)
}

/// Runs the job at `job_file`; its compiled code comes from and goes to
/// `cache` (`None`: compiled for this run only).
pub fn up(job_file: &Path, json: bool, kvm_path: PathBuf, cache: Option<&Cache>) -> anyhow::Result<u8> {
    let own = own_stdin()?;
    let spec = JobSpec::load(job_file, &HostLimits::detect())?;
    let stdin = job_stdin(&spec, own)?;
    let work = tempfile::Builder::new().prefix("mvm-job-").tempdir().context("cannot make a temporary directory")?;
    // Before compiling: the compiler's worker threads must inherit the
    // blocked signals, or a ^C could end mvm on one of them, skipping the
    // cleanup. A module refused below drops `work`, leaving nothing.
    remove_on_signal(work.path().to_path_buf())?;
    let module = job::compile::prepare(&spec.wasm, spec.memory_mib, cache)?;
    let job_image = work.path().join("job.img");
    let out_image = work.path().join("out.img");
    job::write_input_image(&job_image, module, &spec.argv(), &spec.env, &spec.inputs)?;
    job::create_output_image(&out_image, output_image_bytes(spec.outputs_max_bytes))?;

    let mut cmdline = String::from("mvm.job=1");
    let nets = match &spec.network {
        Some(network) => {
            if let Some(address) = &network.address {
                cmdline.push_str(&format!(" mvm.ip={}/{}", address.addr, address.prefix_len));
            }
            if let Some(gateway) = &network.gateway {
                cmdline.push_str(&format!(" mvm.gw={gateway}"));
            }
            vec![NetConfig { tap: network.tap.clone(), mac: None }]
        }
        None => Vec::new(),
    };
    let kernel = match &spec.kernel {
        Kernel::Builtin => KernelSource::Builtin(crate::BUILTIN_GUEST),
        Kernel::Path(path) => KernelSource::Path(path.clone()),
    };
    let config = VmConfig {
        kernel,
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        cmdline: Some(cmdline),
        timeout: Some(spec.timeout),
        kvm_path,
        disks: vec![
            DiskConfig { path: job_image, read_only: true, serial: Some("mvm-job".into()) },
            DiskConfig { path: out_image.clone(), read_only: false, serial: Some("mvm-out".into()) },
        ],
        nets,
        cpu_quota: spec.cpu_quota,
        consoles: vec![
            ConsoleConfig { output: ConsoleSink::new(std::io::stdout()), input: Some(stdin) },
            ConsoleConfig::output(ConsoleSink::new(std::io::stderr())),
        ],
        notify: NotifyPath::Exit,
    };
    let diagnostics = Diagnostics::default();
    let started = Instant::now();
    let end = mvm_vmm::vm::run(&config, diagnostics.clone()).context("cannot run the job's VM")?;
    let elapsed = started.elapsed();
    let ending = ending(&end, spec.memory_mib);

    let outputs = if ending.outputs {
        Some(job::extract_outputs(&out_image, &spec.outputs, spec.outputs_max_bytes))
    } else {
        None
    };
    if ending.shows_console() {
        let kept = diagnostics.0.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!("mvm: the guest's console:\n{}", String::from_utf8_lossy(&kept));
    }
    let (files, bytes, output_error) = match outputs {
        Some(Ok(summary)) => {
            (summary.files.iter().map(|f| f.path.display().to_string()).collect(), summary.bytes, None)
        }
        // With its causes: "cannot write DIR" alone does not say why.
        Some(Err(err)) => (Vec::new(), 0, Some(format!("{:#}", anyhow::Error::from(err)))),
        None => (Vec::new(), 0, None),
    };
    let status = ending.exit_status(output_error.is_some());
    if json {
        let report = serde_json::json!({
            "job": spec.name,
            "reason": ending.reason,
            // What mvm exits with, so that the report and the status agree.
            "status": status,
            "end": ending.line,
            "elapsed_s": elapsed.as_secs_f64(),
            "outputs": { "dir": spec.outputs, "files": files, "bytes": bytes, "error": output_error },
        });
        eprintln!("{report}");
    } else {
        eprintln!("mvm: job {} ended: {}", spec.name, ending.line);
        if let Some(err) = &output_error {
            eprintln!("mvm: outputs not fully collected: {err}");
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mvm_vmm::power::GuestExit;
    use mvm_vmm::{Crash, CrashKind};

    use super::*;

    #[test]
    fn every_vm_end_maps_to_a_job_ending() {
        let exit = |reason, status| VmEnd::PowerOff(GuestExit { reason, status });
        // (end, reason, line, status, outputs collected, console printed)
        let cases = [
            (exit(ExitReason::Exit, 3), "exit", "exit 3", 3, true, false),
            (VmEnd::Trap { message: "unreachable".into() }, "trap", "trap: unreachable", status::TRAP, true, false),
            (
                VmEnd::OutOfMemory { ram_mib: 16 },
                "out of memory",
                "out of memory (guest RAM 16 MiB)",
                status::OUT_OF_MEMORY,
                false,
                false,
            ),
            (
                VmEnd::TimedOut(Duration::from_millis(1500)),
                "timeout",
                "timeout after 1.5 s",
                status::TIMEOUT,
                false,
                false,
            ),
            (
                exit(ExitReason::Panic, 101),
                "guest crashed",
                "guest crashed: the guest kernel stopped (Panic, status 101)",
                status::GUEST_CRASHED,
                false,
                true,
            ),
            (
                VmEnd::Reset,
                "guest crashed",
                "guest crashed: the guest kernel reset",
                status::GUEST_CRASHED,
                false,
                true,
            ),
            (
                VmEnd::Crashed(Crash { kind: CrashKind::TripleFault, vcpu: 0, state: None }),
                "guest crashed",
                "guest crashed: triple fault",
                status::GUEST_CRASHED,
                false,
                true,
            ),
        ];
        for (end, reason, line, code, outputs, console) in cases {
            let ending = ending(&end, 16);
            assert_eq!(
                (ending.reason, ending.line.as_str(), ending.status, ending.outputs, ending.shows_console()),
                (reason, line, code, outputs, console)
            );
        }
    }

    #[test]
    fn the_output_disk_holds_an_archive_of_outputs_up_to_the_cap() {
        const MIB: u64 = 1 << 20;
        // One file of the whole cap: its header, padding and the end blocks.
        assert!(output_image_bytes(MIB) >= MIB + 512 + 511 + 1024);
        // Or the cap in 1,000 files, each with its header and padding.
        assert!(output_image_bytes(64 * MIB) >= 64 * MIB + 1000 * (512 + 511) + 1024);
        // The image is sparse, but its size is what the guest may fill.
        assert!(output_image_bytes(64 * MIB) <= 72 * MIB);
    }

    #[test]
    fn diagnostics_keep_the_first_64_kib_and_take_everything() {
        let mut console = Diagnostics::default();
        assert_eq!(console.write(&[b'a'; 60 << 10]).unwrap(), 60 << 10);
        assert_eq!(console.write(&[b'b'; 8 << 10]).unwrap(), 8 << 10, "what no longer fits is taken all the same");
        assert_eq!(console.write(b"c").unwrap(), 1);
        console.flush().unwrap();
        let kept = console.0.lock().unwrap();
        assert_eq!(kept.len(), 64 << 10);
        assert!(kept[..60 << 10].iter().all(|&b| b == b'a') && kept[60 << 10..].iter().all(|&b| b == b'b'));
    }

    #[test]
    fn a_job_that_cannot_get_a_vm_is_mvms_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wat"), "(module (func (export \"_start\")))").unwrap();
        std::fs::write(
            dir.path().join("job.toml"),
            "[guest]\nmemory_mib = 16\n[run]\nwasm = \"m.wat\"\n[files]\noutputs_max_mib = 1\n",
        )
        .unwrap();
        let kvm = dir.path().join("no-kvm");
        let cache = Cache::new(dir.path().join("cache"), 64 << 20);
        let err = up(&dir.path().join("job.toml"), false, kvm.clone(), Some(&cache)).unwrap_err();
        let message = format!("{err:#}");
        let expected = format!("cannot run the job's VM: {}: ", kvm.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(!dir.path().join("out").exists(), "no outputs without a VM");
        assert_eq!(cache.entries().unwrap().len(), 1, "the module was compiled before the VM was asked for");
    }

    #[test]
    fn the_jobs_stdin_is_run_stdins_regular_file_or_mvms_own() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wat"), "(module)").unwrap();
        std::fs::write(dir.path().join("in.txt"), "from the file").unwrap();
        let job = dir.path().join("job.toml");
        let host = HostLimits::detect();
        let own = || File::open(dir.path().join("m.wat")).unwrap();
        let spec = JobSpec::parse("[run]\nwasm = \"m.wat\"\nstdin = \"in.txt\"\n", &job, &host).unwrap();
        let mut text = String::new();
        job_stdin(&spec, own()).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "from the file");
        let spec = JobSpec::parse("[run]\nwasm = \"m.wat\"\n", &job, &host).unwrap();
        text.clear();
        job_stdin(&spec, own()).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "(module)", "mvm's own stdin");
        // Checked when the job file was read, then replaced by a FIFO: refused, without waiting for a writer.
        let spec = JobSpec::parse("[run]\nwasm = \"m.wat\"\nstdin = \"in.txt\"\n", &job, &host).unwrap();
        std::fs::remove_file(dir.path().join("in.txt")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("in.txt").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = job_stdin(&spec, own()).unwrap_err();
        assert!(format!("{err:#}").starts_with("run.stdin: not a regular file: "), "{err:#}");
    }

    #[test]
    fn outputs_not_collected_turn_only_a_success_into_an_error() {
        let exit = |status| ending(&VmEnd::PowerOff(GuestExit { reason: ExitReason::Exit, status }), 16);
        assert_eq!(exit(0).exit_status(false), 0);
        assert_eq!(exit(0).exit_status(true), status::MVM_ERROR);
        assert_eq!(exit(7).exit_status(true), 7, "a failed job keeps its own status");
        let trap = ending(&VmEnd::Trap { message: "unreachable".into() }, 16);
        assert_eq!(trap.exit_status(true), status::TRAP);
    }
}
