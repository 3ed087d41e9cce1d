//! What the daemon knows about one machine (a job's VM or a plain VM), and
//! how the API shows it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::{json, Value};

/// A job is a VM with a WebAssembly module attached; both share one table and
/// one lifecycle, and differ only in the child process that runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `mvm up --json job.toml`.
    Job,
    /// `mvm boot ...`.
    Vm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Vm => "vm",
        }
    }

    /// The API's path segment for this kind: `jobs` or `vms`.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Vm => "vms",
        }
    }
}

/// `created` → `running` ⇄ `paused` → `exited` | `failed` | `killed` | `lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded, its child not yet started (never seen once a create returns).
    Created,
    Running,
    /// Its child is stopped (SIGSTOP): no vCPU runs. Its wall-clock timeout
    /// still counts down.
    Paused,
    /// The job or VM came to an end of its own: exit, trap, out of memory,
    /// guest crash, timeout.
    Exited,
    /// mvm could not run it (bad kernel, no KVM, ...), or its monitor died.
    Failed,
    /// Ended by a kill (jobs) or stop (VMs) request.
    Killed,
    /// The daemon stopped while it ran; its VM is gone.
    Lost,
}

pub const STATES: [State; 7] =
    [State::Created, State::Running, State::Paused, State::Exited, State::Failed, State::Killed, State::Lost];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Killed => "killed",
            State::Lost => "lost",
        }
    }

    pub fn ended(self) -> bool {
        matches!(self, State::Exited | State::Failed | State::Killed | State::Lost)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A name that is not one of [`STATES`].
    #[error("unknown state {0:?}")]
    Unknown(String),
}

impl FromStr for State {
    type Err = StateError;

    fn from_str(s: &str) -> Result<State, StateError> {
        STATES.into_iter().find(|state| state.as_str() == s).ok_or_else(|| StateError::Unknown(s.to_owned()))
    }
}

/// The limits a machine runs under, as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory_mib: u64,
    pub vcpus: u64,
    pub cpu_quota: Option<f64>,
    pub timeout_s: Option<f64>,
    /// Jobs only.
    pub outputs_max_mib: Option<u64>,
}

/// How a machine ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// `exit`, `trap`, `out of memory`, `guest crashed`, `timeout` (as `mvm up`
    /// reports them), or `error`, `signal`, `killed`, `lost`.
    pub reason: String,
    /// The exit status a local `mvm up`/`mvm boot` would have had; `None`
    /// when the monitor did not exit by itself.
    pub status: Option<i32>,
    /// One line: `exit 0`, `timeout after 30 s`, mvm's error, ...
    pub message: String,
}

/// CPU time and memory of a machine's monitor process (its vCPU threads
/// included): from wait4's rusage once it ended, from /proc while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub cpu_s: f64,
    pub max_rss_kib: u64,
    /// Only while it runs.
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// The request as accepted: paths absolute, defaults not filled in.
    pub spec: Value,
    pub state: State,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub pid: Option<i32>,
    pub limits: Limits,
    /// Jobs only: where what the job wrote under /out lands.
    pub outputs_dir: Option<PathBuf>,
    pub exit: Option<Exit>,
    /// Jobs only: `mvm up --json`'s report, once the job ended.
    pub report: Option<Value>,
    /// Jobs only: where the job's stderr log ends and `mvm up`'s report
    /// begins, once the job ended.
    pub stderr_end: Option<u64>,
    /// Set when the machine ended.
    pub usage: Option<Usage>,
}

impl Record {
    /// The API's view. `live` is the usage of a machine that still runs.
    pub fn to_json(&self, live: Option<Usage>) -> Value {
        let base = format!("/v1/{}/{}", self.kind.collection(), self.id);
        let links = match self.kind {
            Kind::Job => json!({
                "self": base,
                "stdout": format!("{base}/logs?stream=stdout"),
                "stderr": format!("{base}/logs?stream=stderr"),
            }),
            Kind::Vm => json!({ "self": base, "console": format!("{base}/console") }),
        };
        let usage = live
            .or(self.usage)
            .map(|u| json!({ "cpu_s": u.cpu_s, "max_rss_kib": u.max_rss_kib, "rss_kib": u.rss_kib }));
        let exit = self.exit.as_ref().map(|e| json!({ "reason": e.reason, "status": e.status, "message": e.message }));
        let outputs = match (&self.outputs_dir, &self.report) {
            (None, _) => Value::Null,
            (Some(dir), Some(report)) => {
                let mut outputs = report.get("outputs").cloned().unwrap_or_else(|| json!({}));
                if let Some(map) = outputs.as_object_mut() {
                    map.insert("dir".into(), json!(dir.to_string_lossy()));
                }
                outputs
            }
            (Some(dir), None) => json!({ "dir": dir.to_string_lossy(), "files": [], "bytes": 0, "error": null }),
        };
        let l = &self.limits;
        json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "name": self.name,
            "state": self.state.as_str(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pid": if self.state.ended() { None } else { self.pid },
            "limits": {
                "memory_mib": l.memory_mib,
                "vcpus": l.vcpus,
                "cpu_quota": l.cpu_quota,
                "timeout_s": l.timeout_s,
                "outputs_max_mib": l.outputs_max_mib,
            },
            "usage": usage,
            "exit": exit,
            "report": self.report,
            "outputs": outputs,
            "spec": self.spec,
            "links": links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_final_ones_have_ended() {
        for state in STATES {
            assert_eq!(state.as_str().parse::<State>().unwrap(), state);
        }
        assert!("sleeping".parse::<State>().is_err());
        let ended: Vec<_> = STATES.into_iter().filter(|s| s.ended()).map(State::as_str).collect();
        assert_eq!(ended, ["exited", "failed", "killed", "lost"]);
    }

    #[test]
    fn a_job_record_shows_its_outputs_and_links() {
        let record = Record {
            id: "abc".into(),
            kind: Kind::Job,
            name: "hello".into(),
            spec: json!({}),
            state: State::Exited,
            created_at: 1.0,
            started_at: Some(1.5),
            ended_at: Some(2.0),
            pid: Some(7),
            limits: Limits {
                memory_mib: 16,
                vcpus: 1,
                cpu_quota: None,
                timeout_s: Some(30.0),
                outputs_max_mib: Some(64),
            },
            outputs_dir: Some("/state/outputs/abc".into()),
            exit: Some(Exit { reason: "exit".into(), status: Some(0), message: "exit 0".into() }),
            report: Some(json!({ "outputs": { "dir": "/x", "files": ["a"], "bytes": 3, "error": null } })),
            stderr_end: Some(0),
            usage: Some(Usage { cpu_s: 0.1, max_rss_kib: 5000, rss_kib: None }),
        };
        let view = record.to_json(None);
        assert_eq!(view["state"], "exited");
        assert_eq!(view["pid"], Value::Null, "an ended machine has no process");
        assert_eq!(view["outputs"]["dir"], "/state/outputs/abc");
        assert_eq!(view["outputs"]["files"], json!(["a"]));
        assert_eq!(view["links"]["stderr"], "/v1/jobs/abc/logs?stream=stderr");
        assert_eq!(view["usage"]["max_rss_kib"], 5000);
        assert_eq!(view["exit"]["status"], 0);
    }
}
