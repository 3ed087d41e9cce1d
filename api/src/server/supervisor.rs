//! The child processes that run the machines: one `mvm up --json` or
//! `mvm boot` per job or VM, started by the launcher thread, reaped by the
//! reaper thread, paused, resumed and killed by signal.
//!
//! The `live` map (id → process) is the one lock that orders everything
//! about a running machine: the launcher holds it from the record's insert
//! to the child's registration, the reaper from reaping a child to writing
//! its end, and a signal is sent under it only to a pid still in it. A pid
//! leaves the map in the same critical section in which it is reaped, so a
//! signal never reaches a recycled pid: until the reaper's `wait4`, the
//! child is at worst a zombie that still owns its pid (the reaper finds it
//! with `waitid(WNOWAIT)`, which does not reap).

use std::collections::HashMap;
use std::fs::{DirBuilder, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::record::{Exit, Kind, Record, State, Usage};
use super::request::{machine_dir, ApiError, Launch};
use super::store::{Ending, Store};
use super::unix_now;

/// `mvm up` stages a job's images in `$TMPDIR/mvm-job-XXXXXX`.
const STAGING_PREFIX: &str = "mvm-job-";
/// How much of the end of a stderr log is read for its last line.
const LAST_LINE_MAX: u64 = 64 * 1024;
/// How long shutdown waits for the killed children to be reaped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] io::Error),
}

pub struct SupervisorConfig {
    /// The mvm binary the children run.
    pub exe: PathBuf,
    pub kvm_device: PathBuf,
    pub state_dir: PathBuf,
    pub max_running: usize,
}

/// What pause, resume, kill (jobs) and stop (VMs) send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Kill,
}

struct Proc {
    pid: i32,
    kind: Kind,
    paused: bool,
    kill_requested: bool,
}

#[derive(Default)]
struct Live {
    by_id: HashMap<String, Proc>,
    by_pid: HashMap<i32, String>,
}

impl Live {
    /// Refuses (429) one more machine when `max` already run, whether jobs,
    /// VMs or both: each is a VMM process with a guest's RAM.
    fn admit(&self, max: usize) -> Result<(), ApiError> {
        if self.by_id.len() >= max {
            let message = format!("too many running jobs and VMs: at most {max} at once (mvm serve --max-running)");
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, message, None));
        }
        Ok(())
    }
}

struct Shared {
    config: SupervisorConfig,
    store: Arc<Store>,
    live: Mutex<Live>,
    shutting_down: AtomicBool,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        // Every critical section leaves the map consistent before anything
        // that could panic, so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type LaunchReply = oneshot::Sender<Result<Record, ApiError>>;

pub struct Supervisor {
    shared: Arc<Shared>,
    launcher: mpsc::Sender<(Launch, LaunchReply)>,
}

impl Supervisor {
    /// Starts the launcher and reaper threads. They run until the process
    /// ends: the launcher must, since its children's death signal is tied
    /// to it.
    pub fn start(config: SupervisorConfig, store: Arc<Store>) -> Result<Supervisor, SupervisorError> {
        let shared = Arc::new(Shared {
            config,
            store,
            live: Mutex::new(Live::default()),
            shutting_down: AtomicBool::new(false),
        });
        let (launch_tx, launch_rx) = mpsc::channel::<(Launch, LaunchReply)>();
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let reaper = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("mvm-reaper".into())
            .spawn(move || reap_loop(&reaper, &wake_rx))
            .map_err(|e| SupervisorError::Thread("reaper", e))?;
        let launcher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("mvm-launcher".into())
            .spawn(move || {
                for (launch, reply) in launch_rx {
                    let result = start_child(&launcher, launch);
                    if result.is_ok() {
                        // The reaper may be waiting for a first child.
                        let _ = wake_tx.send(());
                    }
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| SupervisorError::Thread("launcher", e))?;
        Ok(Supervisor { shared, launcher: launch_tx })
    }

    /// Records and starts a checked request; answers with its record, now
    /// `running`.
    pub async fn launch(&self, launch: Launch) -> Result<Record, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down", None);
        self.launcher.send((launch, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Pauses, resumes or kills a running machine; 409 when it has ended.
    /// Pausing a paused machine or resuming a running one changes nothing.
    pub fn control(&self, record: &Record, action: Action) -> Result<(), ApiError> {
        let mut live = self.shared.live();
        let Some(proc) = live.by_id.get_mut(&record.id).filter(|p| p.kind == record.kind) else {
            let current = self.shared.store.get(&record.id).ok().flatten().map_or(record.state, |r| r.state);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{} {} is not running (state {current})", record.kind.as_str(), record.id),
                None,
            ));
        };
        let (signal, state) = match action {
            Action::Pause if !proc.paused => (libc::SIGSTOP, Some(State::Paused)),
            Action::Resume if proc.paused => (libc::SIGCONT, Some(State::Running)),
            Action::Pause | Action::Resume => return Ok(()),
            Action::Kill => (libc::SIGKILL, None),
        };
        send_signal(proc.pid, signal)
            .map_err(|e| ApiError::internal(format!("cannot signal pid {}: {e}", proc.pid)))?;
        match action {
            Action::Pause => proc.paused = true,
            Action::Resume => proc.paused = false,
            Action::Kill => proc.kill_requested = true,
        }
        if let Some(state) = state {
            self.shared.store.set_state(&record.id, state).map_err(ApiError::internal)?;
        }
        info!(id = %record.id, ?action, "machine signalled");
        Ok(())
    }

    /// Whether a machine's child still runs (or is paused).
    pub fn is_live(&self, id: &str) -> bool {
        self.shared.live().by_id.contains_key(id)
    }

    /// How many machines run now.
    pub fn running(&self) -> usize {
        self.shared.live().by_id.len()
    }

    pub fn max_running(&self) -> usize {
        self.shared.config.max_running
    }

    /// CPU time and memory so far of a machine that runs.
    pub fn live_usage(&self, id: &str) -> Option<Usage> {
        let pid = self.shared.live().by_id.get(id)?.pid;
        proc_usage(pid)
    }

    /// The record as it is now, read under the live lock so that it is not
    /// caught between its child's reaping and its end being written.
    pub fn record(&self, id: &str) -> Result<Option<Record>, ApiError> {
        let _live = self.shared.live();
        self.shared.store.get(id).map_err(ApiError::internal)
    }

    /// Records of `kind` (in `state`, when given), oldest first.
    pub fn list(&self, kind: Kind, state: Option<State>) -> Result<Vec<Record>, ApiError> {
        self.shared.store.list(kind, state).map_err(ApiError::internal)
    }

    /// Deletes the record of an ended machine (409 otherwise) and its state
    /// directory, and its outputs when asked; `true` when they were removed.
    pub fn delete(&self, record: &Record, outputs: bool) -> Result<bool, ApiError> {
        {
            let live = self.shared.live();
            let current = self.shared.store.get(&record.id).map_err(ApiError::internal)?;
            let Some(current) = current else { return Err(ApiError::not_found(record.kind, &record.id)) };
            if live.by_id.contains_key(&record.id) || !current.state.ended() {
                let message = format!(
                    "{} {} has not ended (state {}): kill it first",
                    record.kind.as_str(),
                    record.id,
                    current.state
                );
                return Err(ApiError::new(StatusCode::CONFLICT, message, None));
            }
            self.shared.store.delete(&record.id).map_err(ApiError::internal)?;
        }
        remove_dir(&machine_dir(&self.shared.config.state_dir, &record.id));
        match (&record.outputs_dir, outputs) {
            (Some(dir), true) => Ok(remove_dir(dir)),
            _ => Ok(false),
        }
    }

    /// Kills every child and waits (a few seconds at most) until each end
    /// is recorded, as `lost`. New launches are refused from now on.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let count = {
            let live = self.shared.live();
            for proc in live.by_id.values() {
                let _ = send_signal(proc.pid, libc::SIGKILL);
            }
            live.by_id.len()
        };
        info!(count, "shutting down: stopped every machine");
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Marks the records that had not ended when the daemon last stopped as
/// `lost`, kills any of their processes that outlived it, and removes their
/// staged images. Runs before the supervisor starts.
pub fn recover(store: &Store, state_dir: &Path) -> Result<usize, super::store::StoreError> {
    let unfinished = store.unfinished()?;
    for record in &unfinished {
        let dir = machine_dir(state_dir, &record.id);
        if let Some(pid) = record.pid.filter(|&pid| runs_in(pid, &dir)) {
            warn!(id = %record.id, pid, "a machine outlived the daemon that started it; killing it");
            let _ = send_signal(pid, libc::SIGKILL);
        }
        let exit = Exit {
            reason: "lost".into(),
            status: None,
            message: "the daemon stopped while it ran; its VM is gone".into(),
        };
        let end =
            Ending { state: State::Lost, exit, report: None, stderr_end: None, usage: None, ended_at: unix_now() };
        store.finish(&record.id, &end)?;
        remove_staging(&dir);
        info!(id = %record.id, "marked lost");
    }
    Ok(unfinished.len())
}

/// Whether `pid` is a child that mvm serve started for `dir` (its TMPDIR).
fn runs_in(pid: i32, dir: &Path) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let wanted = format!("TMPDIR={}", dir.display());
    environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes())
}

/// On the launcher thread: makes the machine's directory, inserts its
/// record, starts its child, registers it, all under the live lock.
fn start_child(shared: &Shared, launch: Launch) -> Result<Record, ApiError> {
    let mut live = shared.live();
    if shared.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down", None));
    }
    live.admit(shared.config.max_running)?;
    let mut record = launch.record;
    let dir = machine_dir(&shared.config.state_dir, &record.id);
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
    let undo = |what: String| {
        remove_dir(&dir);
        ApiError::internal(what)
    };
    if let Some(toml) = &launch.job_toml {
        std::fs::write(dir.join("job.toml"), toml).map_err(|e| undo(format!("cannot write the job file: {e}")))?;
    }
    let log = |name: &str| File::create(dir.join(name)).map_err(|e| undo(format!("cannot create {name}: {e}")));
    let (stdout, stderr) = (log("stdout.log")?, log("stderr.log")?);
    shared.store.insert(&record).map_err(|e| undo(format!("cannot record the {}: {e}", record.kind.as_str())))?;

    let mut command = Command::new(&shared.config.exe);
    command
        .arg(format!("--kvm-device={}", shared.config.kvm_device.display()))
        .args(&launch.args)
        // The job's stdin file, opened by the request beneath the files
        // root; without one, stdin is empty.
        .stdin(launch.stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(stdout)
        .stderr(stderr)
        .env("TMPDIR", &dir)
        // At mvm's default log level, whatever the daemon's, so that `mvm up
        // --json`'s report stays the last line of its stderr.
        .env_remove("RUST_LOG")
        .current_dir(&dir)
        // Its own process group: a ^C meant for the daemon is the daemon's
        // to pass on, not every VM's.
        .process_group(0);
    let daemon = std::process::id() as i32;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl and getppid, which are async-signal-safe; it touches no
    // lock or allocation of the parent.
    unsafe {
        command.pre_exec(move || {
            // The child dies with the thread that forked it: the launcher,
            // which lives as long as the daemon. Checking the parent after
            // setting it closes the window in which the daemon died first.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != daemon {
                return Err(io::Error::other("the daemon is gone"));
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = shared.store.delete(&record.id);
            return Err(undo(format!("cannot start {}: {e}", shared.config.exe.display())));
        }
    };
    // Not waited for here: the reaper reaps every child.
    let pid = child.id() as i32;
    drop(child);
    let now = unix_now();
    let mut proc = Proc { pid, kind: record.kind, paused: false, kill_requested: false };
    if let Err(e) = shared.store.set_running(&record.id, pid, now) {
        // Registered anyway, so that the reaper records its end.
        let _ = send_signal(pid, libc::SIGKILL);
        proc.kill_requested = true;
        live.by_pid.insert(pid, record.id.clone());
        live.by_id.insert(record.id.clone(), proc);
        return Err(ApiError::internal(format!("cannot record the start: {e}")));
    }
    live.by_pid.insert(pid, record.id.clone());
    live.by_id.insert(record.id.clone(), proc);
    drop(live);
    info!(id = %record.id, kind = record.kind.as_str(), pid, "started");
    record.state = State::Running;
    record.pid = Some(pid);
    record.started_at = Some(now);
    Ok(record)
}

fn reap_loop(shared: &Shared, wake: &mpsc::Receiver<()>) {
    loop {
        match wait_any() {
            Ok(pid) => reap(shared, pid),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // No children: sleep until the launcher starts one.
                if wake.recv().is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                error!(error = %e, "waitid failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The pid of a child that has exited, left unreaped.
fn wait_any() -> io::Result<i32> {
    // SAFETY: siginfo_t is plain old data, for which all zeroes is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t for waitid to fill in; WNOWAIT
    // leaves the child a zombie, so its pid stays ours.
    if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded for WEXITED, so `info` is a SIGCHLD siginfo,
    // whose si_pid field is set.
    Ok(unsafe { info.si_pid() })
}

fn reap(shared: &Shared, pid: i32) {
    let mut live = shared.live();
    let mut status = 0;
    // SAFETY: all zeroes is a valid rusage.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `rusage` are valid for wait4 to write; `pid` is
    // an exited child of ours (waitid said so), so this does not block.
    let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
    if reaped != pid {
        debug!(pid, error = %io::Error::last_os_error(), "child already reaped");
        return;
    }
    let Some(id) = live.by_pid.remove(&pid) else {
        debug!(pid, "reaped a child with no machine");
        return;
    };
    let Some(proc) = live.by_id.remove(&id) else { return };
    let dir = machine_dir(&shared.config.state_dir, &id);
    let usage = Usage {
        cpu_s: seconds(rusage.ru_utime) + seconds(rusage.ru_stime),
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
        rss_kib: None,
    };
    let shutdown = shared.shutting_down.load(Ordering::SeqCst);
    if libc::WIFSIGNALED(status) {
        remove_write_back_staging(shared, &id);
    }
    let end = ending(proc.kind, &dir.join("stderr.log"), status, proc.kill_requested, shutdown, usage);
    info!(%id, pid, state = %end.state, reason = %end.exit.reason, "ended");
    if let Err(e) = shared.store.finish(&id, &end) {
        error!(%id, error = %e, "cannot record the end");
    }
    drop(live);
    remove_staging(&dir);
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// How a child ended, from its wait status and the last line of its stderr
/// (`mvm up --json`'s report, or mvm's message).
fn ending(kind: Kind, stderr: &Path, status: i32, kill_requested: bool, shutdown: bool, usage: Usage) -> Ending {
    let (line, line_start) = last_line(stderr).unwrap_or_default();
    let end = |state, reason: &str, status, message: String| Ending {
        state,
        exit: Exit { reason: reason.into(), status, message },
        report: None,
        stderr_end: None,
        usage: Some(usage),
        ended_at: unix_now(),
    };
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        return if shutdown {
            end(State::Lost, "lost", None, "the daemon shut down while it ran; its VM is gone".into())
        } else if kill_requested {
            let verb = if kind == Kind::Job { "killed" } else { "stopped" };
            end(State::Killed, "killed", None, format!("{verb} on request"))
        } else {
            end(State::Failed, "signal", None, format!("mvm was killed by signal {signal}"))
        };
    }
    let code = libc::WEXITSTATUS(status);
    let mvm_line = line.strip_prefix("mvm: ").map(str::to_owned);
    match kind {
        Kind::Job => match report(&line) {
            Some(report) => {
                let reason = report["reason"].as_str().unwrap_or("exit").to_owned();
                let message = report["end"].as_str().unwrap_or_default().to_owned();
                Ending {
                    report: Some(report),
                    stderr_end: Some(line_start),
                    ..end(State::Exited, &reason, Some(code), message)
                }
            }
            None => end(
                State::Failed,
                "error",
                Some(code),
                mvm_line.unwrap_or_else(|| format!("mvm exited with status {code}")),
            ),
        },
        Kind::Vm => {
            let reason = match (code, &mvm_line) {
                (125, _) => return end(State::Failed, "error", Some(code), mvm_line.unwrap_or_default()),
                (122, Some(_)) => "out of memory",
                (123, Some(_)) => "guest crashed",
                (124, Some(_)) => "timeout",
                _ => "exit",
            };
            end(State::Exited, reason, Some(code), mvm_line.unwrap_or_else(|| format!("exit {code}")))
        }
    }
}

/// `mvm up --json`'s report, if `line` is one.
fn report(line: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line).ok()?;
    let is_report = value["reason"].is_string() && value["status"].is_u64() && value["end"].is_string();
    is_report.then_some(value)
}

/// The last line of a file (at most [`LAST_LINE_MAX`] of it), without its
/// newline, and the offset where it starts.
fn last_line(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LAST_LINE_MAX);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let from = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok((String::from_utf8_lossy(&body[from..]).into_owned(), start + from as u64))
}

fn send_signal(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; callers pass the pid
    // of a child not yet reaped (or, at recovery, one checked by its
    // environment), so it is not a recycled pid.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (utime + stime of all threads) and memory of a running process.
fn proc_usage(pid: i32) -> Option<Usage> {
    static TICKS: OnceLock<f64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    let ticks = *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let cpu: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(key))?.trim().strip_suffix("kB")?.trim().parse().ok()
    };
    Some(Usage { cpu_s: cpu as f64 / ticks, max_rss_kib: kib("VmHWM:").unwrap_or(0), rss_kib: kib("VmRSS:") })
}

/// Removes the staging copies a job killed while writing back its rw
/// mounts left beside them (their host trees are whole: only ever swapped).
fn remove_write_back_staging(shared: &Shared, id: &str) {
    let Ok(Some(record)) = shared.store.get(id) else { return };
    let mounts = record.spec.pointer("/files/mounts").and_then(Value::as_array).cloned().unwrap_or_default();
    for mount in mounts {
        if mount.get("mode").and_then(Value::as_str) != Some("rw") {
            continue;
        }
        if let Some(host) = mount.get("host").and_then(Value::as_str) {
            let removed = crate::job::collect::remove_stale_staging(Path::new(host));
            if removed > 0 {
                info!(%id, host, removed, "removed staging copies of a killed job's write-back");
            }
        }
    }
}

/// Removes what a killed `mvm up` left staged in its TMPDIR.
fn remove_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            remove_dir(&entry.path());
        }
    }
}

/// Removes a directory tree; `true` when it was there and is now gone.
fn remove_dir(dir: &Path) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot remove");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> i32 {
        code << 8
    }

    fn stderr_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_job_ends_as_its_report_says_and_its_stderr_stops_before_it() {
        let report = concat!(
            r#"{"elapsed_s":0.1,"end":"exit 3","job":"j","#,
            r#""outputs":{"bytes":0,"dir":"/o","error":null,"files":[]},"reason":"exit","status":3}"#
        );
        let log = format!("job's own line\n{report}\n");
        let (_dir, path) = stderr_with(&log);
        let end = ending(Kind::Job, &path, exited(3), false, false, Usage::default());
        assert_eq!(end.state, State::Exited);
        assert_eq!(end.exit, Exit { reason: "exit".into(), status: Some(3), message: "exit 3".into() });
        assert_eq!(end.stderr_end, Some("job's own line\n".len() as u64));
        assert_eq!(end.report.unwrap()["job"], "j");
    }

    #[test]
    fn a_json_line_without_every_field_of_a_report_is_not_one() {
        for line in [
            r#"{"status":0,"end":"exit 0"}"#,
            r#"{"reason":"exit","end":"exit 0"}"#,
            r#"{"reason":"exit","status":0}"#,
            r#"{"reason":"exit","status":-1,"end":"exit 0"}"#,
        ] {
            let (_dir, path) = stderr_with(&format!("{line}\n"));
            let end = ending(Kind::Job, &path, exited(0), false, false, Usage::default());
            assert_eq!((end.state, end.report), (State::Failed, None), "{line}");
        }
    }

    #[test]
    fn a_long_report_after_a_long_stderr_is_found_whole() {
        let files: Vec<String> = (0..500).map(|i| format!("file-{i}.txt")).collect();
        let report =
            serde_json::json!({ "reason": "exit", "status": 0, "end": "exit 0", "outputs": { "files": files } });
        let job_stderr = "x".repeat(100_000) + "\n";
        let (_dir, path) = stderr_with(&format!("{job_stderr}{report}\n"));
        let end = ending(Kind::Job, &path, exited(0), false, false, Usage::default());
        assert_eq!(end.report.unwrap()["outputs"]["files"][499], "file-499.txt");
        assert_eq!(end.stderr_end, Some(job_stderr.len() as u64));
    }

    #[test]
    fn a_job_mvm_could_not_run_has_failed_with_mvms_error() {
        let (_dir, path) = stderr_with("mvm: error: cannot open /dev/kvm\n");
        let end = ending(Kind::Job, &path, exited(125), false, false, Usage::default());
        assert_eq!((end.state, end.exit.reason.as_str(), end.exit.status), (State::Failed, "error", Some(125)));
        assert_eq!(end.exit.message, "error: cannot open /dev/kvm");
        assert_eq!(end.stderr_end, None);
    }

    #[test]
    fn signals_end_as_killed_lost_or_failed() {
        let (_dir, path) = stderr_with("");
        let killed = libc::SIGKILL;
        assert_eq!(ending(Kind::Job, &path, killed, true, false, Usage::default()).state, State::Killed);
        assert_eq!(ending(Kind::Job, &path, killed, false, true, Usage::default()).state, State::Lost);
        let end = ending(Kind::Vm, &path, libc::SIGSEGV, false, false, Usage::default());
        assert_eq!((end.state, end.exit.message.as_str()), (State::Failed, "mvm was killed by signal 11"));
        let job = ending(Kind::Job, &path, killed, true, false, Usage::default());
        let vm = ending(Kind::Vm, &path, killed, true, false, Usage::default());
        assert_eq!((job.exit.message.as_str(), vm.exit.message.as_str()), ("killed on request", "stopped on request"));
    }

    #[test]
    fn a_vm_ends_by_its_status_and_mvms_message() {
        let (_dir, path) = stderr_with("mvm: timeout after 1 s: the VM was stopped\n");
        let end = ending(Kind::Vm, &path, exited(124), false, false, Usage::default());
        assert_eq!((end.state, end.exit.reason.as_str()), (State::Exited, "timeout"));
        let (_dir, path) = stderr_with("");
        let end = ending(Kind::Vm, &path, exited(124), false, false, Usage::default());
        assert_eq!((end.exit.reason.as_str(), end.exit.message.as_str()), ("exit", "exit 124"));
        for (code, line, reason) in [
            (122, "mvm: guest out of memory (guest RAM 16 MiB)", "out of memory"),
            (123, "mvm: guest crashed (triple fault) at rip=0x1", "guest crashed"),
        ] {
            let (_dir, path) = stderr_with(&format!("{line}\n"));
            let end = ending(Kind::Vm, &path, exited(code), false, false, Usage::default());
            assert_eq!((end.state, end.exit.reason.as_str()), (State::Exited, reason));
            assert_eq!(end.exit.message, line.strip_prefix("mvm: ").unwrap());
        }
        let (_dir, path) = stderr_with("mvm: error: cannot open /dev/kvm\n");
        let end = ending(Kind::Vm, &path, exited(125), false, false, Usage::default());
        assert_eq!((end.state, end.exit.reason.as_str(), end.exit.status), (State::Failed, "error", Some(125)));
        assert_eq!(end.exit.message, "error: cannot open /dev/kvm");
    }

    #[test]
    fn jobs_and_vms_alike_take_a_running_slot() {
        let proc = |pid, kind| Proc { pid, kind, paused: false, kill_requested: false };
        let mut live = Live::default();
        assert_eq!(live.admit(1), Ok(()));
        live.by_id.insert("vm".into(), proc(10, Kind::Vm));
        let refused = live.admit(1).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.error, "too many running jobs and VMs: at most 1 at once (mvm serve --max-running)");
        assert_eq!(live.admit(2), Ok(()), "a VM takes one slot");
        live.by_id.insert("job".into(), proc(11, Kind::Job));
        assert_eq!(live.admit(2).unwrap_err().status, StatusCode::TOO_MANY_REQUESTS);
        live.by_id.get_mut("job").unwrap().paused = true;
        assert!(live.admit(2).is_err(), "a paused job holds its slot");
        assert_eq!(live.admit(3), Ok(()));
    }

    /// User + system time of this process, from getrusage.
    fn own_cpu_s() -> f64 {
        // SAFETY: all zeroes is a valid rusage, which getrusage fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is valid for getrusage to write.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    #[test]
    fn usage_of_this_process_is_read_from_proc() {
        // System time enough that user + system differs from user - system.
        let mut zero = File::open("/dev/zero").unwrap();
        let mut buffer = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            zero.read_exact(&mut buffer).unwrap();
        }
        let before = own_cpu_s();
        let usage = proc_usage(std::process::id() as i32).unwrap();
        let after = own_cpu_s();
        // /proc counts whole 10 ms ticks of user and of system time.
        assert!(
            before - 0.03 <= usage.cpu_s && usage.cpu_s <= after + 0.001,
            "{} not in {before}..{after}",
            usage.cpu_s
        );
        assert!(usage.max_rss_kib > 0 && usage.rss_kib.unwrap() > 0);
        assert!(proc_usage(-1).is_none());
    }

    /// A stand-in for `mvm`, so that real processes can be started, signalled
    /// and reaped without KVM: `exit N` writes `mvm up --json`'s report of
    /// an exit N, spends some CPU time (nearly all system time, in a child) and
    /// exits N; `stage` stages a directory in its TMPDIR, as `mvm up` does,
    /// and sleeps.
    const FAKE_MVM: &str = r#"#!/bin/sh
shift
case "$1" in
exit)
    printf '{"reason":"exit","status":%s,"end":"exit %s"}\n' "$2" "$2" >&2
    dd if=/dev/zero of=/dev/null bs=64M count=4 2>/dev/null
    exit "$2" ;;
stage) mkdir "$TMPDIR/mvm-job-fake" && exec sleep 60 ;;
esac
exit 99
"#;

    fn launch(id: &str, args: &[&str], outputs_dir: Option<PathBuf>) -> Launch {
        let limits = crate::server::record::Limits {
            memory_mib: 16,
            vcpus: 1,
            cpu_quota: None,
            timeout_s: None,
            outputs_max_mib: None,
        };
        let record =
            crate::server::request::new_record(id, Kind::Job, id.into(), Value::Null, limits, outputs_dir, 1.0);
        let args = args.iter().map(|a| a.to_string()).collect();
        Launch { record, job_toml: Some("# job".into()), args, stdin: None }
    }

    /// Waits (5 s at most) until `done` holds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn record_of(store: &Store, id: &str) -> Record {
        store.get(id).unwrap().unwrap_or_else(|| panic!("no record {id}"))
    }

    fn stopped(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat[stat.rfind(')').unwrap() + 2..].starts_with('T')
    }

    /// CPU time of this process's reaper thread.
    fn reaper_cpu() -> Duration {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap().map(|t| t.unwrap().path());
        let mut reapers = tasks.filter(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == "mvm-reaper");
        let reaper = reapers.next().expect("a reaper thread");
        assert!(reapers.next().is_none(), "one supervisor at a time");
        let schedstat = std::fs::read_to_string(reaper.join("schedstat")).unwrap();
        Duration::from_nanos(schedstat.split_whitespace().next().unwrap().parse().unwrap())
    }

    fn staged(dir: &Path) -> bool {
        dir.join("mvm-job-fake").exists()
    }

    /// The only test that starts a supervisor: its reaper waits for any child
    /// of the process, so it would reap another test's children.
    #[test]
    fn the_supervisor_recovers_starts_caps_signals_reaps_and_shuts_down_real_processes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("jobs")).unwrap();
        let exe = tmp.path().join("mvm");
        std::fs::write(&exe, FAKE_MVM).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = Arc::new(Store::open(&state.join("mvm.db")).unwrap());

        // Before the supervisor starts: two records a dead daemon left
        // running. One's process still runs in its job's directory, with its
        // staged images; the other's pid is now some unrelated process.
        let old = machine_dir(&state, "old");
        std::fs::create_dir_all(old.join("mvm-job-fake")).unwrap();
        let mut orphan = Command::new("sleep").arg("60").env("TMPDIR", &old).spawn().unwrap();
        let mut unrelated = Command::new("sleep").arg("60").env("TMPDIR", tmp.path()).spawn().unwrap();
        for (id, pid) in [("old", orphan.id()), ("other", unrelated.id())] {
            store.insert(&launch(id, &[], None).record).unwrap();
            store.set_running(id, pid as i32, 2.0).unwrap();
        }
        // What recover goes by: the orphan's environment names its job's
        // directory (a dead daemon's children have long been running).
        wait_until("the orphan's environment is readable", || runs_in(orphan.id() as i32, &old));
        assert_eq!(recover(&store, &state).unwrap(), 2);
        use std::os::unix::process::ExitStatusExt;
        let mut orphan_end = None;
        wait_until("recover kills the orphan", || {
            orphan_end = orphan.try_wait().unwrap();
            orphan_end.is_some()
        });
        assert_eq!(orphan_end.unwrap().signal(), Some(libc::SIGKILL), "the orphan is killed");
        assert!(unrelated.try_wait().unwrap().is_none(), "a process that is not the job's is left alone");
        unrelated.kill().unwrap();
        unrelated.wait().unwrap();
        for id in ["old", "other"] {
            let record = record_of(&store, id);
            assert_eq!((record.state, record.exit.unwrap().reason.as_str()), (State::Lost, "lost"));
        }
        assert!(!staged(&old), "a lost job's staged images are removed");
        assert_eq!(recover(&store, &state).unwrap(), 0, "lost is an end");

        let config = SupervisorConfig { exe, kvm_device: "/dev/null".into(), state_dir: state.clone(), max_running: 2 };
        let supervisor = Supervisor::start(config, Arc::clone(&store)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let start = |id: &str, args: &[&str], outputs| runtime.block_on(supervisor.launch(launch(id, args, outputs)));

        let a = start("a", &["stage"], None).unwrap();
        let pid = a.pid.expect("a started machine has a pid");
        assert_eq!(
            (a.state, record_of(&store, "a").state, record_of(&store, "a").pid),
            (State::Running, State::Running, Some(pid))
        );
        assert_eq!(std::fs::read_to_string(machine_dir(&state, "a").join("job.toml")).unwrap(), "# job");
        assert!(supervisor.is_live("a") && !supervisor.is_live("old"));
        assert_eq!((supervisor.running(), supervisor.max_running()), (1, 2));
        wait_until("the job stages its images", || staged(&machine_dir(&state, "a")));
        let usage = supervisor.live_usage("a").expect("a live machine's usage");
        assert!(usage.max_rss_kib > 0 && usage.rss_kib.is_some_and(|kib| kib > 0), "{usage:?}");
        assert_eq!(supervisor.live_usage("old"), None);

        supervisor.control(&a, Action::Pause).unwrap();
        assert_eq!(supervisor.record("a").unwrap().unwrap().state, State::Paused);
        wait_until("SIGSTOP stops it", || stopped(pid));
        supervisor.control(&a, Action::Pause).unwrap();
        supervisor.control(&a, Action::Resume).unwrap();
        assert_eq!(record_of(&store, "a").state, State::Running);
        wait_until("SIGCONT resumes it", || !stopped(pid));
        supervisor.control(&a, Action::Resume).unwrap();
        assert_eq!(record_of(&store, "a").state, State::Running);

        start("b", &["stage"], None).unwrap();
        let refused = start("c", &["stage"], None).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.error);
        assert!(store.get("c").unwrap().is_none() && !machine_dir(&state, "c").exists(), "nothing half-created");
        assert_eq!(supervisor.delete(&a, false).unwrap_err().status, StatusCode::CONFLICT, "a live job stays");

        supervisor.control(&a, Action::Kill).unwrap();
        wait_until("the killed job's end is recorded", || record_of(&store, "a").state.ended());
        let killed = record_of(&store, "a");
        assert_eq!((killed.state, killed.exit.clone().unwrap().message.as_str()), (State::Killed, "killed on request"));
        assert!(killed.usage.is_some_and(|u| u.max_rss_kib > 0));
        assert!(!supervisor.is_live("a") && supervisor.running() == 1);
        assert!(!staged(&machine_dir(&state, "a")), "a killed job's staged images are removed");
        assert_eq!(supervisor.control(&killed, Action::Resume).unwrap_err().status, StatusCode::CONFLICT);

        // A job killed while writing back a rw mount: its staging copy goes,
        // the tree stays.
        let tree = tmp.path().join("rw-tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("kept"), "k").unwrap();
        let staging = tmp.path().join(".rw-tree.mvm-0123456789abcdef");
        std::fs::create_dir(&staging).unwrap();
        let mut writing = launch("e", &["stage"], None);
        writing.record.spec =
            serde_json::json!({ "files": { "mounts": [{ "host": tree, "guest": "/rw", "mode": "rw" }] } });
        let writing = runtime.block_on(supervisor.launch(writing)).unwrap();
        supervisor.control(&writing, Action::Kill).unwrap();
        wait_until("the killed writer's end is recorded", || record_of(&store, "e").state.ended());
        assert!(!staging.exists(), "the staging copy is removed");
        assert_eq!(std::fs::read(tree.join("kept")).unwrap(), b"k");

        let outputs = tmp.path().join("outputs-d");
        std::fs::create_dir(&outputs).unwrap();
        start("d", &["exit", "3"], Some(outputs.clone())).unwrap();
        wait_until("the job that exits is reaped", || record_of(&store, "d").state.ended());
        let exited = record_of(&store, "d");
        assert_eq!((exited.state, exited.exit.clone().unwrap().status), (State::Exited, Some(3)));
        assert_eq!(exited.report.as_ref().unwrap()["end"], "exit 3");
        let cpu_s = exited.usage.unwrap().cpu_s;
        assert!((0.001..1.0).contains(&cpu_s), "user + system time of the child and its own children: {cpu_s} s");
        let listed: Vec<String> =
            supervisor.list(Kind::Job, Some(State::Exited)).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(listed, ["d"]);
        assert_eq!(supervisor.delete(&exited, true), Ok(true), "its outputs were removed");
        assert!(!outputs.exists() && !machine_dir(&state, "d").exists() && store.get("d").unwrap().is_none());
        assert_eq!(supervisor.delete(&exited, true).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(supervisor.delete(&killed, false), Ok(false), "outputs are kept unless asked");
        // A record that says it runs, with no process of this supervisor's.
        let stale = launch("stale", &[], None).record;
        store.insert(&stale).unwrap();
        store.set_running("stale", 1, 3.0).unwrap();
        assert_eq!(supervisor.delete(&stale, false).unwrap_err().status, StatusCode::CONFLICT);
        assert!(!supervisor.is_live("stale"));

        let asked = Instant::now();
        // With no child left to wait for, the reaper sleeps until a launch.
        let reaper = reaper_cpu();
        std::thread::sleep(Duration::from_millis(500));
        let spent = reaper_cpu() - reaper;
        assert!(spent < Duration::from_millis(50), "an idle reaper used {spent:?} of CPU");

        // The reaper records b's end in the store, which it cannot do while
        // another connection holds the database's write lock: a shutdown that
        // waits for the end to be recorded lasts at least as long as the lock.
        const HELD: Duration = Duration::from_millis(300);
        let blocker = rusqlite::Connection::open(state.join("mvm.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(HELD);
            blocker.execute_batch("COMMIT").unwrap();
        });
        let shutting_down = Instant::now();
        supervisor.shutdown();
        let took = shutting_down.elapsed();
        release.join().unwrap();
        assert!(took >= HELD, "shutdown returned after {took:?}, before b's end could be recorded");
        assert_eq!(supervisor.running(), 0);
        assert_eq!(record_of(&store, "b").state, State::Lost, "shutdown waits for the end to be recorded");
        assert!(
            asked.elapsed() < SHUTDOWN_WAIT / 2,
            "shutdown waited {:?}, not just until b was reaped",
            asked.elapsed()
        );
        let refused = start("e", &["stage"], None).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);

        // With no child left to wait for, the reaper sleeps until a launch.
        let reaper = reaper_cpu();
        std::thread::sleep(Duration::from_millis(500));
        let spent = reaper_cpu() - reaper;
        assert!(spent < Duration::from_millis(50), "an idle reaper used {spent:?} of CPU");
    }

    #[test]
    fn staging_left_by_a_killed_job_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mvm-job-abc123")).unwrap();
        std::fs::write(dir.path().join("mvm-job-abc123/job.img"), b"x").unwrap();
        std::fs::write(dir.path().join("stdout.log"), b"kept").unwrap();
        remove_staging(dir.path());
        assert!(!dir.path().join("mvm-job-abc123").exists());
        assert!(dir.path().join("stdout.log").exists());
    }
}
