//! One VM from configuration to its end: the boot order of lib.rs, then a
//! wait for the first vCPU to stop, or the timeout.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_regs, kvm_sregs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_bindings::{KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX};
use mvm_devices::clock::{WallClock, CLOCK_LEN, CLOCK_PORT};
use mvm_devices::entropy::{Entropy, ENTROPY_LEN, ENTROPY_PORT};
use mvm_devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use mvm_devices::power::{ExitPort, ExitReason, GuestExit, EXIT_PORT, EXIT_PORT_LEN};
use mvm_devices::serial::{Com1, COM1_BASE, COM1_IRQ, COM1_LEN};
use mvm_devices::timer::{WakeTimer, WAKE_TIMER_LEN, WAKE_TIMER_PORT};
use mvm_devices::{Bus, VmRequest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::host::{host_memory_bytes, Host, HostError, HostKind};
use crate::layout::low_ram_end;
use crate::loader::{Kernel, KernelSource, LoaderError};
use crate::quota::{self, Quota, Throttle};
use crate::vcpu::{self, Buses, EndCause, Idle, StopCause, VcpuEnd, Wakeup};
use crate::virtio::{ConsoleConfig, DiskConfig, NetConfig, NotifyPath, Requested};
use crate::{boot, memory, pvm, x86};

/// What Linux needs on its command line to use COM1 and reboot through the
/// i8042; the tiny guest needs nothing.
pub const LINUX_DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

pub struct VmConfig {
    pub kernel: KernelSource,
    pub memory_mib: u64,
    pub vcpus: u64,
    /// None: the default for the kernel (empty for the builtin guest).
    pub cmdline: Option<String>,
    pub timeout: Option<Duration>,
    pub kvm_path: PathBuf,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// Host cores' worth of CPU time the VM may use across its vCPUs (0.25
    /// is a quarter of one core), enforced by `quota.rs`; None: no limit.
    pub cpu_quota: Option<f64>,
    /// virtio consoles, after the disks and network devices: a job's stdout
    /// (with its stdin as the input) and stderr.
    pub consoles: Vec<ConsoleConfig>,
    /// How queue notifications reach the devices.
    pub notify: NotifyPath,
}

impl VmConfig {
    /// Linux guests need the in-kernel irqchip (APIC timer, interrupts); the
    /// tiny guest polls and halts, and avoids its cost (5-11 ms at memory
    /// registration and 16-25 ms at teardown on a PVM host).
    fn wants_irqchip(&self) -> bool {
        !matches!(self.kernel, KernelSource::Builtin(_))
    }

    fn cmdline(&self) -> &str {
        match (&self.cmdline, &self.kernel) {
            (Some(text), _) => text,
            (None, KernelSource::Builtin(_)) => "",
            (None, KernelSource::Path(_)) => LINUX_DEFAULT_CMDLINE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Kernel(#[from] LoaderError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] x86::X86Error),
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    #[error("{asked} vCPUs asked, but this host's KVM allows at most {max}")]
    TooManyVcpus { asked: u64, max: usize },
    #[error("cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot create the serial console's interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot place a device on the bus")]
    Bus(#[from] mvm_devices::BusError),
    #[error(transparent)]
    Virtio(#[from] crate::virtio::AttachError),
    #[error(transparent)]
    Quota(#[from] quota::QuotaError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How a VM ended.
#[derive(Debug)]
pub enum VmEnd {
    /// The guest powered off: a normal exit or a panic (or a reason this
    /// VMM does not know).
    PowerOff(GuestExit),
    /// The guest ran out of its RAM, which is the memory limit.
    OutOfMemory {
        ram_mib: u64,
    },
    /// The job's WebAssembly module trapped; the guest's message.
    Trap {
        message: String,
    },
    /// The guest asked for a reset; mvm does not reboot guests.
    Reset,
    Crashed(Crash),
    TimedOut(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashKind {
    /// A CPU exception the guest caught and reported (exit reason "fault").
    GuestFault {
        vector: u8,
        rip: u64,
        error_code: u64,
        cr2: u64,
        stack_overflow: bool,
    },
    TripleFault,
    InternalError {
        suberror: Option<u32>,
    },
    FailEntry {
        reason: u64,
    },
    HaltedForever,
    GuestReported,
    UnexpectedExit(&'static str),
    RunFailed(String),
}

#[derive(Debug)]
pub struct Crash {
    pub kind: CrashKind,
    pub vcpu: u64,
    pub state: Option<Box<(kvm_regs, kvm_sregs)>>,
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashKind::GuestFault { vector, error_code, cr2, stack_overflow, .. } => {
                write!(f, "{} (vector {vector}, error code {error_code:#x}", exception_name(*vector))?;
                if *vector == PAGE_FAULT || *stack_overflow {
                    write!(f, ", cr2 {cr2:#x}")?;
                }
                if *stack_overflow {
                    write!(f, ", stack overflow")?;
                }
                write!(f, ")")
            }
            CrashKind::TripleFault => write!(f, "triple fault"),
            CrashKind::InternalError { suberror } => {
                let what = match *suberror {
                    Some(KVM_INTERNAL_ERROR_EMULATION) => "instruction emulation failed",
                    Some(KVM_INTERNAL_ERROR_SIMUL_EX) => "exception while delivering an exception",
                    Some(KVM_INTERNAL_ERROR_DELIVERY_EV) => "cannot deliver an event",
                    _ => "unknown",
                };
                match suberror {
                    Some(n) => write!(f, "KVM internal error, suberror {n}: {what}"),
                    None => write!(f, "KVM internal error"),
                }
            }
            CrashKind::FailEntry { reason } => write!(f, "KVM could not enter the guest, hardware reason {reason:#x}"),
            CrashKind::HaltedForever => write!(f, "halted with nothing to wake it"),
            CrashKind::GuestReported => write!(f, "the guest reported a crash"),
            CrashKind::UnexpectedExit(what) => write!(f, "unexpected {what} exit"),
            CrashKind::RunFailed(err) => write!(f, "KVM_RUN failed: {err}"),
        }
    }
}

const PAGE_FAULT: u8 = 14;

fn exception_name(vector: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range exceeded",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack-segment fault",
        "#GP general protection fault",
        "#PF page fault",
        "reserved exception",
        "#MF x87 floating-point error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating-point exception",
        "#VE virtualization exception",
        "#CP control protection",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("reserved exception")
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            CrashKind::GuestFault { .. } => write!(f, "guest crashed: {}", self.detail()),
            _ => {
                write!(f, "guest crashed ({})", self.kind)?;
                if let Some(state) = &self.state {
                    write!(f, " at rip={:#x}", state.0.rip)?;
                }
                Ok(())
            }
        }
    }
}

impl Crash {
    /// What happened and where: the faulting RIP for a reported exception,
    /// the vCPU's RIP otherwise (when it could be read).
    pub fn detail(&self) -> String {
        let rip = match self.kind {
            CrashKind::GuestFault { rip, .. } => Some(rip),
            _ => self.state.as_ref().map(|state| state.0.rip),
        };
        match rip {
            Some(rip) => format!("{} at rip={rip:#x}", self.kind),
            None => self.kind.to_string(),
        }
    }

    /// A register dump for the log, where the VMM could read the vCPU.
    pub fn registers(&self) -> Option<String> {
        let (regs, sregs) = &**self.state.as_ref()?;
        Some(format!(
            "vcpu{}: rip={:#x} rsp={:#x} rbp={:#x} rflags={:#x} rax={:#x} rsi={:#x} rdi={:#x} \
             cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.vcpu,
            regs.rip,
            regs.rsp,
            regs.rbp,
            regs.rflags,
            regs.rax,
            regs.rsi,
            regs.rdi,
            sregs.cs.selector,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer
        ))
    }
}

/// The longest trap message read from the guest.
const TRAP_MESSAGE_MAX: u64 = 1024;

/// Reads a message the guest left at `addr`: bounded, and checked against
/// guest memory, since the guest chose both numbers.
fn guest_message(mem: &GuestMemoryMmap, addr: u64, len: u64) -> String {
    let mut bytes = vec![0u8; len.min(TRAP_MESSAGE_MAX) as usize];
    match mem.read_slice(&mut bytes, GuestAddress(addr)) {
        Ok(()) => String::from_utf8_lossy(&bytes).chars().map(|c| if c.is_control() { ' ' } else { c }).collect(),
        Err(_) => format!("(message at {addr:#x} is outside guest memory)"),
    }
}

fn end_of(vcpu_end: VcpuEnd, ram_mib: u64, mem: &GuestMemoryMmap) -> VmEnd {
    let crash = |kind, state| VmEnd::Crashed(Crash { kind, vcpu: vcpu_end.index, state });
    match vcpu_end.cause {
        EndCause::Guest { cause, state, internal_suberror } => match cause {
            StopCause::Request(VmRequest::PowerOff(GuestExit { reason: ExitReason::Fault, status })) => {
                let regs = state.as_ref().map(|s| s.0).unwrap_or_default();
                let kind = CrashKind::GuestFault {
                    vector: status,
                    rip: regs.rdi,
                    error_code: regs.rsi,
                    cr2: regs.r8,
                    stack_overflow: regs.r9 & 1 != 0,
                };
                crash(kind, state)
            }
            StopCause::Request(VmRequest::PowerOff(GuestExit { reason: ExitReason::OutOfMemory, .. })) => {
                VmEnd::OutOfMemory { ram_mib }
            }
            StopCause::Request(VmRequest::PowerOff(GuestExit { reason: ExitReason::Trap, .. })) => {
                let regs = state.as_ref().map(|s| s.0).unwrap_or_default();
                VmEnd::Trap { message: guest_message(mem, regs.rdi, regs.rsi) }
            }
            StopCause::Request(VmRequest::PowerOff(exit)) => VmEnd::PowerOff(exit),
            StopCause::Request(VmRequest::WakeAfter(_)) => unreachable!("the vCPU thread handles its wake timer"),
            StopCause::Request(VmRequest::Reset) => VmEnd::Reset,
            StopCause::Halted => crash(CrashKind::HaltedForever, state),
            StopCause::TripleFault => crash(CrashKind::TripleFault, state),
            StopCause::InternalError => crash(CrashKind::InternalError { suberror: internal_suberror }, state),
            StopCause::FailEntry { reason } => crash(CrashKind::FailEntry { reason }, state),
            StopCause::GuestReportedCrash => crash(CrashKind::GuestReported, state),
            StopCause::Unexpected(what) => crash(CrashKind::UnexpectedExit(what), state),
        },
        EndCause::RunFailed(err) => crash(CrashKind::RunFailed(err.to_string()), None),
    }
}

/// Boots the VM described by `config`, with COM1 writing to `console`, and
/// runs it to its end. Returns an error only for what stops the VM from
/// booting; everything the guest does is a [`VmEnd`].
pub fn run<W: Write + Send + 'static>(config: &VmConfig, console: W) -> Result<VmEnd, VmError> {
    let started = Instant::now();
    // The user's input first, then the host: a bad request fails the same
    // way on any machine.
    if config.vcpus == 0 {
        return Err(VmError::NoVcpus);
    }
    let cpu_quota = config.cpu_quota.map(|cores| Quota::new(cores, quota::host_cpus())).transpose()?;
    let mem_size = memory::check_size(config.memory_mib, host_memory_bytes())?;
    let kernel = Kernel::open(&config.kernel)?;
    kernel.check_fits(low_ram_end(mem_size))?;
    let cmdline_text = config.cmdline();
    // The PVM token is added once the host is known; the user's text is checked now.
    boot::cmdline(cmdline_text)?;
    let host = Host::open(&config.kvm_path)?;
    if config.vcpus > host.max_vcpus() as u64 {
        return Err(VmError::TooManyVcpus { asked: config.vcpus, max: host.max_vcpus() });
    }

    let mem = memory::create(mem_size)?;
    let vm = host.kvm.create_vm().map_err(kvm_err("create a VM"))?;
    // Intel VMX needs three pages for its real-mode TSS somewhere out of RAM's way.
    vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set the TSS address"))?;
    let irqchip = config.wants_irqchip();
    if irqchip {
        vm.create_irq_chip().map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(kvm_err("create the in-kernel PIT"))?;
    }
    memory::register(&vm, &mem)?;

    let vcpus = (0..config.vcpus)
        .map(|i| vm.create_vcpu(i).map_err(kvm_err("create a vCPU")))
        .collect::<Result<Vec<_>, _>>()?;
    let kind = pvm::detect(&vcpus[0]);
    tracing::debug!(host = kind.name(), "VM created in {:?}", started.elapsed());

    // Devices first: their announcements go on the command line.
    let boot_idle = Idle { wakeup: Arc::new(Wakeup::default()), devices_can_wake: !config.nets.is_empty() };
    let mut mmio = Bus::new();
    let requested =
        Requested { disks: &config.disks, nets: &config.nets, consoles: &config.consoles, notify: config.notify };
    let (device_words, notifiers) = crate::virtio::attach(requested, &mem, &vm, irqchip, &boot_idle.wakeup, &mut mmio)?;
    let loaded = kernel.load(&mem)?;
    let words = std::iter::once(cmdline_text.to_string()).chain(device_words).filter(|w| !w.is_empty());
    let guest_words = words.collect::<Vec<_>>().join(" ");
    let cmdline = boot::cmdline(&pvm::guest_cmdline(kind, &with_tsc_khz(&vcpus[0], &guest_words)))?;
    boot::write(&mem, mem_size, &cmdline, loaded.setup_header)?;
    x86::write_boot_tables(&mem, pvm::page_table_flags(kind))?;
    let cpuid = host.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("read the supported CPUID"))?;
    for (index, vcpu) in vcpus.iter().enumerate() {
        x86::setup_cpuid(vcpu, index as u64, &cpuid)?;
    }
    x86::setup_boot_vcpu(&vcpus[0], 0, loaded.entry)?;

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    if irqchip {
        vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("wire the serial interrupt"))?;
    }
    let mut io = Bus::new();
    io.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(Com1::new(serial_irq, console))))?;
    io.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042)))?;
    io.insert(EXIT_PORT, EXIT_PORT_LEN, Arc::new(Mutex::new(ExitPort)))?;
    io.insert(WAKE_TIMER_PORT, WAKE_TIMER_LEN, Arc::new(Mutex::new(WakeTimer)))?;
    io.insert(CLOCK_PORT, CLOCK_LEN, Arc::new(Mutex::new(WallClock::default())))?;
    io.insert(ENTROPY_PORT, ENTROPY_LEN, Arc::new(Mutex::new(Entropy)))?;
    let buses = Arc::new(Buses { io, mmio });

    // Without an irqchip nothing can send an application processor its
    // start-up IPI, so only the boot vCPU runs; with one, KVM holds the APs
    // until Linux starts them.
    let runnable = if irqchip { vcpus.len() } else { 1 };
    let throttle = cpu_quota.and_then(|q| Throttle::new(q, runnable));
    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = channel();
    let mut threads = Vec::with_capacity(runnable);
    let mut parked = Vec::new();
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        if index < runnable {
            // Devices wake the boot vCPU; the others halt in the irqchip.
            let idle = if index == 0 {
                boot_idle.clone()
            } else {
                Idle { wakeup: Arc::new(Wakeup::default()), devices_can_wake: false }
            };
            let gate = throttle.as_ref().map(|t| t.gate(index));
            let thread = vcpu::spawn(index as u64, vcpu, buses.clone(), stop.clone(), events_tx.clone(), idle, gate);
            match thread {
                Ok(t) => threads.push(t),
                Err(err) => {
                    stop_all(&stop, threads);
                    return Err(VmError::Thread(err));
                }
            }
        } else {
            parked.push(vcpu);
        }
    }
    drop(events_tx);
    // With a quota, the controller holds the vCPU threads until it ends.
    let controller = match throttle.map(|t| quota::Controller::start(t, &mut threads)).transpose() {
        Ok(controller) => controller,
        Err(err) => {
            stop_all(&stop, threads);
            return Err(VmError::Thread(err));
        }
    };
    tracing::info!(
        kernel = %config.kernel.describe(),
        memory_mib = config.memory_mib,
        vcpus = config.vcpus,
        host = kind.name(),
        "VM started in {:?}",
        started.elapsed()
    );

    const REPORTS: &str = "a vCPU thread always reports before it ends";
    let first = match config.timeout {
        Some(limit) => match events.recv_timeout(limit.saturating_sub(started.elapsed())) {
            Ok(first) => Ok(first),
            Err(RecvTimeoutError::Timeout) => Err(VmEnd::TimedOut(limit)),
            Err(RecvTimeoutError::Disconnected) => unreachable!("{REPORTS}"),
        },
        None => Ok(events.recv().expect(REPORTS)),
    };
    let (end, reporter) = match first {
        Ok(first) => {
            let index = first.index;
            (end_of(first, config.memory_mib, &mem), Some(index))
        }
        Err(timed_out) => (timed_out, None),
    };
    stop.store(true, Ordering::Release);
    if let Some(controller) = controller {
        threads = controller.stop();
    }
    for (index, thread) in threads.into_iter().enumerate() {
        // The reporting thread is on its way out: no need to kick it.
        if Some(index as u64) == reporter {
            thread.join();
        } else {
            thread.stop_and_join();
        }
    }
    // The device threads, the vCPUs, then the VM, then guest memory: KVM
    // must let go of the memory first.
    drop(notifiers);
    drop(parked);
    drop(vm);
    drop(mem);
    tracing::info!("VM ended ({end:?}) and torn down {:?} after launch", started.elapsed());
    Ok(end)
}

/// Puts `mvm.tsc_khz=N` before the user's words: the guest's clock needs the
/// TSC frequency, which only the host knows for sure.
fn with_tsc_khz(vcpu: &kvm_ioctls::VcpuFd, cmdline: &str) -> String {
    match vcpu.get_tsc_khz() {
        Ok(khz) if cmdline.is_empty() => format!("mvm.tsc_khz={khz}"),
        Ok(khz) => format!("mvm.tsc_khz={khz} {cmdline}"),
        Err(err) => {
            tracing::warn!("cannot read the guest TSC frequency (KVM_GET_TSC_KHZ): {err}");
            cmdline.to_string()
        }
    }
}

fn stop_all(stop: &AtomicBool, threads: Vec<vcpu::VcpuThread>) {
    stop.store(true, Ordering::Release);
    for thread in threads {
        thread.stop_and_join();
    }
}

/// The kind of KVM at `path`, for `mvm check`.
pub fn host_kind(path: &std::path::Path) -> Result<(HostKind, usize), VmError> {
    let host = Host::open(path)?;
    Ok((host.probe_kind()?, host.max_vcpus()))
}
