//! `mvm up --remote SOCKET job.toml`: the job runs on a `mvm serve` daemon,
//! and this process behaves like a local `mvm up` of it: the job file is
//! checked here first, the job's stdout and stderr stream to ours, the same
//! end line (or `--json` object) is printed, and the exit status is the
//! same. ^C kills the job, as it would a local one.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use mvm_api::client::{Client, ClientError};
use mvm_api::job::{HostLimits, JobSpec, Kernel};
use serde_json::{json, Map, Value};

use crate::status;

/// What a shell reports for a process killed by SIGKILL: a killed remote
/// job ends the client the way a killed local `mvm up` would.
const KILLED: u8 = 128 + 9;

pub fn up(job_file: &Path, json: bool, socket: &Path) -> anyhow::Result<u8> {
    let spec = JobSpec::load(job_file, &HostLimits::detect())?;
    let client = Client::new(socket)?;
    let created = client.create_job(&request(&spec)).map_err(|e| match e {
        ClientError::Refused { error, .. } => anyhow::anyhow!("mvm serve refused the job: {error}"),
        other => anyhow::Error::new(other),
    })?;
    let id = created["id"].as_str().context("mvm serve's answer has no job id")?.to_owned();
    tracing::info!(%id, "job created on mvm serve");
    client.follow_logs(&id, &mut std::io::stdout(), &mut std::io::stderr(), true)?;
    let record = client.job(&id)?;
    Ok(report(&record, &spec.name, json))
}

/// The job as a `POST /v1/jobs` body: every field resolved, every path
/// absolute.
fn request(spec: &JobSpec) -> Value {
    let mut guest = Map::new();
    let kernel = match &spec.kernel {
        Kernel::Builtin => json!("builtin"),
        Kernel::Path(path) => json!(absolute_file(path).to_string_lossy()),
    };
    guest.insert("kernel".into(), kernel);
    guest.insert("memory_mib".into(), json!(spec.memory_mib));
    guest.insert("vcpus".into(), json!(spec.vcpus));
    if let Some(quota) = spec.cpu_quota {
        guest.insert("cpu_quota".into(), json!(quota));
    }
    guest.insert("timeout_s".into(), json!(spec.timeout.as_secs_f64()));
    let env: Map<String, Value> = spec.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut files = Map::new();
    if let Some(inputs) = &spec.inputs {
        let inputs: Vec<_> = inputs.iter().map(|i| i.given.to_string_lossy().into_owned()).collect();
        files.insert("inputs".into(), json!(inputs));
    }
    if let Some(outputs) = &spec.outputs {
        files.insert("outputs".into(), json!(normalize(outputs).to_string_lossy()));
    }
    files.insert("outputs_max_mib".into(), json!(spec.outputs_max_bytes >> 20));
    if !spec.mounts.is_empty() {
        let mounts: Vec<Value> = spec
            .mounts
            .iter()
            .map(|m| json!({ "host": m.host.to_string_lossy(), "guest": m.guest, "mode": if m.read_only { "ro" } else { "rw" } }))
            .collect();
        files.insert("mounts".into(), Value::Array(mounts));
    }
    files.insert("disk_mib".into(), json!(spec.disk_mib));
    let mut body = json!({
        "name": spec.name,
        "guest": guest,
        "run": { "wasm": absolute_file(&spec.wasm).to_string_lossy(), "args": spec.args, "env": env },
        "files": files,
    });
    // A remote job's stdin is a file the daemon opens under its files root;
    // mvm's own stdin is not sent.
    if let Some(stdin) = &spec.stdin {
        body["run"]["stdin"] = json!(absolute_file(stdin).to_string_lossy());
    }
    if let Some(network) = &spec.network {
        body["network"] = json!({
            "enabled": true,
            "tap": network.tap,
            "address": network.address.map(|a| format!("{}/{}", a.addr, a.prefix_len)),
            "gateway": network.gateway.map(|g| g.to_string()),
        });
    }
    body
}

/// An existing file's canonical directory and its name as given (the name
/// is the guest's argv[0] or `/in` name).
fn absolute_file(path: &Path) -> PathBuf {
    match (path.parent().and_then(|p| std::fs::canonicalize(p).ok()), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => normalize(path),
    }
}

/// `path` without `.` and `..` components (the daemon refuses `..`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Prints how the job ended, as `mvm up` would, and gives its exit status.
fn report(record: &Value, name: &str, json: bool) -> u8 {
    let status = record["exit"]["status"].as_u64().and_then(|s| u8::try_from(s).ok());
    if let Some(report) = record.get("report").filter(|r| r.is_object()) {
        if json {
            eprintln!("{report}");
        } else {
            eprintln!("mvm: job {name} ended: {}", report["end"].as_str().unwrap_or_default());
            if let Some(error) = report["outputs"]["error"].as_str() {
                eprintln!("mvm: outputs not fully collected: {error}");
            }
            for mount in report["mounts"].as_array().into_iter().flatten() {
                if let Some(error) = mount["error"].as_str() {
                    let (guest, host) = (mount["guest"].as_str().unwrap_or("?"), mount["host"].as_str().unwrap_or("?"));
                    eprintln!("mvm: mount {guest} not written back to {host}: {error}");
                }
            }
        }
        return status.unwrap_or(status::MVM_ERROR);
    }
    // No report: mvm could not run the job (its error is already on
    // stderr, as in a local run), or the job was killed or lost.
    let state = record["state"].as_str().unwrap_or_default();
    let message = record["exit"]["message"].as_str().unwrap_or(state);
    let code = match state {
        "failed" => return status.unwrap_or(status::MVM_ERROR),
        "killed" => KILLED,
        _ => status::MVM_ERROR,
    };
    if json {
        let elapsed = record["ended_at"].as_f64().zip(record["started_at"].as_f64()).map(|(e, s)| e - s);
        let outputs = json!({ "dir": record["outputs"]["dir"], "files": [], "bytes": 0, "error": null });
        let line = json!({
            "job": name, "reason": state, "status": code, "end": message, "elapsed_s": elapsed, "outputs": outputs,
        });
        eprintln!("{line}");
    } else {
        eprintln!("mvm: job {name} ended: {message}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_stdin_goes_to_the_daemon_as_an_absolute_path_and_only_when_given() {
        use mvm_api::job::HostLimits;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("m.wat"), "(module)").unwrap();
        std::fs::write(root.join("in.txt"), "x").unwrap();
        let host = HostLimits { memory_mib: 1024, cpus: 1 };
        let parse = |text: &str| JobSpec::parse(text, &root.join("job.toml"), &host).unwrap();
        let body = request(&parse("[run]\nwasm = \"m.wat\"\nstdin = \"in.txt\"\n"));
        assert_eq!(body["run"]["stdin"], json!(root.join("in.txt")));
        let body = request(&parse("[run]\nwasm = \"m.wat\"\n"));
        assert!(body["run"].get("stdin").is_none(), "{body}");
    }

    #[test]
    fn an_input_that_is_a_symlink_goes_to_the_daemon_under_the_name_the_job_file_gave() {
        use mvm_api::job::HostLimits;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("m.wat"), "(module)").unwrap();
        std::fs::write(root.join("v3.csv"), "x").unwrap();
        std::os::unix::fs::symlink("v3.csv", root.join("latest.csv")).unwrap();
        let host = HostLimits { memory_mib: 1024, cpus: 1 };
        let text = "[run]\nwasm = \"m.wat\"\n[files]\ninputs = [\"latest.csv\"]\n";
        let spec = JobSpec::parse(text, &root.join("job.toml"), &host).unwrap();
        assert_eq!(request(&spec)["files"]["inputs"], json!([root.join("latest.csv")]));
    }

    #[test]
    fn normalize_drops_dot_and_dot_dot() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
    }

    #[test]
    fn a_killed_or_lost_job_reports_without_mvm_ups_report() {
        let exit = json!({ "reason": "killed", "status": null, "message": "killed on request" });
        let killed = json!({ "state": "killed", "exit": exit });
        assert_eq!(report(&killed, "j", false), KILLED);
        let lost = json!({ "state": "lost", "exit": { "reason": "lost", "status": null, "message": "lost" } });
        assert_eq!(report(&lost, "j", true), status::MVM_ERROR);
        let ran = json!({ "state": "exited", "exit": { "status": 3 }, "report": { "end": "exit 3", "outputs": {} } });
        assert_eq!(report(&ran, "j", false), 3);
    }
}
