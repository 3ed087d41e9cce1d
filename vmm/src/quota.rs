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
/// out, and closes the gate once less than this is left rather than look
/// again: each look costs a wake-up (~30 µs on a PVM host). Either way the
/// difference is settled in the next period (see [`Budget::end_period`]).
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
        let watched: Vec<Watched> = threads.iter().map(|t| Watched::new(t.pthread())).collect();
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
fn control(throttle: &Throttle, mut vcpus: Vec<Watched>) {
    let mut budget = Budget::new(throttle.quota, PERIOD);
    let mut period_start = Instant::now();
    let mut cpu_at_start = total_cpu_ns(&mut vcpus);
    loop {
        let period_end = period_start + PERIOD;
        let allowance = budget.allowance();
        // vCPUs released from the gate are on their way into the guest: not idle.
        let mut releasing = allowance > 0 && throttle.closed.load(Ordering::SeqCst);
        if allowance > 0 {
            throttle.open();
        }
        // Watch the budget run out: sleep until the earliest moment it could
        // (every vCPU running flat out), look again, and close the gate once
        // (almost) nothing is left.
        let mut throttled = false;
        loop {
            let left = allowance - (total_cpu_ns(&mut vcpus) - cpu_at_start);
            if left < SLACK.as_nanos() as i64 {
                throttle.close();
                kick_out(throttle, &vcpus);
                throttled = true;
                break;
            }
            let now = Instant::now();
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
                if throttle.sleep(None, true) {
                    return;
                }
                continue;
            }
            let step = Duration::from_nanos((left / vcpus.len() as i64) as u64).max(SLACK);
            if throttle.sleep(Some((now + step).min(period_end)), false) {
                return;
            }
        }
        if throttle.sleep(Some(period_end), false) {
            return;
        }
        let cpu_now = total_cpu_ns(&mut vcpus);
        budget.end_period(cpu_now - cpu_at_start, throttled);
        cpu_at_start = cpu_now;
        // After an idle sleep, or when the controller fell behind (a starved
        // host), a new period starts now rather than catching up with a
        // burst of short ones.
        let now = Instant::now();
        period_start = if now >= period_end + PERIOD { now } else { period_end };
    }
}

/// Kicks every vCPU in the guest until it has left KVM_RUN; with the gate
/// closed, each then parks before its next entry.
fn kick_out(throttle: &Throttle, vcpus: &[Watched]) {
    for (vcpu, mark) in vcpus.iter().zip(throttle.in_guest.iter()) {
        // SAFETY: the Controller owns the VcpuThread behind `vcpu.pthread`
        // and joins this thread before it gives that one back, so it is not
        // joined or detached yet.
        let kicked = unsafe { vcpu::kick_until(vcpu.pthread, || !mark.load(Ordering::SeqCst)) };
        if let Err(err) = kicked {
            tracing::warn!("cannot signal a vCPU thread to throttle it: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn thread_cpu() -> Duration {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid out pointer; this thread's clock always exists.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) }, 0);
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    /// Threads that do what a vCPU thread does with its gate, with a 100 µs
    /// busy loop for KVM_RUN (a kick does not cut it short, so each leaves
    /// "the guest" within 100 µs). Each adds its CPU time to `cpu_ns` at
    /// its end.
    fn fake_vcpus(throttle: &Arc<Throttle>, stop: &Arc<AtomicBool>, cpu_ns: &Arc<AtomicU64>) -> Vec<VcpuThread> {
        (0..throttle.in_guest.len())
            .map(|index| {
                let (gate, stop, cpu_ns) = (throttle.gate(index), stop.clone(), cpu_ns.clone());
                let handle = std::thread::spawn(move || {
                    loop {
                        let in_guest = gate.enter();
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let until = Instant::now() + Duration::from_micros(100);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        drop(in_guest);
                    }
                    cpu_ns.fetch_add(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
                });
                VcpuThread { handle, wakeup: Arc::default() }
            })
            .collect()
    }

    /// Two busy threads under a quota of 0.5 cores share half a core.
    /// Generous bounds: the test machine may be busy, which only lowers the
    /// share; the low bound catches a gate that stays closed.
    #[test]
    fn busy_threads_get_their_quota() {
        let throttle = Throttle::new(Quota(0.5), 2).unwrap();
        let (stop, cpu_ns) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut threads = fake_vcpus(&throttle, &stop, &cpu_ns);
        let started = Instant::now();
        let controller = Controller::start(throttle, &mut threads).unwrap();
        assert!(threads.is_empty());
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Release);
        for thread in controller.stop() {
            thread.join();
        }
        let share = cpu_ns.load(Ordering::Relaxed) as f64 / started.elapsed().as_nanos() as f64;
        assert!((0.15..0.7).contains(&share), "used {share:.3} cores under a quota of 0.5");
    }

    /// Threads parked at a closed gate (a tiny quota keeps it closed most of
    /// the time) end promptly once the controller stops.
    #[test]
    fn stopping_releases_parked_threads() {
        let throttle = Throttle::new(Quota(0.01), 2).unwrap();
        let (stop, cpu_ns) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut threads = fake_vcpus(&throttle, &stop, &cpu_ns);
        let controller = Controller::start(throttle.clone(), &mut threads).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let waited = Instant::now();
        while !throttle.closed.load(Ordering::SeqCst) {
            assert!(waited.elapsed() < Duration::from_secs(5), "the gate never closed");
            std::thread::sleep(Duration::from_micros(200));
        }
        let stopping = Instant::now();
        stop.store(true, Ordering::Release);
        for thread in controller.stop() {
            thread.join();
        }
        assert!(stopping.elapsed() < Duration::from_millis(500), "took {:?} to stop", stopping.elapsed());
        assert!(!throttle.closed.load(Ordering::SeqCst));
    }
}
