//! CPU quota: a VM may use `quota` host cores' worth of CPU time (0.25 is a
//! quarter of one core, across all its vCPUs), enforced by the VMM's own
//! vCPU-thread throttle, which works on any host (this project's machines
//! have a cgroup v1 cpu controller and no v2 `cpu.max`; others the reverse).
//!
//! - Period: [`PERIOD`], 20 ms. In each period the VM may use
//!   `quota × PERIOD` of CPU time (its [`Budget`]); once its vCPU threads
//!   have used that, they are kicked out of KVM_RUN and parked until the next
//!   period starts.
//! - Accounting: each vCPU thread's own CPU clock (`pthread_getcpuclockid`,
//!   read by the controller with `clock_gettime`), not wall time around
//!   KVM_RUN. The CPU clock charges exactly what the host scheduler gives
//!   the thread: nothing while it waits for a host CPU on a busy host, nothing
//!   for a Linux guest halted inside KVM_RUN by the in-kernel irqchip (wall
//!   time around KVM_RUN would charge both), and the VMM's own handling of
//!   the vCPU's exits (device emulation on its thread), which is CPU the VM
//!   caused. It is also what `wait4`'s rusage reports for the process. The
//!   controller's own CPU time is charged too (about 0.5% of a core at a
//!   quota of 0.1 on a PVM host, where a wake-up costs ~30 µs), so the
//!   process as a whole keeps to the quota.
//! - Overruns: the kick takes microseconds and the controller wakes a little
//!   late, so a period can overrun its budget, or the gate closes a little
//!   early; the difference is settled in the next period, which keeps the
//!   long-run share at the quota. Budget left unused by a guest that did not
//!   want it is lost, so a guest that slept gets no burst afterwards.
//! - One controller thread per VM ([`Controller`]), only when a quota is set
//!   and could bind (a quota of at least the number of vCPU threads cannot:
//!   each thread uses at most one core). It owns the VM's vCPU threads while
//!   it runs, since it signals them by pthread id: none can be joined before
//!   it has ended. Ending it opens the gate for good. While no vCPU is in the
//!   guest it sleeps until one enters, so an idle VM costs it no wake-ups.
//! - Halted vCPUs wait on their `Wakeup` outside KVM_RUN and use no CPU: the
//!   throttle leaves them be; they park at the gate only if they wake while
//!   it is closed.
//!
//! Races, and what closes each:
//! - Kick against entering KVM_RUN: a vCPU marks itself in the guest, then
//!   checks the gate, then enters KVM_RUN; the controller closes the gate,
//!   then kicks every vCPU marked in the guest until it is no longer marked.
//!   Both sides store then load with SeqCst, so either the vCPU sees the
//!   closed gate or the controller sees the mark. A signal sent after the
//!   vCPU's check but before its ioctl is lost (the handler does nothing);
//!   the kick is retried until the mark is cleared, which happens only once
//!   KVM_RUN has returned, so a later signal catches it in KVM_RUN.
//! - Park against stop: a vCPU parked at a closed gate is not in KVM_RUN and
//!   does not see the stop flag or the stop kicks. The VM ends the controller
//!   before it stops the vCPUs ([`Controller::stop`]), and the controller's
//!   end opens the gate for good (under the gate's mutex, so a vCPU between
//!   its check of the gate and its wait cannot miss it); a vCPU checks the
//!   stop flag right after the gate, so it stops at once.

use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::{self, VcpuThread};

/// The throttle's period. Short enough that a throttled guest stalls briefly
/// (at a quota of 0.1 it runs 2 ms and waits 18 ms, where the 100 ms of
/// CFS bandwidth control's default would make 90 ms stalls, long for a
/// network peer); long enough that enforcing it is cheap and precise. Per
/// period a busy VM costs about three controller wake-ups (~30 µs each on a
/// PVM host, measured: ~0.5% of a core, charged to the VM) and one forced
/// exit per running vCPU, and the kick's latency (~50 µs, more on a loaded
/// host) is small against the smallest budgets people ask for (2 ms at
/// 0.1); the difference is settled in the next period anyway. A 5 ms period
/// would cost four times as much for the same precision.
pub const PERIOD: Duration = Duration::from_millis(20);

/// The controller never sleeps less than this while watching a budget run
/// out, closes the gate once less than this is left rather than look again,
/// and does not open it for a period with less than this to spend: each
/// look costs a wake-up (~30 µs on a PVM host). Either way the difference
/// is settled in the next period (see [`Budget::end_period`]).
const SLACK: Duration = Duration::from_micros(100);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("--cpu-quota must be more than 0 host cores (0.25 is a quarter of one core), not {0}")]
    NotPositive(f64),
    #[error("--cpu-quota {asked} is more than this host's {cpus} CPUs")]
    MoreThanHost { asked: f64, cpus: usize },
}

/// A checked CPU quota, in host cores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota(f64);

impl Quota {
    /// More than 0 and at most `host_cpus` cores.
    pub fn new(cores: f64, host_cpus: usize) -> Result<Quota, QuotaError> {
        if cores.is_nan() || cores <= 0.0 {
            return Err(QuotaError::NotPositive(cores));
        }
        if cores > host_cpus as f64 {
            return Err(QuotaError::MoreThanHost { asked: cores, cpus: host_cpus });
        }
        Ok(Quota(cores))
    }
}

/// The CPUs this process may run on.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU time per period, in nanoseconds, with what past periods overran.
#[derive(Debug)]
struct Budget {
    per_period: i64,
    debt: i64,
}

impl Budget {
    fn new(quota: Quota, period: Duration) -> Budget {
        Budget { per_period: (quota.0 * period.as_nanos() as f64) as i64, debt: 0 }
    }

    /// What the VM may use in the period that starts now; 0 or less keeps
    /// its vCPUs parked for the whole period.
    fn allowance(&self) -> i64 {
        self.per_period - self.debt
    }

    /// Ends a period in which the VM used `used`. An overrun is owed to the
    /// next periods. Time left unused is lost, unless the VM was `throttled`:
    /// it wanted the time, and the gate closed a little early.
    fn end_period(&mut self, used: i64, throttled: bool) {
        let owed = used - self.allowance();
        self.debt = if throttled { owed } else { owed.max(0) };
    }
}

/// The gate the vCPU threads of one VM pass before each KVM_RUN, the marks
/// that say which of them are in (or about to enter) the guest, and what
/// wakes the controller.
pub struct Throttle {
    quota: Quota,
    closed: AtomicBool,
    in_guest: Box<[AtomicBool]>,
    /// Set while the controller sleeps until a vCPU enters the guest.
    controller_idle: AtomicBool,
    /// Whether the controller has been told to end.
    ended: Mutex<bool>,
    /// vCPUs wait here for the gate to open.
    opened: Condvar,
    /// The controller waits here: its end, or a vCPU entering the guest.
    controller_wake: Condvar,
}

impl Throttle {
    /// A throttle for `vcpus` vCPU threads, or None when the quota cannot
    /// bind: a thread uses at most one core.
    pub fn new(quota: Quota, vcpus: usize) -> Option<Arc<Throttle>> {
        if quota.0 >= vcpus as f64 {
            tracing::debug!("CPU quota of {} cores for {vcpus} vCPU threads: nothing to throttle", quota.0);
            return None;
        }
        Some(Arc::new(Throttle {
            quota,
            closed: AtomicBool::new(false),
            in_guest: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            controller_idle: AtomicBool::new(false),
            ended: Mutex::new(false),
            opened: Condvar::new(),
            controller_wake: Condvar::new(),
        }))
    }

    /// The gate of vCPU thread `index` (0 to `vcpus` - 1, in spawn order).
    pub fn gate(self: &Arc<Self>, index: usize) -> VcpuGate {
        assert!(index < self.in_guest.len(), "vCPU {index} has no gate");
        VcpuGate { throttle: self.clone(), index }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn open(&self) {
        // Under the lock: a vCPU checks `closed` under it before it waits,
        // so it cannot miss this.
        let _guard = self.lock();
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn anyone_in_guest(&self) -> bool {
        self.in_guest.iter().any(|mark| mark.load(Ordering::SeqCst))
    }

    /// Tells the controller to end, waking it.
    fn end(&self) {
        *self.lock() = true;
        self.controller_wake.notify_all();
    }

    /// The controller's sleep: until `deadline` (None: no limit) or, with
    /// `until_entry`, until a vCPU is in the guest. True when told to end.
    ///
    /// Race with a vCPU entering the guest: the controller sets
    /// `controller_idle` then looks at the marks; a vCPU sets its mark then
    /// looks at `controller_idle` (both SeqCst), so either the controller
    /// sees the mark or the vCPU sees the flag and notifies, under the lock
    /// that the controller holds from its look until it waits.
    fn sleep(&self, deadline: Option<Instant>, until_entry: bool) -> bool {
        let mut ended = self.lock();
        self.controller_idle.store(until_entry, Ordering::SeqCst);
        let ended = loop {
            if *ended {
                break true;
            }
            if until_entry && self.anyone_in_guest() {
                break false;
            }
            ended = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break false;
                    }
                    self.controller_wake.wait_timeout(ended, deadline - now).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.controller_wake.wait(ended).unwrap_or_else(|p| p.into_inner()),
            };
        };
        self.controller_idle.store(false, Ordering::SeqCst);
        ended
    }
}

/// One vCPU thread's side of the [`Throttle`].
pub struct VcpuGate {
    throttle: Arc<Throttle>,
    index: usize,
}

impl VcpuGate {
    /// Waits while the VM's budget is spent, then marks this vCPU as in the
    /// guest until the returned guard drops, which the vCPU thread does as
    /// soon as KVM_RUN returns. The caller checks its stop flag after this
    /// (see the module comment for both races).
    pub fn enter(&self) -> InGuest<'_> {
        let throttle = &*self.throttle;
        let mark = &throttle.in_guest[self.index];
        loop {
            mark.store(true, Ordering::SeqCst);
            if !throttle.closed.load(Ordering::SeqCst) {
                if throttle.controller_idle.load(Ordering::SeqCst) {
                    let _guard = throttle.lock();
                    throttle.controller_wake.notify_all();
                }
                return InGuest(mark);
            }
            mark.store(false, Ordering::SeqCst);
            let mut guard = throttle.lock();
            while throttle.closed.load(Ordering::SeqCst) {
                guard = throttle.opened.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// Says that a vCPU is in KVM_RUN or about to enter it; cleared on drop.
pub struct InGuest<'a>(&'a AtomicBool);

impl Drop for InGuest<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A vCPU thread as the controller sees it.
struct Watched {
    pthread: libc::pthread_t,
    /// None when the thread had ended before the controller started.
    clock: Option<libc::clockid_t>,
    /// Its CPU time at the last reading, kept once the thread has ended.
    cpu_ns: i64,
}

impl Watched {
    fn new(pthread: libc::pthread_t) -> Watched {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `pthread` is that of a VcpuThread borrowed by
        // Controller::start, so it is neither joined nor detached; `clock` is
        // a valid out pointer. glibc refuses (ESRCH) a thread that has ended.
        let rc = unsafe { libc::pthread_getcpuclockid(pthread, &mut clock) };
        Watched { pthread, clock: (rc == 0).then_some(clock), cpu_ns: 0 }
    }

    fn cpu_ns(&mut self) -> i64 {
        // A thread that has ended fails the reading (EINVAL), and its last
        // reading stands.
        if let Some(now) = self.clock.and_then(cpu_ns) {
            self.cpu_ns = now;
        }
        self.cpu_ns
    }
}

fn cpu_ns(clock: libc::clockid_t) -> Option<i64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid out pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    (rc == 0).then(|| now.tv_sec * 1_000_000_000 + now.tv_nsec)
}

/// The CPU time charged to the VM: its vCPU threads' and the controller's
/// own (the caller), since enforcing the quota is CPU the VM causes too.
fn total_cpu_ns(vcpus: &mut [Watched]) -> i64 {
    let own = cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0);
    own + vcpus.iter_mut().map(Watched::cpu_ns).sum::<i64>()
}

/// What the controller sees of the VM and of time, and how it waits and
/// kicks: the real vCPU threads and clocks ([`Threads`]), or, in the unit
/// tests, a simulated VM on an exact clock, so that the accounting can be
/// checked to the nanosecond whatever else the test machine is doing.
trait Vm {
    fn now(&self) -> Instant;
    /// The CPU time charged to the VM so far (see [`total_cpu_ns`]).
    fn cpu_ns(&mut self) -> i64;
    /// [`Throttle::sleep`].
    fn sleep(&mut self, throttle: &Throttle, deadline: Option<Instant>, until_entry: bool) -> bool;
    /// Kicks every vCPU in the guest until it has left KVM_RUN; with the
    /// gate closed, each then parks before its next entry.
    fn kick_out(&mut self, throttle: &Throttle);
}

/// The VM's vCPU threads, as the controller thread sees them.
struct Threads(Vec<Watched>);

impl Vm for Threads {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn cpu_ns(&mut self) -> i64 {
        total_cpu_ns(&mut self.0)
    }

    fn sleep(&mut self, throttle: &Throttle, deadline: Option<Instant>, until_entry: bool) -> bool {
        throttle.sleep(deadline, until_entry)
    }

    fn kick_out(&mut self, throttle: &Throttle) {
        for (vcpu, mark) in self.0.iter().zip(throttle.in_guest.iter()) {
            // SAFETY: the Controller owns the VcpuThread behind `vcpu.pthread`
            // and joins this thread before it gives that one back, so it is not
            // joined or detached yet.
            let kicked = unsafe { vcpu::kick_until(vcpu.pthread, || !mark.load(Ordering::SeqCst)) };
            if let Err(err) = kicked {
                tracing::warn!("cannot signal a vCPU thread to throttle it: {err}");
            }
        }
    }
}

/// The thread that enforces a VM's quota. It holds the VM's vCPU threads
/// while it runs: it signals them by pthread id, which is sound only while
/// none of them has been joined, and [`Controller::stop`] (or drop) ends it
/// before it hands them back.
pub struct Controller {
    throttle: Arc<Throttle>,
    handle: Option<JoinHandle<()>>,
    threads: Vec<VcpuThread>,
}

impl Controller {
    /// Takes the vCPU threads from `threads` (in the order of their gates)
    /// and starts controlling them. On error `threads` is left as it was.
    pub fn start(throttle: Arc<Throttle>, threads: &mut Vec<VcpuThread>) -> io::Result<Controller> {
        assert_eq!(threads.len(), throttle.in_guest.len(), "one gate per vCPU thread");
        vcpu::install_kick_handler()?;
        let watched = Threads(threads.iter().map(|t| Watched::new(t.pthread())).collect());
        let handle = std::thread::Builder::new().name("vcpu-quota".into()).spawn({
            let throttle = throttle.clone();
            move || control(&throttle, watched)
        })?;
        tracing::debug!(
            "CPU quota of {} cores for {} vCPU threads: {} µs every {:?}",
            throttle.quota.0,
            threads.len(),
            Budget::new(throttle.quota, PERIOD).per_period / 1000,
            PERIOD
        );
        Ok(Controller { throttle, handle: Some(handle), threads: mem::take(threads) })
    }

    /// Ends the controller, opens the gate for good, and gives the vCPU
    /// threads back. The caller sets the VM's stop flag first, so that
    /// parked vCPUs stop as soon as they pass the gate.
    pub fn stop(mut self) -> Vec<VcpuThread> {
        self.end();
        mem::take(&mut self.threads)
    }

    fn end(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.throttle.end();
            if handle.join().is_err() {
                tracing::error!("the CPU quota thread panicked");
            }
        }
        // After the join: nothing closes the gate again.
        self.throttle.open();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Before `threads` drops (detaching any left): see the type's comment.
        self.end();
    }
}

/// The controller thread: one period after another until told to end.
fn control(throttle: &Throttle, mut vm: impl Vm) {
    let vcpus = throttle.in_guest.len() as i64;
    let mut budget = Budget::new(throttle.quota, PERIOD);
    let mut period_start = vm.now();
    let mut cpu_at_start = vm.cpu_ns();
    loop {
        let period_end = period_start + PERIOD;
        let allowance = budget.allowance();
        // Less than SLACK would close the gate again at once: what is left
        // is owed to the VM instead (the period counts as throttled).
        let open = allowance >= SLACK.as_nanos() as i64;
        // vCPUs released from the gate are on their way into the guest: not idle.
        let mut releasing = open && throttle.closed.load(Ordering::SeqCst);
        if open {
            throttle.open();
        }
        // Watch the budget run out: sleep until the earliest moment it could
        // (every vCPU running flat out), look again, and close the gate once
        // (almost) nothing is left.
        let mut throttled = false;
        loop {
            let left = allowance - (vm.cpu_ns() - cpu_at_start);
            if left < SLACK.as_nanos() as i64 {
                throttle.close();
                vm.kick_out(throttle);
                throttled = true;
                break;
            }
            let now = vm.now();
            if now >= period_end {
                break;
            }
            if !mem::take(&mut releasing) && !throttle.anyone_in_guest() {
                // Idle (halted vCPUs, the gate open): nothing to watch until
                // a vCPU enters the guest, however long that takes, so an
                // idle VM costs no wake-ups. What a vCPU does meanwhile
                // outside the guest (exit handling) is charged when it does.
                // (With the in-kernel irqchip a halted vCPU waits inside
                // KVM_RUN: it looks busy here, and is simply watched.)
                if vm.sleep(throttle, None, true) {
                    return;
                }
                continue;
            }
            let step = Duration::from_nanos((left / vcpus) as u64).max(SLACK);
            if vm.sleep(throttle, Some((now + step).min(period_end)), false) {
                return;
            }
        }
        if vm.sleep(throttle, Some(period_end), false) {
            return;
        }
        let cpu_now = vm.cpu_ns();
        budget.end_period(cpu_now - cpu_at_start, throttled);
        cpu_at_start = cpu_now;
        // After an idle sleep, or when the controller fell behind (a starved
        // host), a new period starts now rather than catching up with a
        // burst of short ones.
        let now = vm.now();
        period_start = if now >= period_end + PERIOD { now } else { period_end };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::within;
    use std::ops::Range;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn quotas_are_checked_against_the_host() {
        assert_eq!(Quota::new(0.25, 1).unwrap(), Quota(0.25));
        assert_eq!(Quota::new(2.0, 2).unwrap(), Quota(2.0));
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(matches!(Quota::new(bad, 4), Err(QuotaError::NotPositive(_))), "{bad}");
        }
        for bad in [2.5, f64::INFINITY] {
            assert!(matches!(Quota::new(bad, 2), Err(QuotaError::MoreThanHost { cpus: 2, .. })), "{bad}");
        }
        assert_eq!(Quota::new(3.0, 2).unwrap_err().to_string(), "--cpu-quota 3 is more than this host's 2 CPUs");
    }

    /// The CPUs in this process's affinity mask, counted independently of
    /// the standard library.
    #[test]
    fn the_host_has_the_cpus_this_process_may_run_on() {
        // SAFETY: an all-zero cpu_set_t is an empty set.
        let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        assert_eq!(unsafe { libc::sched_getaffinity(0, mem::size_of_val(&set), &mut set) }, 0);
        // SAFETY: `set` was filled by sched_getaffinity.
        let allowed = (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).count();
        assert_eq!(host_cpus(), allowed);
    }

    #[test]
    fn overruns_are_owed_and_unused_time_is_lost() {
        let mut budget = Budget::new(Quota(0.25), PERIOD);
        assert_eq!(budget.allowance(), 5_000_000);
        budget.end_period(5_300_000, true);
        assert_eq!(budget.allowance(), 4_700_000);
        // Throttled a little early: owed to the VM.
        budget.end_period(4_600_000, true);
        assert_eq!(budget.allowance(), 5_100_000);
        // Idle: nothing saved up.
        budget.end_period(0, false);
        assert_eq!(budget.allowance(), 5_000_000);
        // An overrun of more than a period's budget parks the VM for whole
        // periods until it is paid off.
        budget.end_period(12_000_000, true);
        assert_eq!(budget.allowance(), -2_000_000);
        budget.end_period(0, true);
        assert_eq!(budget.allowance(), 3_000_000);
    }

    #[test]
    fn no_throttle_where_the_quota_cannot_bind() {
        assert!(Throttle::new(Quota(1.0), 1).is_none());
        assert!(Throttle::new(Quota(1.5), 2).is_some());
    }

    /// A clock read through `cpu_ns` agrees with the same clock read here.
    #[test]
    fn clock_readings_are_in_nanoseconds() {
        let read = || {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `now` is a valid out pointer.
            assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) }, 0);
            Duration::new(now.tv_sec as u64, now.tv_nsec as u32).as_nanos() as i64
        };
        let before = read();
        let reading = cpu_ns(libc::CLOCK_MONOTONIC).unwrap();
        let after = read();
        assert!(before > 1_000_000_000, "the clock has run for less than a second: {before} ns");
        assert!((before..=after).contains(&reading), "{reading} ns read between {before} and {after}");
    }

    #[test]
    fn a_vcpu_is_in_the_guest_only_while_it_holds_its_mark() {
        within(Duration::from_secs(3), "entering an open gate", || {
            let throttle = Throttle::new(Quota(0.5), 2).unwrap();
            let gate = throttle.gate(1);
            assert!(!throttle.anyone_in_guest());
            let in_guest = gate.enter();
            assert!(throttle.anyone_in_guest());
            drop(in_guest);
            assert!(!throttle.anyone_in_guest());
        });
    }

    /// The controller's timed sleep lasts until its deadline even while a
    /// vCPU is in the guest; its sleep until entry ends when one enters.
    #[test]
    fn the_controller_sleeps_until_its_deadline_or_an_entry() {
        within(Duration::from_secs(5), "the controller's sleeps", || {
            let throttle = Throttle::new(Quota(0.5), 2).unwrap();
            let (gate0, gate1) = (throttle.gate(0), throttle.gate(1));
            let in_guest = gate0.enter();
            let started = Instant::now();
            assert!(!throttle.sleep(Some(started + Duration::from_millis(30)), false));
            assert!(started.elapsed() >= Duration::from_millis(30), "woke after {:?}", started.elapsed());
            drop(in_guest);
            let sleeper = throttle.clone();
            let woke = std::thread::spawn(move || sleeper.sleep(None, true));
            // Whether the vCPU enters before or after the controller sleeps, it wakes.
            let _in_guest = gate1.enter();
            assert!(!within(Duration::from_secs(3), "waking on an entry", move || woke.join().unwrap()));
            let sleeper = throttle.clone();
            let ended = std::thread::spawn(move || sleeper.sleep(None, false));
            throttle.end();
            assert!(within(Duration::from_secs(3), "waking on the end", move || ended.join().unwrap()));
        });
    }

    fn thread_cpu() -> Duration {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid out pointer; this thread's clock always exists.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) }, 0);
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    /// What the fake vCPUs report: their entries into the guest as they
    /// happen, their CPU time at their end.
    #[derive(Default)]
    struct Used {
        cpu_ns: AtomicU64,
        entries: AtomicU64,
    }

    /// Whether this thread has a kick pending, which it then takes.
    fn take_kick() -> bool {
        // SAFETY: an all-zero sigset_t is valid for sigemptyset to fill.
        let mut set: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        assert_eq!(unsafe { libc::sigpending(&mut set) }, 0);
        // SAFETY: `set` was filled by sigpending.
        if unsafe { libc::sigismember(&set, vcpu::kick_signal()) } != 1 {
            return false;
        }
        let only_kick = kick_set();
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointers; the kick is blocked in this thread and pending.
        assert_eq!(unsafe { libc::sigtimedwait(&only_kick, std::ptr::null_mut(), &zero) }, vcpu::kick_signal());
        true
    }

    fn kick_set() -> libc::sigset_t {
        // SAFETY: an all-zero sigset_t is valid for sigemptyset to fill.
        let mut set: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, vcpu::kick_signal());
        }
        set
    }

    /// Threads that do what a vCPU thread does with its gate, with a busy
    /// loop for KVM_RUN that, like KVM_RUN, ends only when the thread is
    /// kicked (or the VM stops): the kick signal is blocked in them, and they
    /// spin until it is pending. A kick that comes before the loop is lost,
    /// as one that comes between a vCPU's gate and its KVM_RUN is. Each
    /// counts its entries into the guest in `used` as they happen, and adds
    /// its CPU time at its end.
    fn fake_vcpus(throttle: &Arc<Throttle>, stop: &Arc<AtomicBool>, used: &Arc<Used>) -> Vec<VcpuThread> {
        vcpu::install_kick_handler().unwrap();
        (0..throttle.in_guest.len())
            .map(|index| {
                let (gate, stop, used) = (throttle.gate(index), stop.clone(), used.clone());
                let handle = std::thread::spawn(move || {
                    let kick = kick_set();
                    // SAFETY: `kick` is a valid signal set; this thread's mask only.
                    assert_eq!(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &kick, std::ptr::null_mut()) }, 0);
                    loop {
                        let in_guest = gate.enter();
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        used.entries.fetch_add(1, Ordering::Relaxed);
                        take_kick();
                        while !take_kick() && !stop.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        drop(in_guest);
                    }
                    used.cpu_ns.fetch_add(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
                });
                VcpuThread { handle, wakeup: Arc::default() }
            })
            .collect()
    }

    /// Sets the fake vCPUs' stop flag when dropped, so that a test that
    /// fails while they run lets them end, and the controller with them,
    /// instead of leaving them spinning or the controller's drop waiting.
    struct StopOnDrop(Arc<AtomicBool>);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// Stops the controller and the fake vCPUs as the VM does, within a
    /// limit, so that a controller that does not end, or a gate that does
    /// not open, fails the test instead of hanging it.
    fn stop_all(controller: Controller, stop: &AtomicBool) {
        stop.store(true, Ordering::Release);
        let vcpus = controller.throttle.in_guest.len();
        within(Duration::from_secs(3), "stopping the controller and its vCPUs", move || {
            let threads = controller.stop();
            assert_eq!(threads.len(), vcpus, "the controller did not give its vCPU threads back");
            for thread in threads {
                thread.stop_and_join();
            }
        });
    }

    /// Two busy threads under a quota of a tenth of a core are kicked out of
    /// "the guest" when the budget is spent, and only the kick gets them
    /// out: they would stay in, and use whatever the host gives them. A busy
    /// host can only lower their share. (The exact accounting is
    /// `busy_vcpus_get_exactly_their_quota`.)
    #[test]
    fn busy_threads_are_kicked_out_to_their_quota() {
        let throttle = Throttle::new(Quota(0.1), 2).unwrap();
        let (stop, used) = (Arc::new(AtomicBool::new(false)), Arc::new(Used::default()));
        let mut threads = fake_vcpus(&throttle, &stop, &used);
        let started = Instant::now();
        let controller = Controller::start(throttle, &mut threads).unwrap();
        let _stop = StopOnDrop(stop.clone());
        assert!(threads.is_empty());
        std::thread::sleep(Duration::from_millis(500));
        // Each enters again after each kick.
        while used.entries.load(Ordering::Relaxed) <= 2 {
            assert!(started.elapsed() < Duration::from_secs(3), "the vCPUs were never kicked out");
            std::thread::sleep(Duration::from_millis(1));
        }
        stop_all(controller, &stop);
        let elapsed = started.elapsed();
        let share = used.cpu_ns.load(Ordering::Relaxed) as f64 / elapsed.as_nanos() as f64;
        assert!(share < 0.2, "used {share:.3} cores under a quota of 0.1");
    }

    /// Two busy fake vCPUs under a tiny quota, once the controller has
    /// closed the gate on them: the throttle, their stop flag, the
    /// controller, and the guard that stops them if the test fails.
    fn parked_vcpus() -> (Arc<Throttle>, Arc<AtomicBool>, Controller, StopOnDrop) {
        let throttle = Throttle::new(Quota(0.01), 2).unwrap();
        let (stop, used) = (Arc::new(AtomicBool::new(false)), Arc::new(Used::default()));
        let mut threads = fake_vcpus(&throttle, &stop, &used);
        let controller = Controller::start(throttle.clone(), &mut threads).unwrap();
        let guard = StopOnDrop(stop.clone());
        let waited = Instant::now();
        while !throttle.closed.load(Ordering::SeqCst) {
            assert!(waited.elapsed() < Duration::from_secs(3), "the gate never closed");
            std::thread::sleep(Duration::from_micros(200));
        }
        (throttle, stop, controller, guard)
    }

    /// Threads parked at a closed gate (a tiny quota keeps it closed most of
    /// the time) end promptly once the controller stops.
    #[test]
    fn stopping_releases_parked_threads() {
        let (throttle, stop, controller, _stop) = parked_vcpus();
        let stopping = Instant::now();
        stop_all(controller, &stop);
        assert!(stopping.elapsed() < Duration::from_millis(500), "took {:?} to stop", stopping.elapsed());
        assert!(!throttle.closed.load(Ordering::SeqCst));
    }

    /// Dropping a controller that was not stopped ends its thread and opens
    /// the gate, so that the vCPU threads it drops can end.
    #[test]
    fn dropping_the_controller_ends_it() {
        let (throttle, stop, controller, _stop) = parked_vcpus();
        stop.store(true, Ordering::Release);
        within(Duration::from_secs(3), "dropping the controller", move || drop(controller));
        assert!(!throttle.closed.load(Ordering::SeqCst));
        // The controller thread held a reference to the throttle, and so do
        // the (detached) vCPU threads until they end.
        let waited = Instant::now();
        while Arc::strong_count(&throttle) > 1 {
            assert!(waited.elapsed() < Duration::from_secs(3), "the controller thread is still running");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;

    /// A VM on an exact, simulated clock, for the controller ([`control`])
    /// to enforce its quota on: vCPUs that run whenever they want to and the
    /// gate lets them, the costs and delays of the real thing as numbers.
    /// Times are nanoseconds since the start.
    struct Sim {
        start: Instant,
        now: i64,
        /// The controller is told to end then.
        end: i64,
        /// When each vCPU wants to run (it is halted outside that).
        wants: Vec<Range<i64>>,
        /// How late the controller wakes from a sleep.
        wake_late: i64,
        /// The controller's CPU time per wake-up.
        wake_cost: i64,
        /// How long a kicked vCPU goes on running.
        kick_latency: i64,
        /// How long a vCPU takes to enter the guest once the gate opens.
        entry_latency: i64,
        /// When the gate last opened, as seen by the simulation.
        opened_at: i64,
        was_closed: bool,
        vcpu_ns: i64,
        controller_ns: i64,
        /// The vCPUs' CPU time in each [`PERIOD`] since the start.
        per_period: Vec<i64>,
        sleeps: usize,
        kicks: usize,
    }

    impl Sim {
        fn new(wants: Vec<Range<i64>>, end: i64) -> Sim {
            Sim {
                start: Instant::now(),
                now: 0,
                end,
                wants,
                wake_late: 0,
                wake_cost: 0,
                kick_latency: 0,
                entry_latency: 0,
                opened_at: i64::MIN / 2,
                was_closed: false,
                vcpu_ns: 0,
                controller_ns: 0,
                per_period: Vec::new(),
                sleeps: 0,
                kicks: 0,
            }
        }

        /// A realistic host: the costs measured on a PVM host, and a
        /// controller that wakes 300 µs late.
        fn realistic(mut self) -> Sim {
            (self.wake_late, self.wake_cost, self.kick_latency, self.entry_latency) =
                (300 * US, 30 * US, 50 * US, 20 * US);
            self
        }

        /// Runs the controller to its end, with a quota of `quota` cores.
        fn control(mut self, quota: f64) -> Sim {
            let throttle = Throttle::new(Quota(quota), self.wants.len()).unwrap();
            // Those that want to run at the start are in the guest already.
            self.run_until(&throttle, 0, |sim, i| Some(sim.enters(i)));
            control(&throttle, &mut self);
            self
        }

        fn instant(&self, at: i64) -> Instant {
            self.start + Duration::from_nanos(at as u64)
        }

        fn at(&self, instant: Instant) -> i64 {
            instant.duration_since(self.start).as_nanos() as i64
        }

        /// Notes a gate that the controller opened since the last look.
        fn look_at_gate(&mut self, throttle: &Throttle) -> bool {
            let closed = throttle.closed.load(Ordering::SeqCst);
            if self.was_closed && !closed {
                self.opened_at = self.now;
            }
            self.was_closed = closed;
            closed
        }

        /// When vCPU `index` is in the guest from, given an open gate.
        fn enters(&self, index: usize) -> i64 {
            self.wants[index].start.max(self.opened_at + self.entry_latency)
        }

        /// Runs each vCPU from `runs_from(vCPU)` (None: it does not run)
        /// until `to`, for as long as it wants to, and marks those in the
        /// guest at `to`.
        fn run_until(&mut self, throttle: &Throttle, to: i64, runs_from: impl Fn(&Sim, usize) -> Option<i64>) {
            let period = PERIOD.as_nanos() as i64;
            for index in 0..self.wants.len() {
                let Some(start) = runs_from(self, index) else {
                    throttle.in_guest[index].store(false, Ordering::SeqCst);
                    continue;
                };
                let (mut from, until) =
                    (start.max(self.now).max(self.wants[index].start), to.min(self.wants[index].end));
                throttle.in_guest[index].store(from <= to && to < self.wants[index].end, Ordering::SeqCst);
                while from < until {
                    let slot = (from / period) as usize;
                    let ran = until.min((slot as i64 + 1) * period) - from;
                    if self.per_period.len() <= slot {
                        self.per_period.resize(slot + 1, 0);
                    }
                    self.per_period[slot] += ran;
                    self.vcpu_ns += ran;
                    from += ran;
                }
            }
            self.now = to;
        }

        /// The CPU share of the whole VM (vCPUs and controller) over the run.
        fn share(&self) -> f64 {
            (self.vcpu_ns + self.controller_ns) as f64 / self.end as f64
        }
    }

    impl Vm for &mut Sim {
        fn now(&self) -> Instant {
            self.instant(self.now)
        }

        fn cpu_ns(&mut self) -> i64 {
            self.vcpu_ns + self.controller_ns
        }

        fn sleep(&mut self, throttle: &Throttle, deadline: Option<Instant>, until_entry: bool) -> bool {
            self.sleeps += 1;
            // A controller that sleeps much more often than every 100 µs
            // (SLACK) spins without letting time pass.
            assert!(self.sleeps as i64 <= 2 * self.end / SLACK.as_nanos() as i64 + 10, "the controller spins");
            let closed = self.look_at_gate(throttle);
            let mut wake = deadline.map_or(i64::MAX, |d| self.at(d));
            if until_entry && !closed {
                let entry = (0..self.wants.len())
                    .filter(|&i| self.enters(i).max(self.now) < self.wants[i].end)
                    .map(|i| self.enters(i).max(self.now))
                    .min();
                wake = wake.min(entry.unwrap_or(i64::MAX));
            }
            // Like the real sleep, none at all when there is nothing to wait for.
            if wake > self.now {
                wake = wake.saturating_add(self.wake_late);
            }
            let wake = wake.max(self.now);
            let runs_from = |sim: &Sim, i| (!closed).then(|| sim.enters(i));
            if wake >= self.end {
                self.run_until(throttle, self.end, runs_from);
                return true;
            }
            self.run_until(throttle, wake, runs_from);
            self.controller_ns += self.wake_cost;
            false
        }

        fn kick_out(&mut self, throttle: &Throttle) {
            self.kicks += 1;
            self.look_at_gate(throttle);
            let to = self.now + self.kick_latency;
            // Those in the guest run on until the kick reaches them.
            let marks: Vec<bool> = throttle.in_guest.iter().map(|m| m.load(Ordering::SeqCst)).collect();
            self.run_until(throttle, to, |sim, i| marks[i].then_some(sim.now));
            for mark in throttle.in_guest.iter() {
                mark.store(false, Ordering::SeqCst);
            }
        }
    }

    const BUSY: Range<i64> = 0..i64::MAX;

    /// Two busy vCPUs under a quota of half a core, on exact clocks with
    /// free kicks: every period they use exactly its budget, and the
    /// controller wakes twice per period (once when the budget could be
    /// spent, once at the period's end).
    #[test]
    fn busy_vcpus_spend_exactly_their_budget_each_period() {
        let sim = Sim::new(vec![BUSY, BUSY], 1_000 * MS).control(0.5);
        assert_eq!(sim.per_period, vec![10 * MS; 50]);
        assert_eq!((sim.sleeps, sim.kicks), (100, 50));
    }

    /// With what a real host adds (a controller that wakes late and costs
    /// CPU, kicks and entries that take time), the VM as a whole keeps to
    /// its quota within 1%, however many of its vCPUs are busy: every
    /// overrun is paid back, every early close is owed to it. A 10%
    /// over-grant anywhere fails this.
    #[test]
    fn busy_vcpus_get_exactly_their_quota() {
        // The wake-ups per period: two, or more when some vCPUs are halted
        // (the controller cannot know they will not use the budget).
        for (wants, quota, wake_ups) in [
            (vec![BUSY, BUSY], 0.5, 2),
            (vec![BUSY, BUSY], 1.5, 2),
            (vec![BUSY, 0..0], 0.25, 4),
            (vec![BUSY, BUSY, BUSY, 0..0], 0.1, 2),
        ] {
            let busy = wants.iter().filter(|w| !w.is_empty()).count();
            let sim = Sim::new(wants, 10_000 * MS).realistic().control(quota);
            let share = sim.share();
            assert!(
                (share / quota - 1.0).abs() < 0.01,
                "{busy} busy vCPUs used {share:.4} cores at a quota of {quota}"
            );
            assert!(sim.sleeps <= wake_ups * 500 + 2, "{} wake-ups in 500 periods", sim.sleeps);
        }
    }

    /// A controller that wakes 1 ms late each time still gives a quarter of
    /// a core: periods follow each other on a fixed grid instead of
    /// starting when it wakes.
    #[test]
    fn a_late_controller_keeps_periods_on_time() {
        let mut sim = Sim::new(vec![BUSY, BUSY], 10_000 * MS).realistic();
        sim.wake_late = MS;
        let sim = sim.control(0.25);
        let share = sim.share();
        assert!((share / 0.25 - 1.0).abs() < 0.01, "used {share:.4} cores at a quota of 0.25");
    }

    /// A kick that takes 3 ms overruns every period's 5 ms budget by more
    /// than half: the next periods pay it back.
    #[test]
    fn overruns_are_paid_back() {
        let mut sim = Sim::new(vec![BUSY, 0..0], 10_000 * MS).realistic();
        sim.kick_latency = 3 * MS;
        let sim = sim.control(0.25);
        let share = sim.share();
        assert!((share / 0.25 - 1.0).abs() < 0.01, "used {share:.4} cores at a quota of 0.25");
    }

    /// An overrun that leaves less than SLACK for the next period: that
    /// period keeps the gate closed and owes the rest; one that leaves
    /// exactly SLACK lets the vCPU run it. (Exact clocks: the kick latency
    /// alone sets the overrun.)
    #[test]
    fn a_period_with_less_than_slack_left_stays_closed() {
        let slack = SLACK.as_nanos() as i64;
        for (latency, second) in [(5 * MS - slack, slack + 5 * MS - slack), (5 * MS - slack + 1, 0)] {
            let mut sim = Sim::new(vec![BUSY], 3 * PERIOD.as_nanos() as i64);
            sim.kick_latency = latency;
            let sim = sim.control(0.25);
            assert_eq!(sim.per_period[..2], [5 * MS + latency, second], "a kick of {latency} ns");
        }
    }

    /// The controller's last look before closing the gate: with exactly
    /// SLACK left it lets the VM run that. One of two vCPUs busy, so each
    /// look waits for half of what is left: 6.4 ms, 3.2 ms, ..., 100 µs.
    #[test]
    fn exactly_slack_left_is_still_spent() {
        let sim = Sim::new(vec![BUSY, 0..0], PERIOD.as_nanos() as i64).control(0.32);
        assert_eq!(sim.per_period, [6_400_000]);
    }

    /// A VM whose vCPUs are halted costs the controller no wake-ups at
    /// all, however long it stays so.
    #[test]
    fn an_idle_vm_costs_no_wake_ups() {
        let sim = Sim::new(vec![0..0, 0..0], 10_000 * MS).realistic().control(0.25);
        assert_eq!((sim.sleeps, sim.kicks, sim.vcpu_ns), (1, 0, 0));
    }

    /// A vCPU that halted for a second then wants to run gets no burst for
    /// the time it did not use: from then on, a quarter of a core.
    #[test]
    fn a_vm_that_slept_gets_no_burst() {
        let sim = Sim::new(vec![1_000 * MS..i64::MAX, 0..0], 10_000 * MS).realistic().control(0.25);
        let budget = 5 * MS;
        let first = sim.per_period.iter().position(|&used| used > 0).unwrap();
        assert_eq!(first, 50);
        assert!(
            sim.per_period[first..first + 3].iter().all(|&used| used <= budget * 11 / 10),
            "{:?}",
            &sim.per_period[50..53]
        );
        let share = (sim.vcpu_ns + sim.controller_ns) as f64 / (9_000 * MS) as f64;
        assert!((share / 0.25 - 1.0).abs() < 0.01, "used {share:.4} cores at a quota of 0.25");
    }
}
