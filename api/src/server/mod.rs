//! `mvm serve`: an HTTP/1.1 JSON API on a Unix socket that runs jobs and
//! plain VMs, hundreds at once. The endpoints are in `api/openapi.json`
//! (also served at `GET /v1/openapi.json`).
//!
//! # One child process per VM
//!
//! Each job runs as `mvm up --json <state>/jobs/<id>/job.toml`, each plain
//! VM as `mvm boot ...`: the same binary as the daemon
//! (`std::env::current_exe()`), with stdout and stderr going to
//! `stdout.log` and `stderr.log` in the machine's state directory, and
//! `TMPDIR` pointing there too, so that the images `mvm up` stages live
//! (and die) with the machine. A job is a VM with a WebAssembly module
//! attached: both kinds share one table, one lifecycle, one supervisor;
//! only the command line differs.
//!
//! Why processes rather than a thread group per VM in the daemon:
//!
//! - **Crash isolation.** A monitor that crashes, aborts or is killed by
//!   the OOM killer takes only its own VM down; the daemon records it as
//!   `failed` and goes on. A VM in a thread group would share the daemon's
//!   address space, so one monitor bug could corrupt or abort them all.
//! - **Control by signal.** `SIGSTOP` stops every vCPU thread of a VM at
//!   once, wherever it is, and a stopped process uses no CPU (pause);
//!   `SIGCONT` resumes it; `SIGKILL` always works, even on a wedged or
//!   paused VM, and the kernel then frees everything the VM held (guest
//!   memory, KVM file descriptors, TAPs). Threads offer none of this
//!   without the monitor's cooperation.
//! - **Accounting.** `wait4`'s rusage gives a VM's CPU time and peak RSS
//!   exactly; `/proc/<pid>` gives them while it runs.
//! - **One validation and one code path.** A job through the API runs
//!   exactly as `mvm up` runs it locally, and a job file written by the
//!   daemon is checked again by the same code.
//!
//! The price is a fork and exec per VM (about a millisecond) and a few MiB
//! of RSS per monitor process, small beside a guest's RAM.
//!
//! The children are started with `PR_SET_PDEATHSIG(SIGKILL)` so that no VM
//! outlives the daemon. The kernel ties that signal to the *thread* that
//! forked the child, not to the process, which is why a single long-lived
//! launcher thread does every fork (a tokio blocking-pool thread, which
//! exits when idle, would kill its children with it).
//!
//! # Threads
//!
//! - **tokio runtime** (one worker per core): accepts connections, parses
//!   requests, answers from the store, and streams logs by polling the log
//!   files (every 100 ms while there is nothing new).
//! - **launcher thread** (`supervisor.rs`): forks and execs every child;
//!   handlers hand it a checked request over a channel and await its reply.
//!   Launches are thus serialized, which also makes the `--max-running`
//!   check exact.
//! - **reaper thread**: blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, then
//!   reaps the child with `wait4` (for its rusage) and records its end,
//!   both under the live-map lock, so that a pause, resume or kill is never
//!   sent to a pid that has been reaped and may have been recycled. With no
//!   children it sleeps on a channel until the launcher starts one.
//!
//! SQLite sits behind one mutex (`store.rs`); lock order is live map, then
//! database.
//!
//! # Races, and what closes them
//!
//! - A child that exits before it is registered: the launcher holds the
//!   live lock from before the fork until the pid is in the map, and the
//!   reaper takes that lock before it reaps, so it always finds the pid.
//! - A log follower that sees the child gone reads the record under the
//!   same lock: the end (and where a job's report starts in its stderr) is
//!   written before the pid leaves the map. After that no more log data can
//!   appear, so the follower sends what is left and ends.
//! - Pausing stops the vCPUs, not the clock: a paused job's wall-clock
//!   `timeout_s` keeps running, and it times out at once when resumed past
//!   it.
//! - The daemon killed outright (SIGKILL, a crash): its children die of
//!   their death signal; at the next start every record still `created`,
//!   `running` or `paused` becomes `lost`, any process of it that survived
//!   (recognised by its TMPDIR) is killed, and staged images are removed.
//!   On SIGTERM or SIGINT the daemon kills its children itself and records
//!   them as `lost` before it exits.
//!
//! # Input
//!
//! Nothing a client sends can panic the daemon: bodies are parsed into
//! typed structs with unknown fields refused, every value is range-checked,
//! and every host path must resolve (symlinks followed) under
//! `--files-root`. A request is checked completely before anything is
//! created; an error answers `{"error": "...", "field": "..."}` with 400
//! (bad value), 403 (a path outside the files root), 404, 409 (wrong state)
//! or 429 (`--max-running` reached).

mod logs;
pub mod record;
mod request;
mod routes;
pub mod store;
mod supervisor;

use std::fs::DirBuilder;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::job::HostLimits;
use request::RequestContext;
use routes::App;
use store::{Store, StoreError};
use supervisor::{Supervisor, SupervisorConfig, SupervisorError};

pub use routes::OPENAPI;

/// The default `--max-running`.
pub const DEFAULT_MAX_RUNNING: usize = 512;
/// How long open connections may take to finish once shutdown began.
const DRAIN: Duration = Duration::from_secs(5);

pub struct ServeConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Every host file a request names must be under this directory.
    pub files_root: PathBuf,
    pub max_running: usize,
    /// The mvm binary the children run.
    pub exe: PathBuf,
    pub kvm_device: PathBuf,
    /// The cap of the compiled-code cache in `<state_dir>/cache`.
    pub cache_max_mib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the state directory {}", .path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the files root {} is not an accessible directory", .path.display())]
    FilesRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Paths go into JSON records and job files, which hold UTF-8 only.
    #[error("the {what} {} is not a UTF-8 path", .path.display())]
    NotUtf8 { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("{} exists and is not a socket; not touching it", .0.display())]
    NotASocket(PathBuf),
    #[error("a daemon already answers on {}", .0.display())]
    InUse(PathBuf),
    #[error("cannot listen on {}", .path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] io::Error),
}

/// `$XDG_STATE_HOME/mvm`, else `~/.local/state/mvm`.
pub fn default_state_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from);
    let dir = xdg.filter(|d| d.is_absolute()).or_else(|| {
        let home = PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?);
        Some(home.join(".local").join("state"))
    })?;
    Some(dir.join("mvm"))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let state_dir = &config.state_dir;
    for dir in [state_dir.clone(), state_dir.join("jobs"), state_dir.join("outputs")] {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| ServeError::StateDir { path: dir.clone(), source })?;
    }
    let state_dir =
        std::fs::canonicalize(state_dir).map_err(|source| ServeError::StateDir { path: state_dir.clone(), source })?;
    let files_root = std::fs::canonicalize(&config.files_root)
        .and_then(|root| if root.is_dir() { Ok(root) } else { Err(io::ErrorKind::NotADirectory.into()) })
        .map_err(|source| ServeError::FilesRoot { path: config.files_root.clone(), source })?;
    for (what, path) in [("state directory", &state_dir), ("files root", &files_root)] {
        if path.to_str().is_none() {
            return Err(ServeError::NotUtf8 { what, path: path.clone() });
        }
    }
    let store = Arc::new(Store::open(&state_dir.join("mvm.db"))?);
    let lost = supervisor::recover(&store, &state_dir)?;
    if lost > 0 {
        warn!(count = lost, "machines that ran when the daemon last stopped are marked lost");
    }
    // Bound before any thread exists: binding sets the process-wide umask.
    let listener = bind(&config.socket)?;
    let supervisor = Supervisor::start(
        SupervisorConfig {
            exe: config.exe,
            kvm_device: config.kvm_device,
            state_dir: state_dir.clone(),
            max_running: config.max_running,
        },
        store,
    )?;
    let context =
        RequestContext { files_root, state_dir, host: HostLimits::detect(), cache_max_mib: config.cache_max_mib };
    let app = Arc::new(App { supervisor: Arc::new(supervisor), context });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mvm-api")
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(run(listener, app, &config.socket));
    if let Err(e) = std::fs::remove_file(&config.socket) {
        warn!(socket = %config.socket.display(), error = %e, "cannot remove the socket");
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run(listener: UnixListener, app: Arc<App>, socket: &Path) -> Result<(), ServeError> {
    let listen_err = |source| ServeError::Listen { path: socket.to_owned(), source };
    let listener = tokio::net::UnixListener::from_std(listener).map_err(listen_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(listen_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(listen_err)?;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = Arc::clone(&app.supervisor);
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => info!("SIGINT: shutting down"),
        }
        // Ending every machine ends every log follower too.
        let _ = tokio::task::spawn_blocking(move || supervisor.shutdown()).await;
        let _ = stopped_tx.send(());
    };
    info!(socket = %socket.display(), "listening");
    let server = axum::serve(listener, routes::router(app)).with_graceful_shutdown(shutdown);
    // Once shut down, open connections get DRAIN to finish.
    let drained = async {
        match stopped_rx.await {
            Ok(()) => tokio::time::sleep(DRAIN).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result.map_err(ServeError::Serve),
        () = drained => {
            warn!("connections still open after shutdown; closing them");
            Ok(())
        }
    }
}

/// Listens on `path` with mode 0600. An existing socket that a daemon
/// answers on is refused; one nobody answers on is stale and removed.
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(ServeError::NotASocket(path.to_owned())),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                warn!(socket = %path.display(), "removing a stale socket");
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            Err(e) => return Err(listen_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    // SAFETY: umask only swaps the process's file mode mask; no other
    // thread exists yet to create a file under the temporary mask.
    let previous = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above; restores the mask.
    unsafe { libc::umask(previous) };
    let listener = listener.map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}

/// A new machine id: 12 random hex digits.
fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_hex_digits_and_differ() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
