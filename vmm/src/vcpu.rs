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

/// How long a kicked thread may take to see what it was kicked for. A vCPU
/// in KVM_RUN leaves it within microseconds and one in a device handler
/// (a disk flush on a slow host) within a second or so; a thread still
/// busy after this is stuck (writing console output to a pipe nobody
/// reads, say), and waiting on would hang the VM's end instead of
/// reporting it.
const KICK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("cannot signal the thread")]
    Signal(#[source] std::io::Error),
    #[error("the thread did not respond within {0:?} of the first signal")]
    Unresponsive(Duration),
}

/// Sends `thread` [`kick_signal`] until `done()`, for at most
/// [`KICK_TIMEOUT`]: the caller has first set what the thread must see (the
/// stop flag, a closed quota gate), and `done` says it has seen it.
/// Retrying is what catches a thread that was between its check and
/// KVM_RUN when a signal came (see the module comment).
///
/// # Safety
///
/// `thread` must be a thread of this process that is neither joined nor
/// detached. One that has ended but is not yet joined is fine: pthread_kill
/// on it is still valid, so the race with its end is harmless.
pub(crate) unsafe fn kick_until(thread: libc::pthread_t, done: impl FnMut() -> bool) -> Result<(), KickError> {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { kick_within(thread, KICK_TIMEOUT, done) }
}

/// [`kick_until`], giving up after `limit`.
///
/// # Safety
///
/// As for [`kick_until`].
unsafe fn kick_within(
    thread: libc::pthread_t,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), KickError> {
    let give_up = Instant::now() + limit;
    let mut interval = KICK_INTERVAL_MIN;
    while !done() {
        if Instant::now() >= give_up {
            return Err(KickError::Unresponsive(limit));
        }
        // SAFETY: the caller guarantees `thread` is neither joined nor detached.
        let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
        if rc != 0 {
            return Err(KickError::Signal(std::io::Error::from_raw_os_error(rc)));
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
    /// has seen the stop flag (set by the caller), then joins it. A thread
    /// that does not stop is reported and left to end with the process.
    pub fn stop_and_join(self) {
        if let Err(err) = self.stop_within(KICK_TIMEOUT) {
            tracing::error!("cannot stop a vCPU thread: {err}; it is left running");
        }
    }

    fn stop_within(self, limit: Duration) -> Result<(), KickError> {
        self.wakeup.notify();
        // SAFETY: `self.handle` is neither joined (join takes it, below) nor detached.
        let kicked = unsafe { kick_within(self.pthread(), limit, || self.handle.is_finished()) };
        match kicked {
            // Joining would hang; dropping the handle detaches the thread.
            Err(KickError::Unresponsive(limit)) => return Err(KickError::Unresponsive(limit)),
            // The thread is gone (pthread_kill fails only then), or has ended.
            Err(KickError::Signal(err)) => tracing::warn!("cannot signal a vCPU thread: {err}"),
            Ok(()) => {}
        }
        self.join();
        Ok(())
    }

    /// The thread's pthread id, valid until the thread is joined.
    pub(crate) fn pthread(&self) -> libc::pthread_t {
        self.handle.as_pthread_t()
    }
}

/// What the vCPU thread needs of a vCPU: KVM's, or a scripted one in the
/// unit tests.
pub trait RunVcpu: Send + 'static {
    fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error>;
    /// The registers, for a crash report; None when they cannot be read.
    fn state(&self) -> Option<Box<(kvm_regs, kvm_sregs)>>;
    /// KVM's suberror, read right after a KVM_EXIT_INTERNAL_ERROR exit.
    fn internal_suberror(&mut self) -> u32;
}

impl RunVcpu for VcpuFd {
    fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        VcpuFd::run(self)
    }

    fn state(&self) -> Option<Box<(kvm_regs, kvm_sregs)>> {
        Some(Box::new((self.get_regs().ok()?, self.get_sregs().ok()?)))
    }

    fn internal_suberror(&mut self) -> u32 {
        // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit, `internal` is the
        // union member KVM filled in.
        unsafe { self.get_kvm_run().__bindgen_anon_1.internal.suberror }
    }
}

pub fn spawn<V: RunVcpu>(
    index: u64,
    mut vcpu: V,
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
    vcpu: &mut impl RunVcpu,
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

fn guest_end(vcpu: &mut impl RunVcpu, cause: StopCause) -> EndCause {
    // Crashes get a register dump; a guest's fault or trap report is in the registers.
    let crashed = !matches!(cause, StopCause::Request(_))
        || matches!(
            cause,
            StopCause::Request(VmRequest::PowerOff(GuestExit { reason: ExitReason::Fault | ExitReason::Trap, .. }))
        );
    let state = crashed.then(|| vcpu.state()).flatten();
    let internal_suberror = (cause == StopCause::InternalError).then(|| vcpu.internal_suberror());
    EndCause::Guest { cause, state, internal_suberror }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::within;
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
        // A notification before the wait is kept for it, and only for it.
        wakeup.notify();
        let waiter = wakeup.clone();
        within(Duration::from_secs(5), "a wait with a notification kept for it", move || {
            waiter.wait_until(Some(Instant::now() + Duration::from_secs(60)))
        });
        let start = Instant::now();
        wakeup.wait_until(Some(start + Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20), "a notification was kept for two waits");
        let notifier = wakeup.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            notifier.notify();
        });
        within(Duration::from_secs(5), "a wait until notified", move || wakeup.wait_until(None));
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
        assert_eq!(handle_exit(VcpuExit::Intr, &b, &mut s), ExitAction::Continue);
        assert_eq!(handle_exit(VcpuExit::Nmi, &b, &mut s), ExitAction::Stop(StopCause::Unexpected("NMI")));
    }

    #[test]
    fn system_events_stop_with_their_meaning() {
        let b = buses();
        let mut s = ExitStats::default();
        let mut event = |kind| handle_exit(VcpuExit::SystemEvent(kind, &[]), &b, &mut s);
        let power_off = VmRequest::PowerOff(GuestExit { reason: ExitReason::Exit, status: 0 });
        assert_eq!(event(KVM_SYSTEM_EVENT_SHUTDOWN), ExitAction::Stop(StopCause::Request(power_off)));
        assert_eq!(event(KVM_SYSTEM_EVENT_RESET), ExitAction::Stop(StopCause::Request(VmRequest::Reset)));
        assert_eq!(event(KVM_SYSTEM_EVENT_CRASH), ExitAction::Stop(StopCause::GuestReportedCrash));
        assert_eq!(event(0x1234), ExitAction::Stop(StopCause::Unexpected("system event")));
    }

    #[test]
    fn unexpected_exits_are_named() {
        let b = buses();
        let mut s = ExitStats::default();
        let (mut ret, mut error) = (0u64, 0u8);
        let debug = kvm_bindings::kvm_debug_exit_arch::default();
        let reason = kvm_ioctls::MsrExitReason::Unknown;
        let hypercall = kvm_ioctls::HypercallExit { nr: 0, args: [0; 6], ret: &mut ret, longmode: 1 };
        let exits = [
            (VcpuExit::Exception, "exception"),
            (VcpuExit::Debug(debug), "debug"),
            (VcpuExit::Hypercall(hypercall), "hypercall"),
            (VcpuExit::IrqWindowOpen, "irq window open"),
            (
                VcpuExit::X86Rdmsr(kvm_ioctls::ReadMsrExit { error: &mut error, reason, index: 0, data: &mut 0 }),
                "rdmsr",
            ),
            (VcpuExit::MemoryFault { flags: 0, gpa: 0, size: 0 }, "memory fault"),
            (VcpuExit::Watchdog, "unknown"),
        ];
        for (exit, name) in exits {
            assert_eq!(handle_exit(exit, &b, &mut s), ExitAction::Stop(StopCause::Unexpected(name)));
        }
        let mut error = 0u8;
        let wrmsr = VcpuExit::X86Wrmsr(kvm_ioctls::WriteMsrExit { error: &mut error, reason, index: 0, data: 0 });
        assert_eq!(handle_exit(wrmsr, &b, &mut s), ExitAction::Stop(StopCause::Unexpected("wrmsr")));
    }

    /// The kick must not take a signal a user or a terminal sends (SIGHUP,
    /// SIGTERM...): those would then no longer end mvm.
    #[test]
    fn the_kick_is_a_real_time_signal() {
        assert!((libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&kick_signal()), "{}", kick_signal());
    }

    /// One step of a [`Scripted`] vCPU's KVM_RUN.
    enum Step {
        Out(u64, Vec<u8>),
        Exit(fn() -> VcpuExit<'static>),
        Errno(i32),
    }

    /// A vCPU that plays a script of exits, then, like a guest that never
    /// exits, stays in "KVM_RUN" until a signal. It records when each run
    /// began and says when it is dropped (its thread has ended).
    struct Scripted {
        steps: std::collections::VecDeque<Step>,
        current: Option<Step>,
        runs: Arc<Mutex<Vec<Instant>>>,
        dropped: Arc<AtomicBool>,
    }

    const SUBERROR: u32 = 3;
    const RIP: u64 = 0x20_1234;

    impl Scripted {
        fn new(steps: Vec<Step>) -> Self {
            Scripted { steps: steps.into(), current: None, runs: Arc::default(), dropped: Arc::default() }
        }
    }

    impl RunVcpu for Scripted {
        fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
            self.runs.lock().unwrap().push(Instant::now());
            self.current = self.steps.pop_front();
            match &self.current {
                Some(Step::Out(port, data)) => Ok(VcpuExit::IoOut(*port as u16, data)),
                Some(Step::Exit(exit)) => Ok(exit()),
                Some(Step::Errno(errno)) => Err(kvm_ioctls::Error::new(*errno)),
                None => {
                    // SAFETY: pause has no preconditions; it returns at the next signal.
                    unsafe { libc::pause() };
                    Err(kvm_ioctls::Error::new(libc::EINTR))
                }
            }
        }

        fn state(&self) -> Option<Box<(kvm_regs, kvm_sregs)>> {
            Some(Box::new((kvm_regs { rip: RIP, ..Default::default() }, kvm_sregs::default())))
        }

        fn internal_suberror(&mut self) -> u32 {
            SUBERROR
        }
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn exit_with(status: u8) -> Step {
        Step::Out(EXIT_PORT, u32::from(status).to_le_bytes().to_vec())
    }

    fn power_off(reason: ExitReason, status: u8) -> StopCause {
        StopCause::Request(VmRequest::PowerOff(GuestExit { reason, status }))
    }

    fn idle(devices_can_wake: bool) -> Idle {
        Idle { wakeup: Arc::default(), devices_can_wake }
    }

    /// Runs the vCPU loop over `steps` to its end; returns the end and the
    /// times each KVM_RUN began.
    fn run_script(steps: Vec<Step>, idle: Idle) -> (Option<EndCause>, Vec<Instant>) {
        within(Duration::from_secs(10), "the vCPU loop", move || {
            let mut vcpu = Scripted::new(steps);
            let end = run_loop(&mut vcpu, &buses(), &AtomicBool::new(false), &idle, None);
            let runs = vcpu.runs.lock().unwrap().clone();
            (end, runs)
        })
    }

    /// How the guest stopped the vCPU, the RIP read at the stop, the suberror.
    fn stop_cause(end: Option<EndCause>) -> (StopCause, Option<u64>, Option<u32>) {
        match end {
            Some(EndCause::Guest { cause, state, internal_suberror }) => {
                (cause, state.map(|s| s.0.rip), internal_suberror)
            }
            other => panic!("expected the guest to stop the vCPU, got {other:?}"),
        }
    }

    #[test]
    fn interrupted_runs_are_retried() {
        let steps = vec![Step::Errno(libc::EINTR), Step::Errno(libc::EAGAIN), exit_with(5)];
        let (end, runs) = run_script(steps, idle(false));
        assert_eq!(stop_cause(end).0, power_off(ExitReason::Exit, 5));
        assert_eq!(runs.len(), 3);
    }

    #[test]
    fn a_failed_run_ends_the_vcpu() {
        let (end, _) = run_script(vec![Step::Errno(libc::EFAULT), exit_with(5)], idle(false));
        match end {
            Some(EndCause::RunFailed(err)) => assert_eq!(err.raw_os_error(), Some(libc::EFAULT)),
            other => panic!("expected RunFailed, got {other:?}"),
        }
    }

    /// A halt waits for the deadline the guest armed, and only once: the
    /// next halt with none armed ends the VM.
    #[test]
    fn a_halt_waits_for_the_armed_deadline() {
        let arm = Step::Out(WAKE_TIMER_PORT, 30_000u32.to_le_bytes().to_vec());
        let steps = vec![arm, Step::Exit(|| VcpuExit::Hlt), Step::Exit(|| VcpuExit::Hlt)];
        let (end, runs) = run_script(steps, idle(false));
        let (cause, rip, _) = stop_cause(end);
        assert_eq!(cause, StopCause::Halted);
        assert_eq!(rip, Some(RIP), "a halt for good is a crash, with the registers");
        assert_eq!(runs.len(), 3);
        let halted = runs[2] - runs[1];
        assert!(halted >= Duration::from_millis(30), "resumed {halted:?} after a halt with a 30 ms deadline");
    }

    /// With a device that may wake it, a halt with no deadline waits for
    /// the device rather than ending the VM.
    #[test]
    fn a_halt_waits_for_a_device_that_can_wake_it() {
        let idle = idle(true);
        let wakeup = idle.wakeup.clone();
        let notifier = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            wakeup.notify();
        });
        let (end, runs) = run_script(vec![Step::Exit(|| VcpuExit::Hlt), exit_with(0)], idle);
        notifier.join().unwrap();
        assert_eq!(stop_cause(end).0, power_off(ExitReason::Exit, 0));
        assert!(runs[1] - runs[0] >= Duration::from_millis(20), "resumed before the device woke it");
    }

    /// Crashes and a guest's fault or trap report carry the registers; a
    /// guest's own exit does not. Only an internal error has a suberror.
    #[test]
    fn crashes_keep_the_registers() {
        let cases: [(Step, StopCause, bool); 6] = [
            (Step::Exit(|| VcpuExit::Shutdown), StopCause::TripleFault, true),
            (Step::Exit(|| VcpuExit::InternalError), StopCause::InternalError, true),
            (exit_with(3), power_off(ExitReason::Exit, 3), false),
            (Step::Out(EXIT_PORT, vec![101, 1, 0, 0]), power_off(ExitReason::Panic, 101), false),
            (Step::Out(EXIT_PORT, vec![14, 2, 0, 0]), power_off(ExitReason::Fault, 14), true),
            (Step::Out(EXIT_PORT, vec![1, 4, 0, 0]), power_off(ExitReason::Trap, 1), true),
        ];
        for (step, expected, with_state) in cases {
            let (cause, rip, suberror) = stop_cause(run_script(vec![step], idle(false)).0);
            assert_eq!(rip.is_some(), with_state, "{cause:?}");
            let expected_suberror = (expected == StopCause::InternalError).then_some(SUBERROR);
            assert_eq!(suberror, expected_suberror, "{cause:?}");
            assert_eq!(cause, expected);
        }
    }

    /// A vCPU thread "in the guest" (blocked until a signal) stops when the
    /// VM asks, and reports nothing: the VM ended it.
    #[test]
    fn a_running_vcpu_stops_when_asked() {
        let vcpu = Scripted::new(Vec::new());
        let (runs, dropped) = (vcpu.runs.clone(), vcpu.dropped.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = std::sync::mpsc::channel();
        let thread = spawn(0, vcpu, Arc::new(buses()), stop.clone(), events_tx, idle(false), None).unwrap();
        let waited = Instant::now();
        while runs.lock().unwrap().is_empty() {
            assert!(waited.elapsed() < Duration::from_secs(10), "the vCPU thread never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Release);
        within(Duration::from_secs(10), "stopping the vCPU thread", move || thread.stop_and_join());
        assert!(dropped.load(Ordering::SeqCst), "the vCPU thread had not ended");
        assert!(events.try_recv().is_err(), "a vCPU the VM stopped reported an end of its own");
    }

    /// KVM's own vCPU gives the crash report its registers and reads the
    /// suberror where KVM leaves it.
    #[test]
    #[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
    fn a_kvm_vcpu_reports_its_state() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm; set MVM_SKIP_KVM=1 if that is deliberate");
        let mut vcpu = kvm.create_vm().unwrap().create_vcpu(0).unwrap();
        vcpu.set_regs(&kvm_regs { rip: RIP, rflags: 2, ..Default::default() }).unwrap();
        let state = RunVcpu::state(&vcpu).expect("registers");
        assert_eq!(state.0.rip, RIP);
        assert_eq!(state.1.cr0, vcpu.get_sregs().unwrap().cr0);
        // Where KVM leaves it at a KVM_EXIT_INTERNAL_ERROR exit.
        vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror = SUBERROR;
        assert_eq!(vcpu.internal_suberror(), SUBERROR);
    }

    /// Waits for `count` kicks on the calling thread.
    fn count_kicks(count: Arc<std::sync::atomic::AtomicU64>) {
        loop {
            // SAFETY: pause has no preconditions; it returns after a signal handler ran.
            unsafe { libc::pause() };
            count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A thread that keeps missing its kick (one entering KVM_RUN just
    /// after each signal) gets another at least every millisecond or so:
    /// the quota relies on kicks landing promptly.
    #[test]
    fn kicks_are_repeated_promptly() {
        install_kick_handler().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = std::thread::spawn({
            let count = count.clone();
            move || count_kicks(count)
        });
        let started = Instant::now();
        // SAFETY: `thread` is neither joined nor detached until the end of the test.
        unsafe { kick_within(thread.as_pthread_t(), Duration::from_secs(10), || count.load(Ordering::SeqCst) >= 12) }
            .unwrap();
        // 12 kicks at most 1 ms apart take ~7 ms; generous for a busy host.
        assert!(started.elapsed() < Duration::from_secs(1), "12 kicks took {:?}", started.elapsed());
        std::mem::forget(thread);
    }

    /// A thread that never sees its kick is given up on after the limit,
    /// with an error, instead of hanging whoever waits for it.
    #[test]
    fn a_stuck_vcpu_thread_is_given_up_on() {
        install_kick_handler().unwrap();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        // Blocked where a signal does not help: std retries the wait.
        let handle = std::thread::spawn(move || stuck.recv().unwrap());
        let thread = VcpuThread { handle, wakeup: Arc::default() };
        let started = Instant::now();
        let result = within(Duration::from_secs(10), "giving up on a stuck thread", move || {
            thread.stop_within(Duration::from_millis(200))
        });
        assert!(
            matches!(result, Err(KickError::Unresponsive(limit)) if limit == Duration::from_millis(200)),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        release.send(()).unwrap();
    }
}
