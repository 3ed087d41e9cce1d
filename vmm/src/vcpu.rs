//! vCPUs: a pure exit handler and the thread that runs one vCPU.
//!
//! [`handle_exit`] turns one KVM exit into an action using the buses only, so
//! unit tests drive it with made-up exits. [`spawn`] runs a vCPU on its own
//! thread until the guest stops it or the VM asks it to stop.
//!
//! Stopping a running vCPU: the VM sets the shared stop flag, then sends the
//! thread [`kick_signal`] until the thread has ended. The signal makes a
//! KVM_RUN in progress return EINTR. A signal that lands between the
//! thread's check of the flag and its entry into KVM_RUN is lost, and the
//! next one, microseconds later, catches it; this retry is what closes that
//! window, without a signal handler touching the vCPU. A VM with a CPU quota
//! kicks its vCPUs out of KVM_RUN the same way ([`kick_until`]) when its
//! budget is spent, and they park before their next KVM_RUN (quota.rs).

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use mvm_devices::power::{ExitReason, GuestExit};
use mvm_devices::{Bus, VmRequest};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::quota::VcpuGate;

pub struct Buses {
    pub io: Bus,
    pub mmio: Bus,
}

/// Why a vCPU stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    Request(VmRequest),
    /// `hlt` with no deadline armed and nothing else that could wake it.
    Halted,
    TripleFault,
    InternalError,
    FailEntry {
        reason: u64,
    },
    /// The in-kernel irqchip's guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestReportedCrash,
    Unexpected(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    /// Arm (or, with None, cancel) this vCPU's wake deadline.
    SetWake(Option<Duration>),
    /// The vCPU halted: wait for its deadline or another wake-up.
    Halt,
    Stop(StopCause),
}

/// Counts of guest accesses no device claimed: logged for the first few only,
/// since a guest can cause any number of them.
#[derive(Debug, Default)]
pub struct ExitStats {
    pub unclaimed: u64,
}

const UNCLAIMED_LOGGED: u64 = 16;

impl ExitStats {
    fn unclaimed(&mut self, what: &str, addr: u64, len: usize) {
        self.unclaimed += 1;
        if self.unclaimed <= UNCLAIMED_LOGGED {
            tracing::debug!("guest {what} of {len} bytes at {addr:#x}: no device there");
        }
    }
}

pub fn handle_exit(exit: VcpuExit<'_>, buses: &Buses, stats: &mut ExitStats) -> ExitAction {
    let request = |result: Result<Option<VmRequest>, _>, stats: &mut ExitStats, what, addr, len| match result {
        Ok(Some(VmRequest::WakeAfter(after))) => ExitAction::SetWake(after),
        Ok(Some(request)) => ExitAction::Stop(StopCause::Request(request)),
        Ok(None) => ExitAction::Continue,
        Err(_) => {
            stats.unclaimed(what, addr, len);
            ExitAction::Continue
        }
    };
    match exit {
        VcpuExit::IoOut(port, data) => {
            request(buses.io.write(u64::from(port), data), stats, "port write", u64::from(port), data.len())
        }
        VcpuExit::IoIn(port, data) => {
            // An empty ISA bus reads as all ones.
            data.fill(0xff);
            if buses.io.read(u64::from(port), data).is_err() {
                stats.unclaimed("port read", u64::from(port), data.len());
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => request(buses.mmio.write(addr, data), stats, "MMIO write", addr, data.len()),
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            if buses.mmio.read(addr, data).is_err() {
                stats.unclaimed("MMIO read", addr, data.len());
            }
            ExitAction::Continue
        }
        VcpuExit::Hlt => ExitAction::Halt,
        VcpuExit::Shutdown => ExitAction::Stop(StopCause::TripleFault),
        VcpuExit::InternalError => ExitAction::Stop(StopCause::InternalError),
        VcpuExit::FailEntry(reason, _cpu) => ExitAction::Stop(StopCause::FailEntry { reason }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitAction::Stop(StopCause::Request(VmRequest::PowerOff(GuestExit {
                reason: ExitReason::Exit,
                status: 0,
            }))),
            KVM_SYSTEM_EVENT_RESET => ExitAction::Stop(StopCause::Request(VmRequest::Reset)),
            KVM_SYSTEM_EVENT_CRASH => ExitAction::Stop(StopCause::GuestReportedCrash),
            _ => ExitAction::Stop(StopCause::Unexpected("system event")),
        },
        // A signal or an immediate exit: the loop checks why.
        VcpuExit::Intr => ExitAction::Continue,
        other => ExitAction::Stop(StopCause::Unexpected(exit_name(&other))),
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Exception => "exception",
        VcpuExit::Debug(_) => "debug",
        VcpuExit::Hypercall(_) => "hypercall",
        VcpuExit::IrqWindowOpen => "irq window open",
        VcpuExit::Nmi => "NMI",
        VcpuExit::X86Rdmsr(_) => "rdmsr",
        VcpuExit::X86Wrmsr(_) => "wrmsr",
        VcpuExit::MemoryFault { .. } => "memory fault",
        _ => "unknown",
    }
}

/// What a vCPU thread reports when it ends on its own.
#[derive(Debug)]
pub struct VcpuEnd {
    pub index: u64,
    pub cause: EndCause,
}

#[derive(Debug)]
pub enum EndCause {
    Guest {
        cause: StopCause,
        /// The vCPU's state at the stop, read for crashes.
        state: Option<Box<(kvm_regs, kvm_sregs)>>,
        internal_suberror: Option<u32>,
    },
    RunFailed(std::io::Error),
}

pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result =
            register_signal_handler(kick_signal(), on_kick).map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Resumes a halted vCPU: its deadline's end, a device completion or the
/// VM's end notify it. A notification that comes while the vCPU runs is kept
/// for its next halt, so none is lost between the halt exit and the wait.
#[derive(Default)]
pub struct Wakeup {
    pending: Mutex<bool>,
    changed: Condvar,
}

impl Wakeup {
    pub fn notify(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_one();
    }

    /// Blocks until notified or until `deadline` (if any), whichever comes first.
    fn wait_until(&self, deadline: Option<Instant>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while !*pending {
            pending = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    self.changed.wait_timeout(pending, deadline - now).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.changed.wait(pending).unwrap_or_else(|p| p.into_inner()),
            };
        }
        *pending = false;
    }
}

/// What resumes a halted vCPU.
#[derive(Clone)]
pub struct Idle {
    pub wakeup: Arc<Wakeup>,
    /// Whether a device may wake the vCPU (a network device receives at any
    /// time): then a halt with no deadline waits for it rather than ending
    /// the VM as stuck.
    pub devices_can_wake: bool,
}

pub struct VcpuThread {
    pub(crate) handle: JoinHandle<()>,
    pub(crate) wakeup: Arc<Wakeup>,
}

/// The first wait between kicks of a stopping vCPU; it doubles up to
/// [`KICK_INTERVAL_MAX`]. A vCPU in KVM_RUN leaves it within microseconds of
/// the signal, so the first retries come soon.
const KICK_INTERVAL_MIN: Duration = Duration::from_micros(20);
const KICK_INTERVAL_MAX: Duration = Duration::from_millis(1);

/// Sends `thread` [`kick_signal`] until `done()`: the caller has first set
/// what the thread must see (the stop flag, a closed quota gate), and `done`
/// says it has seen it. Retrying is what catches a thread that was between
/// its check and KVM_RUN when a signal came (see the module comment).
///
/// # Safety
///
/// `thread` must be a thread of this process that is neither joined nor
/// detached. One that has ended but is not yet joined is fine: pthread_kill
/// on it is still valid, so the race with its end is harmless.
pub(crate) unsafe fn kick_until(thread: libc::pthread_t, mut done: impl FnMut() -> bool) -> std::io::Result<()> {
    let mut interval = KICK_INTERVAL_MIN;
    while !done() {
        // SAFETY: the caller guarantees `thread` is neither joined nor detached.
        let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(KICK_INTERVAL_MAX);
    }
    Ok(())
}

impl VcpuThread {
    /// Joins a thread that has ended on its own, or is about to: the one
    /// whose report ended the VM.
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }

    /// Wakes the thread if it is halted and kicks it out of KVM_RUN until it
    /// has seen the stop flag (set by the caller), then joins it.
    pub fn stop_and_join(self) {
        self.wakeup.notify();
        // SAFETY: `self.handle` is neither joined (join takes it, below) nor detached.
        if let Err(err) = unsafe { kick_until(self.pthread(), || self.handle.is_finished()) } {
            tracing::warn!("cannot signal a vCPU thread: {err}");
        }
        self.join();
    }

    /// The thread's pthread id, valid until the thread is joined.
    pub(crate) fn pthread(&self) -> libc::pthread_t {
        self.handle.as_pthread_t()
    }
}

pub fn spawn(
    index: u64,
    mut vcpu: VcpuFd,
    buses: Arc<Buses>,
    stop: Arc<AtomicBool>,
    events: Sender<VcpuEnd>,
    idle: Idle,
    quota: Option<VcpuGate>,
) -> std::io::Result<VcpuThread> {
    install_kick_handler()?;
    let wakeup = idle.wakeup.clone();
    let handle = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
        if let Some(cause) = run_loop(&mut vcpu, &buses, &stop, &idle, quota.as_ref()) {
            // The VM may have stopped waiting already; nothing to tell then.
            let _ = events.send(VcpuEnd { index, cause });
        }
    })?;
    Ok(VcpuThread { handle, wakeup })
}

/// Runs until the guest stops the vCPU (Some) or the VM asks it to (None).
fn run_loop(
    vcpu: &mut VcpuFd,
    buses: &Buses,
    stop: &AtomicBool,
    idle: &Idle,
    quota: Option<&VcpuGate>,
) -> Option<EndCause> {
    let mut stats = ExitStats::default();
    let mut deadline = None;
    loop {
        // With a CPU quota: parks here while the VM's budget is spent, and
        // marks the vCPU in the guest until KVM_RUN returns (quota.rs has
        // the races). The stop check comes after, so a parked vCPU released
        // at the VM's end stops at once.
        let in_guest = quota.map(VcpuGate::enter);
        if stop.load(Ordering::Acquire) {
            return None;
        }
        let run = vcpu.run();
        drop(in_guest);
        let action = match run {
            Ok(exit) => handle_exit(exit, buses, &mut stats),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => continue,
            Err(err) => return Some(EndCause::RunFailed(err.into())),
        };
        match action {
            ExitAction::Continue => {}
            ExitAction::SetWake(after) => deadline = after.map(|after| Instant::now() + after),
            ExitAction::Halt => match deadline.take() {
                Some(at) => idle.wakeup.wait_until(Some(at)),
                None if idle.devices_can_wake => idle.wakeup.wait_until(None),
                None => return Some(guest_end(vcpu, StopCause::Halted)),
            },
            ExitAction::Stop(cause) => return Some(guest_end(vcpu, cause)),
        }
    }
}

fn guest_end(vcpu: &mut VcpuFd, cause: StopCause) -> EndCause {
    // Crashes get a register dump; a guest's fault or trap report is in the registers.
    let crashed = !matches!(cause, StopCause::Request(_))
        || matches!(
            cause,
            StopCause::Request(VmRequest::PowerOff(GuestExit { reason: ExitReason::Fault | ExitReason::Trap, .. }))
        );
    let state = crashed.then(|| Some(Box::new((vcpu.get_regs().ok()?, vcpu.get_sregs().ok()?)))).flatten();
    let internal_suberror = (cause == StopCause::InternalError).then(|| {
        // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit, `internal` is the
        // union member KVM filled in.
        unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror }
    });
    EndCause::Guest { cause, state, internal_suberror }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_devices::power::{ExitPort, EXIT_PORT, EXIT_PORT_LEN};
    use mvm_devices::timer::{WakeTimer, WAKE_TIMER_LEN, WAKE_TIMER_PORT};

    fn buses() -> Buses {
        let mut io = Bus::new();
        io.insert(EXIT_PORT, EXIT_PORT_LEN, Arc::new(Mutex::new(ExitPort))).unwrap();
        io.insert(WAKE_TIMER_PORT, WAKE_TIMER_LEN, Arc::new(Mutex::new(WakeTimer))).unwrap();
        Buses { io, mmio: Bus::new() }
    }

    #[test]
    fn wake_timer_write_arms_the_deadline() {
        let data = 2500u32.to_le_bytes();
        let action = handle_exit(VcpuExit::IoOut(0x604, &data), &buses(), &mut ExitStats::default());
        assert_eq!(action, ExitAction::SetWake(Some(Duration::from_micros(2500))));
    }

    #[test]
    fn wakeup_returns_at_the_deadline_or_when_notified() {
        let wakeup = Arc::new(Wakeup::default());
        let start = Instant::now();
        wakeup.wait_until(Some(start + Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        // A notification before the wait is kept for it.
        wakeup.notify();
        let start = Instant::now();
        wakeup.wait_until(Some(start + Duration::from_secs(60)));
        assert!(start.elapsed() < Duration::from_secs(30));
        let notifier = wakeup.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            notifier.notify();
        });
        wakeup.wait_until(None);
        t.join().unwrap();
    }

    #[test]
    fn exit_port_write_stops_with_the_status() {
        let data = [42u8, 0, 0, 0];
        let action = handle_exit(VcpuExit::IoOut(0x600, &data), &buses(), &mut ExitStats::default());
        assert_eq!(
            action,
            ExitAction::Stop(StopCause::Request(VmRequest::PowerOff(GuestExit {
                reason: ExitReason::Exit,
                status: 42
            })))
        );
    }

    #[test]
    fn unclaimed_accesses_continue_and_read_as_empty_bus() {
        let mut stats = ExitStats::default();
        let b = buses();
        assert_eq!(handle_exit(VcpuExit::IoOut(0x80, &[1]), &b, &mut stats), ExitAction::Continue);
        let mut data = [0u8; 2];
        assert_eq!(handle_exit(VcpuExit::IoIn(0x1234, &mut data), &b, &mut stats), ExitAction::Continue);
        assert_eq!(data, [0xff, 0xff]);
        let mut mmio = [0xaau8; 4];
        assert_eq!(handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut mmio), &b, &mut stats), ExitAction::Continue);
        assert_eq!(mmio, [0; 4]);
        assert_eq!(handle_exit(VcpuExit::MmioWrite(0xd000_0000, &[1]), &b, &mut stats), ExitAction::Continue);
        assert_eq!(stats.unclaimed, 4);
    }

    #[test]
    fn fatal_exits_stop() {
        let b = buses();
        let mut s = ExitStats::default();
        assert_eq!(handle_exit(VcpuExit::Shutdown, &b, &mut s), ExitAction::Stop(StopCause::TripleFault));
        assert_eq!(handle_exit(VcpuExit::Hlt, &b, &mut s), ExitAction::Halt);
        assert_eq!(handle_exit(VcpuExit::InternalError, &b, &mut s), ExitAction::Stop(StopCause::InternalError));
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(7, 0), &b, &mut s),
            ExitAction::Stop(StopCause::FailEntry { reason: 7 })
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &b, &mut s),
            ExitAction::Stop(StopCause::Request(VmRequest::Reset))
        );
        assert_eq!(handle_exit(VcpuExit::Intr, &b, &mut s), ExitAction::Continue);
        assert_eq!(handle_exit(VcpuExit::Nmi, &b, &mut s), ExitAction::Stop(StopCause::Unexpected("NMI")));
    }
}
