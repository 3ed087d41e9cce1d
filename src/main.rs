//! `mvm`: run untrusted code in its own tiny KVM virtual machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mvm_api::job::cache::DEFAULT_MAX_MIB;
use mvm_vmm::virtio::{DiskConfig, NetConfig, NotifyPath};
use mvm_vmm::{KernelSource, VmConfig};

mod cache;
mod remote;
mod up;

/// The tiny guest kernel, built from guest-image/ by build.rs.
static BUILTIN_GUEST: &[u8] = include_bytes!(env!("MVM_GUEST_ELF"));

/// Exit statuses of mvm itself; a guest's own status passes through as is.
mod status;

#[derive(Parser)]
#[command(
    name = "mvm",
    version,
    about = "Run untrusted code in its own tiny KVM virtual machine",
    long_about = "mvm gives every job its own microVM: a minimal monitor boots a tiny guest kernel \
                  with a serial console, virtio disks, network and consoles, under KVM (hardware \
                  VMX/SVM or PVM).\n\n\
                  Exit status of `up` and `boot`: the job's or guest's own (0-255) when it ends by \
                  itself; 121 when the job's WebAssembly trapped; 122 when the guest ran out of \
                  memory; 123 when the guest crashed; 124 on the timeout; 125 when mvm itself failed \
                  (bad input, no KVM)."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// The KVM device to use.
    #[arg(long, value_name = "PATH", env = "MVM_KVM_DEVICE", default_value = "/dev/kvm", global = true)]
    kvm_device: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebAssembly (WASI) job described by a job file in its own VM: stream its stdout and
    /// stderr, collect what it writes under /out and write back its rw mounts, and exit with its
    /// status. See README.md for the job file format.
    ///
    /// The module is compiled ahead of time on this host (Cranelift, wasmtime 48.0.8) before the VM
    /// starts, and its code kept in the compiled-code cache for the next run of the same module.
    Up {
        /// The job file (job.toml).
        job: PathBuf,
        /// Report how the job ended as one JSON object on stderr instead of a line of text.
        #[arg(long)]
        json: bool,
        /// Run the job on the `mvm serve` daemon listening on this socket instead of here: the
        /// job file is read and checked here, its paths made absolute (they must be under the
        /// daemon's --files-root); its output streams and its end are reported as a local run's.
        /// The daemon compiles the module, with its own cache.
        #[arg(long, value_name = "SOCKET", conflicts_with_all = ["cache_dir", "cache_max_mib"])]
        remote: Option<PathBuf>,
        /// Refuse any host path the job file names (module, kernel, stdin, inputs, outputs,
        /// mounts) that is not under DIR once symlinks are resolved; repeatable (under any of
        /// them). Used by `mvm serve`, which passes its own --files-root (and its directory of
        /// default outputs).
        #[arg(long, value_name = "DIR", conflicts_with = "remote")]
        files_root: Vec<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Show or empty the cache of compiled modules (default: `show`).
    Cache {
        /// The cache directory. Default: $XDG_CACHE_HOME/mvm, else ~/.cache/mvm (`mvm serve`'s
        /// is <state dir>/cache).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// Boot a VM with its serial console on stdout; exit with the guest's status.
    Boot(BootArgs),
    /// Serve the HTTP/1.1 JSON API on a Unix socket (mode 0600): create, watch, pause, resume,
    /// kill and delete jobs and VMs, each in its own `mvm` child process. The endpoints are in
    /// api/openapi.json, also served at GET /v1/openapi.json. Runs until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Report what this host's KVM offers mvm (hardware or PVM, vCPU limit).
    Check,
}

#[derive(Args)]
struct CacheArgs {
    /// Where compiled modules are cached, each under the SHA-256 of the module and of the
    /// compiler's configuration. Default: $XDG_CACHE_HOME/mvm, else ~/.cache/mvm. A cache that
    /// cannot be written costs a warning: the job runs with code compiled for it alone.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Cap on the cache's total size in MiB: beyond it, the least recently used entries are
    /// removed.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_MIB,
          value_parser = clap::value_parser!(u64).range(1..=u64::MAX >> 20))]
    cache_max_mib: u64,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Print the cache directory, how many compiled modules it holds and their total size.
    Show,
    /// Print every entry, least recently used first: its key, its size and when it was last used.
    List,
    /// Remove every entry.
    Clear,
}

#[derive(Args)]
struct ServeArgs {
    /// The Unix socket to listen on. One a running daemon answers on is refused; a stale one is
    /// replaced.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// Where job records (SQLite), logs, job files and default outputs live. Default:
    /// $XDG_STATE_HOME/mvm, else ~/.local/state/mvm.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Every host file a request names (modules, inputs, outputs, mounts, kernels, disks) must be under
    /// this directory, symlinks resolved; relative paths in requests are relative to it.
    /// Default: $HOME.
    #[arg(long, value_name = "DIR")]
    files_root: Option<PathBuf>,

    /// How many jobs and VMs may run (or be paused) at once; more are refused with 429.
    #[arg(long, value_name = "N", default_value_t = mvm_api::server::DEFAULT_MAX_RUNNING)]
    max_running: usize,

    /// Cap in MiB on the compiled-code cache the daemon's jobs share, in <state dir>/cache.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_MIB,
          value_parser = clap::value_parser!(u64).range(1..=u64::MAX >> 20))]
    cache_max_mib: u64,
}

#[derive(Args)]
struct BootArgs {
    /// Kernel to boot: `builtin` (mvm's tiny guest, embedded in this binary) or the path of an
    /// x86-64 ELF vmlinux or bzImage. A Linux kernel gets the in-kernel irqchip and, by default,
    /// the command line "console=ttyS0 reboot=k panic=1 pci=off".
    #[arg(long, value_name = "builtin|PATH", default_value = "builtin")]
    kernel: String,

    /// Guest RAM in MiB: the guest's hard memory limit. Host memory is used only as the guest
    /// touches it.
    #[arg(long, value_name = "N", default_value_t = 64)]
    memory_mib: u64,

    /// Number of vCPUs. The builtin guest runs on the first; the others exist for guests with an
    /// interrupt controller to start.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u64,

    /// Kernel command line. The builtin guest reads `mvm.exit=N` (its exit status, default 0).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Stop the VM after this many seconds (fractions allowed) and exit with status 124.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout_s: Option<Duration>,

    /// A virtio-blk disk backed by a raw image file (size a multiple of 512 bytes); `ro` makes
    /// it read-only, `serial=ID` sets the ID the guest reads (20 bytes at most). Repeatable: the
    /// guest sees the disks in this order.
    #[arg(long = "disk", value_name = "PATH[,ro][,serial=ID]")]
    disks: Vec<DiskConfig>,

    /// A virtio-net device on a TAP device: an existing TAP is attached (a persistent TAP made
    /// for your user needs no privilege: `ip tuntap add NAME mode tap user $USER`), a missing one
    /// is created (needs CAP_NET_ADMIN) and removed at exit. Default MAC: random, locally
    /// administered. Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=XX:XX:XX:XX:XX:XX]")]
    nets: Vec<NetConfig>,

    /// How virtio queue notifications reach the devices: `exit` (the guest's MMIO write exits to
    /// mvm, which does the work before the guest resumes) or `ioeventfd` (the kernel takes the
    /// write and a device thread does the work while the guest runs on).
    #[arg(long, value_name = "exit|ioeventfd", default_value = "exit")]
    virtio_notify: NotifyPath,

    /// Limit the VM to this many host cores' worth of CPU time across all its vCPUs: 0.25 is a
    /// quarter of one core; at most the host's CPU count. The vCPU threads are parked once the
    /// VM has used its share of each 20 ms period. Default: no limit.
    #[arg(long, value_name = "CORES", allow_negative_numbers = true)]
    cpu_quota: Option<f64>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err("must be more than 0".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "too large".into())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Boot(args) => boot(args, cli.kvm_device),
        Command::Check => check(cli.kvm_device),
        Command::Up { job, json, remote: None, files_root, cache } => {
            let cache = cache::for_job(cache.cache_dir, cache.cache_max_mib);
            up::up(&job, json, cli.kvm_device, cache.as_ref(), &files_root)
        }
        Command::Up { job, json, remote: Some(socket), .. } => remote::up(&job, json, &socket),
        Command::Cache { cache_dir, action } => cache::run(cache_dir, action.unwrap_or(CacheAction::Show)),
        Command::Serve(args) => serve(args, cli.kvm_device),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mvm: error: {err:#}");
            ExitCode::from(status::MVM_ERROR)
        }
    }
}

fn boot(args: BootArgs, kvm_path: PathBuf) -> anyhow::Result<u8> {
    let kernel = match args.kernel.as_str() {
        "builtin" => KernelSource::Builtin(BUILTIN_GUEST),
        path => KernelSource::Path(PathBuf::from(path)),
    };
    let config = VmConfig {
        kernel,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        cmdline: args.cmdline,
        timeout: args.timeout_s,
        kvm_path,
        disks: args.disks,
        nets: args.nets,
        cpu_quota: args.cpu_quota,
        consoles: Vec::new(),
        notify: args.virtio_notify,
    };
    let end = mvm_vmm::vm::run(&config, std::io::stdout()).context("cannot boot the VM")?;
    Ok(status::boot_report(&end))
}

fn serve(args: ServeArgs, kvm_device: PathBuf) -> anyhow::Result<u8> {
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => mvm_api::server::default_state_dir()
            .context("no --state-dir, and neither XDG_STATE_HOME nor HOME is set")?,
    };
    let files_root = match args.files_root {
        Some(dir) => dir,
        None => std::env::var_os("HOME").map(PathBuf::from).context("no --files-root, and HOME is not set")?,
    };
    anyhow::ensure!(args.max_running > 0, "--max-running must be at least 1");
    let exe = std::env::current_exe().context("cannot find the mvm binary to run jobs with")?;
    let config = mvm_api::server::ServeConfig {
        socket: args.socket,
        state_dir,
        files_root,
        max_running: args.max_running,
        exe,
        kvm_device,
        cache_max_mib: args.cache_max_mib,
    };
    mvm_api::server::serve(config)?;
    Ok(0)
}

fn check(kvm_path: PathBuf) -> anyhow::Result<u8> {
    let (kind, max_vcpus) = mvm_vmm::vm::host_kind(&kvm_path)?;
    println!("kvm: {}", kvm_path.display());
    println!("host: {}", kind.name());
    println!("max_vcpus: {max_vcpus}");
    Ok(0)
}
