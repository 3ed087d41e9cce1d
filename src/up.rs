//! `mvm up job.toml`: run a WebAssembly job in its own VM.
//!
//! The job file is checked before anything else; the module is compiled
//! ahead of time (or its code taken from the cache) before anything is
//! staged, so that a bad module leaves nothing behind; the compiled code,
//! arguments, environment and preopened directories are staged into a job
//! disk image, and the job's files (its mounts and room to write) into a
//! filesystem disk image, in a private temporary directory (removed when
//! mvm ends); the builtin guest runs the module with its stdout and stderr
//! on two virtio consoles streamed live to mvm's own, and its stdin on the
//! first console's receive queue, read from `[run] stdin`'s file or else
//! from mvm's own stdin as the job consumes it; after an `exit` or a
//! `trap`, the filesystem disk is read back as hostile input: what the job
//! wrote under /out is merged into the job's output directory, and each rw
//! mount is written back atomically. One line on stderr says why the job
//! ended (`--json`: a JSON object instead).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use mvm_api::job::{self, Cache, CollectError, HostLimits, Image, ImageMount, JobSpec, Kernel, Source};
use mvm_vmm::power::ExitReason;
use mvm_vmm::virtio::{ConsoleConfig, ConsoleSink, DiskConfig, NetConfig, NotifyPath};
use mvm_vmm::{KernelSource, VmConfig, VmEnd};

use crate::status;

/// How much of the guest's diagnostic console (COM1) is kept for a report.
const DIAGNOSTICS_MAX: usize = 64 * 1024;

/// Why a job ended: the line mvm prints and the status it exits with.
struct Ending {
    reason: &'static str,
    line: String,
    status: u8,
    /// Whether the guest got to write its files back (outputs and rw mounts).
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

/// What came back from the filesystem disk.
#[derive(Debug, Default, PartialEq)]
struct Collected {
    /// Under the outputs directory.
    files: Vec<String>,
    bytes: u64,
    /// Why /out was not (fully) collected, or the image could not be read.
    output_error: Option<String>,
    /// Each rw mount: its guest and host paths, and why it was not written
    /// back (the host tree is then as it was).
    mounts: Vec<(String, PathBuf, Option<String>)>,
}

impl Collected {
    fn failed(&self) -> bool {
        self.output_error.is_some() || self.mounts.iter().any(|m| m.2.is_some())
    }
}

/// Reads the filesystem disk back: /out merged into the outputs directory,
/// each rw mount written back. An image the guest left invalid is the
/// outputs error, and no rw mount is touched.
fn collect(image: &Path, spec: &JobSpec, mounts: &[ImageMount]) -> Collected {
    // With its causes: "cannot write DIR" alone does not say why.
    let chain = |e: CollectError| format!("{:#}", anyhow::Error::from(e));
    let mut collected = Collected::default();
    let rw_mounts = mounts.iter().enumerate().filter_map(|(i, m)| match &m.source {
        Source::Dir(host) | Source::File(host) if !m.read_only => Some((i as u32, m, host)),
        _ => None,
    });
    let image = match Image::open(image) {
        Ok(image) => image,
        Err(e) => {
            collected.output_error = Some(chain(e));
            for (_, m, host) in rw_mounts {
                let why = "not written back: the filesystem image is invalid".to_owned();
                collected.mounts.push((m.guest.clone(), host.clone(), Some(why)));
            }
            return collected;
        }
    };
    let out = mounts.iter().position(|m| m.source == Source::Empty);
    if let (Some(index), Some(dest)) = (out, &spec.outputs) {
        match job::collect_outputs(&image, index as u32, dest, spec.outputs_max_bytes) {
            Ok(summary) => {
                collected.files = summary.files.iter().map(|f| f.path.display().to_string()).collect();
                collected.bytes = summary.bytes;
            }
            Err(e) => collected.output_error = Some(chain(e)),
        }
    }
    for (index, m, host) in rw_mounts {
        let result = job::write_back(&image, index, host, image.size());
        collected.mounts.push((m.guest.clone(), host.clone(), result.err().map(chain)));
    }
    collected
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
            // A write-back in progress removes its staging copy first.
            job::collect::interrupt();
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
/// `cache` (`None`: compiled for this run only). With `files_roots`, every
/// host path the job names must lie beneath one of them.
pub fn up(
    job_file: &Path,
    json: bool,
    kvm_path: PathBuf,
    cache: Option<&Cache>,
    files_roots: &[PathBuf],
) -> anyhow::Result<u8> {
    let own = own_stdin()?;
    let files_roots = files_roots
        .iter()
        .map(|root| {
            std::fs::canonicalize(root).with_context(|| format!("--files-root: cannot resolve {}", root.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = JobSpec::load_beneath(job_file, &HostLimits::detect(), &files_roots)?;
    let stdin = job_stdin(&spec, own)?;
    let work = tempfile::Builder::new().prefix("mvm-job-").tempdir().context("cannot make a temporary directory")?;
    // Before compiling: the compiler's worker threads must inherit the
    // blocked signals, or a ^C could end mvm on one of them, skipping the
    // cleanup. A module refused below drops `work`, leaving nothing.
    remove_on_signal(work.path().to_path_buf())?;
    let module = job::compile::prepare(&spec.wasm, spec.memory_mib, cache)?;
    let job_image = work.path().join("job.img");
    let fs_image = work.path().join("fs.img");
    let mounts = job::image::mounts(&spec);
    let preopens = job::image::preopens(&mounts);
    job::write_input_image(&job_image, module, &spec.argv(), &spec.env, &preopens)?;
    job::build_image(&fs_image, &mounts, spec.disk_mib)?;

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
            DiskConfig { path: fs_image.clone(), read_only: false, serial: Some("mvm-fs".into()) },
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

    let collected = if ending.outputs { collect(&fs_image, &spec, &mounts) } else { Collected::default() };
    if ending.shows_console() {
        let kept = diagnostics.0.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!("mvm: the guest's console:\n{}", String::from_utf8_lossy(&kept));
    }
    let status = ending.exit_status(collected.failed());
    let Collected { files, bytes, output_error, mounts: written_back } = collected;
    if json {
        let report = serde_json::json!({
            "job": spec.name,
            "reason": ending.reason,
            // What mvm exits with, so that the report and the status agree.
            "status": status,
            "end": ending.line,
            "elapsed_s": elapsed.as_secs_f64(),
            "outputs": { "dir": spec.outputs, "files": files, "bytes": bytes, "error": output_error },
            "mounts": written_back.iter().map(|(guest, host, error)| {
                serde_json::json!({ "guest": guest, "host": host, "error": error })
            }).collect::<Vec<_>>(),
        });
        eprintln!("{report}");
    } else {
        eprintln!("mvm: job {} ended: {}", spec.name, ending.line);
        if let Some(err) = &output_error {
            eprintln!("mvm: outputs not fully collected: {err}");
        }
        for (guest, host, error) in &written_back {
            if let Some(err) = error {
                eprintln!("mvm: mount {guest} not written back to {}: {err}", host.display());
            }
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
        let err = up(&dir.path().join("job.toml"), false, kvm.clone(), Some(&cache), &[]).unwrap_err();
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
    fn an_image_the_guest_left_invalid_is_the_outputs_error_and_no_mount_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wat"), "(module)").unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/f"), "before").unwrap();
        let toml = "[run]\nwasm = \"m.wat\"\n[files]\noutputs = \"out\"\ndisk_mib = 1\n\
                    [[files.mount]]\nhost = \"data\"\nguest = \"/data\"\nmode = \"rw\"\n";
        std::fs::write(dir.path().join("job.toml"), toml).unwrap();
        let spec = JobSpec::load(&dir.path().join("job.toml"), &HostLimits { memory_mib: 1024, cpus: 1 }).unwrap();
        let mounts = job::image::mounts(&spec);
        let image = dir.path().join("fs.img");
        job::build_image(&image, &mounts, spec.disk_mib).unwrap();

        let collected = collect(&image, &spec, &mounts);
        let host = dir.path().canonicalize().unwrap().join("data");
        assert_eq!(collected, Collected { mounts: vec![("/data".into(), host.clone(), None)], ..Collected::default() });
        assert!(!collected.failed());
        assert_eq!(std::fs::read(host.join("f")).unwrap(), b"before", "an unchanged tree comes back unchanged");

        std::fs::write(&image, [0xa5u8; 8192]).unwrap();
        let collected = collect(&image, &spec, &mounts);
        assert!(collected.failed());
        let error = collected.output_error.as_deref().unwrap();
        assert!(error.starts_with("the filesystem image the job left is invalid"), "{error}");
        assert_eq!(collected.mounts[0].2.as_deref(), Some("not written back: the filesystem image is invalid"));
        assert_eq!(std::fs::read(host.join("f")).unwrap(), b"before");
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
