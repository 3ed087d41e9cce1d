//! `mvm serve` end to end, through a real HTTP/1.1 client on its Unix
//! socket: create, poll, logs (and follow), pause and resume (no CPU while
//! paused), kill, delete; records across a restart, with a lost job's files
//! removed; 50 jobs at once; every kind of bad request; a job's CPU quota;
//! plain VMs, which count toward `--max-running` as jobs do; `mvm up
//! --remote`. Examples run from temporary copies, never in place.
//!
//! The client is a few lines of HTTP/1.1 over `UnixStream` (one request per
//! connection, chunked bodies decoded), so that what is tested is the wire
//! format any client sees.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{mvm, text};
use serde_json::{json, Value};

const HELLO: &str = "hello from a WebAssembly job in its own VM\n";

/// A files root with copies of the examples the tests use, plus `spin.wat`
/// (a CPU-bound loop that never ends) and `nap.wat` (sleeps 60 s).
fn files_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for name in ["hello", "outputs", "memhog", "sleeper"] {
        common::copy_example(name, root.path());
    }
    let sleeper = std::fs::read_to_string(root.path().join("sleeper/sleeper.wat")).unwrap();
    assert!(sleeper.contains("(i64.const 2000000000)"), "sleeper.wat sleeps 2 s");
    let nap = sleeper.replace("(i64.const 2000000000)", "(i64.const 60000000000)");
    std::fs::write(root.path().join("nap.wat"), nap).unwrap();
    let spin = r#"(module (memory (export "memory") 1)
        (func (export "_start") (loop $forever (br $forever))))"#;
    std::fs::write(root.path().join("spin.wat"), spin).unwrap();
    root
}

/// A `mvm serve` child with its own socket and state directory.
struct Daemon {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (socket, state) = (dir.path().join("api.sock"), dir.path().join("state"));
        let child = spawn_serve(&socket, &state, root, extra);
        let daemon = Daemon { child, socket, state, root: root.to_owned(), _dir: dir };
        daemon.wait_ready();
        daemon
    }

    /// Stops this daemon with `signal` and starts another on the same socket
    /// and state directory.
    fn restart(mut self, signal: i32) -> Daemon {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child's.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
        let status = self.child.wait().unwrap();
        assert!(status.code().is_some() || signal == libc::SIGKILL, "{status:?}");
        self.child = spawn_serve(&self.socket, &self.state, &self.root, &[]);
        self.wait_ready();
        self
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "mvm serve did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, bytes) = http(&self.socket, method, path, body.map(|b| b.to_string()).as_deref());
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", text(&bytes)));
        (status, value)
    }

    fn create(&self, body: Value) -> String {
        let (status, record) = self.call("POST", "/v1/jobs", Some(&body));
        assert_eq!(status, 201, "{record}");
        record["id"].as_str().unwrap().to_owned()
    }

    fn job(&self, id: &str) -> Value {
        let (status, record) = self.call("GET", &format!("/v1/jobs/{id}"), None);
        assert_eq!(status, 200, "{record}");
        record
    }

    /// Polls a job (or VM, by its collection) until it has ended.
    fn wait_end(&self, collection: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, record) = self.call("GET", &format!("/v1/{collection}/{id}"), None);
            assert_eq!(status, 200, "{record}");
            if ["exited", "failed", "killed", "lost"].contains(&record["state"].as_str().unwrap()) {
                return record;
            }
            assert!(Instant::now() < deadline, "{id} did not end: {record}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `mvm up` staged for a job (its images' directory), still there.
    fn staged(&self, id: &str) -> Vec<String> {
        let dir = std::fs::read_dir(self.state.join("jobs").join(id)).unwrap();
        let names = dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|n| n.starts_with("mvm-job-")).collect()
    }

    /// Waits until a running job has staged its images.
    fn wait_staged(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.staged(id).is_empty() {
            assert!(Instant::now() < deadline, "job {id} staged nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self, id: &str, query: &str) -> String {
        let (status, bytes) = http(&self.socket, "GET", &format!("/v1/jobs/{id}/logs?{query}"), None);
        assert_eq!(status, 200, "{}", text(&bytes));
        text(&bytes)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(socket: &Path, state: &Path, root: &Path, extra: &[&str]) -> Child {
    mvm()
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .arg("--files-root")
        .arg(root)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(state))
        .spawn()
        .expect("cannot start mvm serve")
}

/// The daemon's own log, beside its state directory (appended across
/// restarts).
fn log_file(state: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(state.with_extension("log")).unwrap()
}

/// One HTTP/1.1 exchange: (status, body), a chunked body decoded.
fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: mvm\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = text(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let mut rest = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, rest.to_vec());
    }
    let mut decoded = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(text(&rest[..line_end]).trim(), 16).expect("a hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (status, decoded);
        }
        decoded.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU time, in nanoseconds, that the threads of `pid` alive now have run,
/// from each one's schedstat: exact, where /proc/PID/stat counts 10 ms ticks.
fn cpu_ns(pid: u64) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let stats = tasks.filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("schedstat")).ok());
    stats.map(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).expect("a schedstat line")).sum()
}

/// Whether a process runs (not gone, not a zombie).
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => false,
    }
}

fn hello() -> Value {
    json!({ "guest": { "memory_mib": 16, "timeout_s": 30 }, "run": { "wasm": "hello/hello.wat" } })
}

#[test]
fn jobs_compile_into_the_daemons_cache_before_their_vm_starts() {
    // No KVM needed: the children's KVM device does not exist, so a job
    // ends after compiling, when it asks for its VM.
    let root = files_root();
    let daemon = Daemon::start(root.path(), &["--kvm-device=/nonexistent/kvm", "--cache-max-mib=64"]);
    let id = daemon.create(hello());
    let record = daemon.wait_end("jobs", &id);
    assert_eq!(record["state"], "failed", "{record}");
    assert!(record["exit"]["message"].as_str().unwrap().contains("cannot run the job's VM"), "{record}");
    let cached = std::fs::read_dir(daemon.state.join("cache/compiled")).unwrap();
    let names: Vec<String> = cached.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.len() == 1 && names[0].ends_with(".cwasm"), "{names:?}");

    std::fs::write(root.path().join("bad.wat"), "(module (func (result i32)))").unwrap();
    let id = daemon.create(json!({ "run": { "wasm": "bad.wat" } }));
    let record = daemon.wait_end("jobs", &id);
    assert_eq!(record["state"], "failed", "{record}");
    assert!(record["exit"]["message"].as_str().unwrap().contains("bad.wat: invalid module: "), "{record}");
    assert_eq!(std::fs::read_dir(daemon.state.join("cache/compiled")).unwrap().count(), 1, "nothing more cached");
}

fn nap() -> Value {
    json!({ "guest": { "memory_mib": 16, "timeout_s": 120 }, "run": { "wasm": "nap.wat" } })
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_job_runs_and_its_record_logs_and_deletion_work() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is the user's alone");

    let (status, created) = daemon.call("POST", "/v1/jobs", Some(&hello()));
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["kind"].as_str(), created["name"].as_str()), (Some("job"), Some("hello")));
    assert_eq!(created["limits"]["memory_mib"], 16);
    let id = created["id"].as_str().unwrap();
    let record = daemon.wait_end("jobs", id);
    assert_eq!(record["state"], "exited", "{record}");
    assert_eq!(record["exit"], json!({ "reason": "exit", "status": 0, "message": "exit 0" }));
    assert!(record["usage"]["cpu_s"].as_f64().unwrap() > 0.0, "{record}");
    assert!(record["usage"]["max_rss_kib"].as_u64().unwrap() > 1000, "{record}");
    assert!(record["ended_at"].as_f64().unwrap() >= record["started_at"].as_f64().unwrap());
    assert_eq!(record["pid"], Value::Null);
    assert_eq!(daemon.logs(id, "stream=stdout"), HELLO);
    assert_eq!(daemon.logs(id, "stream=stderr"), "", "mvm up's report is the record's, not the log's");
    assert_eq!(daemon.logs(id, "follow=true"), HELLO, "following an ended job gives its whole log");
    let cached = std::fs::read_dir(daemon.state.join("cache/compiled")).unwrap().count();
    assert_eq!(cached, 1, "the job compiled its module into the daemon's own cache");

    let (status, list) = daemon.call("GET", "/v1/jobs?state=exited", None);
    assert_eq!(status, 200);
    assert!(list["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id), "{list}");
    let (_, running) = daemon.call("GET", "/v1/jobs?state=running", None);
    assert!(running["jobs"].as_array().unwrap().iter().all(|j| j["id"] != id));

    let (status, deleted) = daemon.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)), "{deleted}");
    assert_eq!(daemon.call("GET", &format!("/v1/jobs/{id}"), None).0, 404);
    assert!(!daemon.state.join("jobs").join(id).exists(), "its state directory is gone");

    let (status, health) = daemon.call("GET", "/v1/health", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, openapi) = daemon.call("GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.0"));
    for path in ["/v1/jobs", "/v1/jobs/{id}/logs", "/v1/jobs/{id}/kill", "/v1/vms/{id}/console", "/v1/health"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} is documented");
    }
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn logs_follow_streams_until_the_job_ends() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let id = daemon.create(json!({ "guest": { "memory_mib": 16 }, "run": { "wasm": "sleeper/sleeper.wat" } }));
    let started = Instant::now();
    let stdout = daemon.logs(&id, "stream=stdout&follow=true");
    assert_eq!(stdout, "slept 2 s\n");
    assert!(started.elapsed() >= Duration::from_millis(1500), "the follow waited for the job");
    let record = daemon.job(&id);
    assert_eq!(record["state"], "exited", "a follow ends when the job does: {record}");
    assert_eq!(daemon.logs(&id, "stream=stderr&follow=true"), "");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn pause_stops_all_cpu_use_until_resume_and_kill_ends_the_job() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let id = daemon.create(json!({ "guest": { "memory_mib": 16, "timeout_s": 120 }, "run": { "wasm": "spin.wat" } }));
    let pid = daemon.job(&id)["pid"].as_u64().expect("a running job has a pid");
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(cpu_ticks(pid) > before, "the spinning job uses CPU");

    let (status, paused) = daemon.call("POST", &format!("/v1/jobs/{id}/pause"), None);
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")), "{paused}");
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cpu_ticks(pid), before, "a paused job uses no CPU");
    assert_eq!(daemon.call("POST", &format!("/v1/jobs/{id}/pause"), None).0, 200, "pausing twice is harmless");
    let (status, refused) = daemon.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 409, "a job that has not ended cannot be deleted: {refused}");

    let (status, resumed) = daemon.call("POST", &format!("/v1/jobs/{id}/resume"), None);
    assert_eq!((status, resumed["state"].as_str()), (200, Some("running")), "{resumed}");
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(700));
    assert!(cpu_ticks(pid) > before, "a resumed job runs again");
    let usage = daemon.job(&id)["usage"].clone();
    assert!(usage["cpu_s"].as_f64().unwrap() > 0.1 && usage["rss_kib"].as_u64().unwrap() > 0, "{usage}");

    let (status, _) = daemon.call("POST", &format!("/v1/jobs/{id}/kill"), None);
    assert_eq!(status, 200);
    let record = daemon.wait_end("jobs", &id);
    assert_eq!(record["state"], "killed", "{record}");
    assert_eq!(record["exit"]["reason"], "killed");
    assert!(!alive(pid));
    assert_eq!(daemon.call("POST", &format!("/v1/jobs/{id}/resume"), None).0, 409, "an ended job cannot resume");
    assert_eq!(daemon.staged(&id), Vec::<String>::new(), "a killed job's staged images are removed");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn records_survive_a_restart_and_jobs_that_were_running_are_lost() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let done = daemon.create(hello());
    daemon.wait_end("jobs", &done);
    let napping = daemon.create(nap());
    let pid = daemon.job(&napping)["pid"].as_u64().unwrap();
    daemon.wait_staged(&napping);

    // Killed outright: its children die with it, its socket is left behind,
    // and so are the staged images of its jobs, until the next daemon starts.
    let daemon = daemon.restart(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the job's VM outlived the daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    let record = daemon.job(&napping);
    assert_eq!(record["state"], "lost", "{record}");
    assert_eq!(record["exit"]["reason"], "lost");
    assert_eq!(daemon.staged(&napping), Vec::<String>::new(), "a lost job's staged images are removed");
    let kept = std::fs::read_dir(daemon.state.join("jobs").join(&napping)).unwrap().count();
    assert!(kept > 0, "its job file and logs are kept with its record");
    let finished = daemon.job(&done);
    assert_eq!((finished["state"].as_str(), finished["exit"]["status"].as_i64()), (Some("exited"), Some(0)));
    assert_eq!(daemon.logs(&done, "stream=stdout"), HELLO, "logs survive too");

    // Stopped politely: it kills its children itself and removes its socket.
    let napping = daemon.create(nap());
    let pid = daemon.job(&napping)["pid"].as_u64().unwrap();
    daemon.wait_staged(&napping);
    let daemon = daemon.restart(libc::SIGTERM);
    assert!(!alive(pid));
    assert_eq!(daemon.job(&napping)["state"], "lost");
    assert_eq!(daemon.staged(&napping), Vec::<String>::new(), "a lost job's staged images are removed");
    let (_, list) = daemon.call("GET", "/v1/jobs", None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn fifty_jobs_at_once_all_finish_with_their_outputs() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let body = json!({ "guest": { "memory_mib": 16, "timeout_s": 60 }, "run": { "wasm": "outputs/outputs.wat" } });
    let ids: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> =
            (0..5).map(|_| scope.spawn(|| (0..10).map(|_| daemon.create(body.clone())).collect::<Vec<_>>())).collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 50);
    let data: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let mut dirs = std::collections::HashSet::new();
    for id in &ids {
        let record = daemon.wait_end("jobs", id);
        assert_eq!(
            (record["state"].as_str(), record["exit"]["status"].as_i64()),
            (Some("exited"), Some(0)),
            "{record}"
        );
        assert_eq!(daemon.logs(id, "stream=stdout"), "wrote 3 outputs\n");
        let outputs = &record["outputs"];
        assert_eq!(outputs["files"], json!(["data.bin", "logs/run.log", "result.txt"]), "{record}");
        let dir = PathBuf::from(outputs["dir"].as_str().unwrap());
        assert!(dir.starts_with(&daemon.state), "outputs land in the state directory by default");
        assert_eq!(std::fs::read_to_string(dir.join("result.txt")).unwrap(), "42\n");
        assert_eq!(std::fs::read_to_string(dir.join("logs/run.log")).unwrap(), "ran to the end\n");
        assert_eq!(std::fs::read(dir.join("data.bin")).unwrap(), data);
        assert!(dirs.insert(dir), "each job has its own outputs");
    }
    // Deleting keeps the outputs unless asked.
    let (keep, drop) = (&ids[0], &ids[1]);
    let keep_dir = PathBuf::from(daemon.job(keep)["outputs"]["dir"].as_str().unwrap());
    let drop_dir = PathBuf::from(daemon.job(drop)["outputs"]["dir"].as_str().unwrap());
    assert_eq!(daemon.call("DELETE", &format!("/v1/jobs/{keep}"), None).0, 200);
    let (status, deleted) = daemon.call("DELETE", &format!("/v1/jobs/{drop}?outputs=true"), None);
    assert_eq!((status, &deleted["outputs_removed"]), (200, &json!(true)));
    assert!(keep_dir.join("result.txt").exists() && !drop_dir.exists());
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn bad_requests_get_4xx_naming_the_field_and_create_nothing() {
    common::require_kvm();
    let root = files_root();
    let outside = tempfile::NamedTempFile::new().unwrap();
    let daemon = Daemon::start(root.path(), &["--max-running", "1"]);
    let raw = |body: &str| {
        let (status, bytes) = http(&daemon.socket, "POST", "/v1/jobs", Some(body));
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let (status, e) = raw("{\"run\": {\"wasm\": ");
    assert_eq!((status, &e["field"]), (400, &Value::Null), "malformed JSON: {e}");
    assert!(e["error"].as_str().unwrap().contains("not valid JSON"));
    let wasm = json!({ "wasm": "hello/hello.wat" });
    let cases = [
        (json!({ "run": wasm, "colour": "red" }), 400, "colour"),
        (json!({ "run": wasm, "guest": { "memory_mb": 16 } }), 400, "guest.memory_mb"),
        (json!({ "run": wasm, "guest": { "memory_mib": "16" } }), 400, "guest.memory_mib"),
        (json!({ "run": { "wasm": "hello/hello.wat", "args": [1] } }), 400, "run.args[0]"),
        (json!({ "run": wasm, "guest": { "memory_mib": 0 } }), 400, "guest.memory_mib"),
        (json!({ "run": wasm, "guest": { "vcpus": 1000 } }), 400, "guest.vcpus"),
        (json!({ "run": wasm, "guest": { "timeout_s": 0 } }), 400, "guest.timeout_s"),
        (json!({ "run": wasm, "files": { "inputs": [outside.path()] } }), 403, "files.inputs[0]"),
        (json!({ "run": wasm, "files": { "outputs": "/etc/mvm-out" } }), 403, "files.outputs"),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": "/etc", "guest": "/etc" }] } }),
            403,
            "files.mounts[0].host",
        ),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": "hello", "guest": "etc" }] } }),
            400,
            "files.mounts[0].guest",
        ),
        (json!({ "run": wasm, "files": { "disk_mib": 0 } }), 400, "files.disk_mib"),
        (json!({ "run": { "wasm": "missing.wat" } }), 400, "run.wasm"),
    ];
    for (body, status, field) in cases {
        let (got, e) = daemon.call("POST", "/v1/jobs", Some(&body));
        assert_eq!((got, e["field"].as_str()), (status, Some(field)), "{body}: {e}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "the error names {field}: {e}");
    }
    let (status, e) = daemon.call("POST", "/v1/vms", Some(&json!({ "memory_mib": 0 })));
    assert_eq!((status, e["field"].as_str()), (400, Some("memory_mib")), "{e}");
    // A body over the size limit (2 MiB), by one byte: the daemon reads it
    // all before it answers, so the answer cannot race its close.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat((2 << 20) - 11));
    assert_eq!(huge.len(), (2 << 20) + 1);
    let (status, e) = raw(&huge);
    assert_eq!((status, &e["field"]), (413, &Value::Null), "a body over the size limit: {e}");
    let (status, e) = daemon.call("GET", "/v1/jobs/%FF", None);
    assert_eq!((status, &e["field"]), (400, &Value::Null), "an id that is not UTF-8: {e}");
    let (status, e) = daemon.call("GET", "/v1/jobs?state=asleep", None);
    assert_eq!((status, e["field"].as_str()), (400, Some("state")), "{e}");
    for (method, path) in [
        ("GET", "/v1/jobs/0123456789ab"),
        ("GET", "/v1/jobs/nope/logs"),
        ("POST", "/v1/jobs/nope/pause"),
        ("POST", "/v1/jobs/nope/kill"),
        ("DELETE", "/v1/jobs/nope"),
        ("GET", "/v1/vms/nope"),
        ("POST", "/v1/vms/nope/stop"),
    ] {
        let (status, e) = daemon.call(method, path, None);
        assert_eq!(status, 404, "{method} {path}: {e}");
        assert!(e["error"].is_string() && e.get("field").is_some(), "{e}");
    }
    let (_, list) = daemon.call("GET", "/v1/jobs", None);
    assert_eq!(list["jobs"], json!([]), "nothing was created");
    assert_eq!(std::fs::read_dir(daemon.state.join("jobs")).unwrap().count(), 0, "nothing half-created");

    // Over the concurrency cap: 429, and again nothing created.
    let napping = daemon.create(nap());
    let (status, e) = daemon.call("POST", "/v1/jobs", Some(&hello()));
    assert_eq!(status, 429, "{e}");
    assert!(e["error"].as_str().unwrap().contains("at most 1"), "{e}");
    let (status, _) = daemon.call("POST", "/v1/vms", Some(&json!({ "memory_mib": 16 })));
    assert_eq!(status, 429, "jobs and VMs share the cap");
    let (_, list) = daemon.call("GET", "/v1/jobs", None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    daemon.call("POST", &format!("/v1/jobs/{napping}/kill"), None);
    daemon.wait_end("jobs", &napping);
    let id = daemon.create(hello());
    assert_eq!(daemon.wait_end("jobs", &id)["state"], "exited", "a slot frees when a job ends");

    // A second daemon on the same socket is refused.
    let second = mvm()
        .args(["serve", "--socket"])
        .arg(&daemon.socket)
        .arg("--state-dir")
        .arg(daemon.state.with_extension("other"))
        .arg("--files-root")
        .arg(root.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(125));
    assert!(text(&second.stderr).contains("already answers"), "{}", text(&second.stderr));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_vm_boots_streams_its_console_and_can_be_stopped() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let (status, vm) = daemon.call("POST", "/v1/vms", Some(&json!({ "memory_mib": 16, "cmdline": "mvm.exit=3" })));
    assert_eq!(status, 201, "{vm}");
    let id = vm["id"].as_str().unwrap();
    let (status, console) = http(&daemon.socket, "GET", &format!("/v1/vms/{id}/console"), None);
    assert_eq!(status, 200);
    assert!(text(&console).contains("mvm"), "the console streams the guest's banner: {}", text(&console));
    let record = daemon.wait_end("vms", id);
    assert_eq!((record["state"].as_str(), record["exit"]["status"].as_i64()), (Some("exited"), Some(3)), "{record}");
    assert_eq!(daemon.call("GET", &format!("/v1/jobs/{id}"), None).0, 404, "a VM is not a job");

    let body = json!({ "memory_mib": 16, "cmdline": "mvm.test=sleep:60000" });
    let (_, vm) = daemon.call("POST", "/v1/vms", Some(&body));
    let id = vm["id"].as_str().unwrap();
    let (status, paused) = daemon.call("POST", &format!("/v1/vms/{id}/pause"), None);
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (status, _) = daemon.call("POST", &format!("/v1/vms/{id}/stop"), None);
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_end("vms", id)["state"], "killed", "a paused VM stops too");
    let (_, list) = daemon.call("GET", "/v1/vms", None);
    assert_eq!(list["vms"].as_array().unwrap().len(), 2);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn up_remote_streams_and_ends_like_a_local_run() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let remote = |job: &str, extra: &[&str]| {
        let mut command = mvm();
        command.arg("up").arg("--remote").arg(&daemon.socket).args(extra).arg(root.path().join(job));
        command.output().unwrap()
    };
    let last_line = |out: &std::process::Output| text(&out.stderr).lines().last().unwrap_or_default().to_owned();

    let out = remote("hello/job.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), HELLO);
    assert_eq!(text(&out.stderr), "mvm: job hello ended: exit 0\n", "the same stderr as a local run");

    let out = remote("memhog/job.toml", &[]);
    let local = mvm().arg("up").arg(root.path().join("memhog/job.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(122));
    assert_eq!((out.status.code(), last_line(&out)), (local.status.code(), last_line(&local)));

    let out = remote("outputs/job.toml", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(&last_line(&out)).expect("a JSON report");
    assert_eq!((report["job"].as_str(), report["reason"].as_str()), (Some("outputs"), Some("exit")));
    let outdir = root.path().join("outputs/out");
    assert_eq!(std::fs::read_to_string(outdir.join("result.txt")).unwrap(), "42\n", "outputs land beside the job file");

    let elsewhere = tempfile::tempdir().unwrap();
    let hello = common::copy_example("hello", elsewhere.path());
    let mut command = mvm();
    let out = command.arg("up").arg("--remote").arg(&daemon.socket).arg(hello.join("job.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("must be under the files root"), "{}", text(&out.stderr));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_jobs_cpu_quota_holds_it_to_its_share_of_a_core() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &[]);
    let body =
        json!({ "guest": { "memory_mib": 16, "timeout_s": 120, "cpu_quota": 0.25 }, "run": { "wasm": "spin.wat" } });
    let id = daemon.create(body);
    let record = daemon.job(&id);
    assert_eq!(record["limits"]["cpu_quota"], 0.25, "{record}");
    let pid = record["pid"].as_u64().expect("a running job has a pid");
    // Past boot and module load, the loop spins and only the quota holds it.
    std::thread::sleep(Duration::from_secs(1));
    let (cpu, started) = (cpu_ns(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let used = Duration::from_nanos(cpu_ns(pid) - cpu);
    let share = used.as_secs_f64() / started.elapsed().as_secs_f64();
    // Other work on the host can only lower the share, so the upper bound is
    // tight (a quota that grants 10% more fails); the lower one only says
    // that the job ran.
    assert!(
        (0.10..0.27).contains(&share),
        "the job used {used:?} of CPU in 4 s: {share:.3} of a core at a quota of 0.25"
    );
    assert_eq!(daemon.call("POST", &format!("/v1/jobs/{id}/kill"), None).0, 200);
    assert_eq!(daemon.wait_end("jobs", &id)["state"], "killed");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_running_vm_takes_a_slot_of_max_running() {
    common::require_kvm();
    let root = files_root();
    let daemon = Daemon::start(root.path(), &["--max-running", "1"]);
    let (status, vm) =
        daemon.call("POST", "/v1/vms", Some(&json!({ "memory_mib": 16, "cmdline": "mvm.test=sleep:60000" })));
    assert_eq!(status, 201, "{vm}");
    let vm = vm["id"].as_str().unwrap().to_owned();
    let (status, e) = daemon.call("POST", "/v1/jobs", Some(&hello()));
    assert_eq!(status, 429, "a job may not start while a VM holds the only slot: {e}");
    assert!(e["error"].as_str().unwrap().contains("at most 1"), "{e}");
    let (status, e) = daemon.call("POST", "/v1/vms", Some(&json!({ "memory_mib": 16 })));
    assert_eq!(status, 429, "nor may a second VM: {e}");
    let (_, jobs) = daemon.call("GET", "/v1/jobs", None);
    assert_eq!(jobs["jobs"], json!([]), "the refused job was not created");
    let (_, vms) = daemon.call("GET", "/v1/vms", None);
    assert_eq!(vms["vms"].as_array().unwrap().len(), 1, "nor the refused VM: {vms}");

    assert_eq!(daemon.call("POST", &format!("/v1/vms/{vm}/stop"), None).0, 200);
    assert_eq!(daemon.wait_end("vms", &vm)["state"], "killed");
    let id = daemon.create(hello());
    assert_eq!(daemon.wait_end("jobs", &id)["state"], "exited", "the slot is free once the VM has stopped");
}

/// Copies its stdin to its stdout, 4 KiB at a time, to the end.
const CAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (block $eof (loop $more
      (i32.store (i32.const 4) (i32.const 4096))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $eof (i32.eqz (i32.load (i32.const 8))))
      (i32.store (i32.const 4) (i32.load (i32.const 8)))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $more)))))"#;

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_jobs_stdin_is_a_file_under_the_files_root() {
    common::require_kvm();
    let root = files_root();
    std::fs::write(root.path().join("cat.wat"), CAT).unwrap();
    let input: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(root.path().join("input.txt"), &input).unwrap();
    let daemon = Daemon::start(root.path(), &[]);
    let cat = |stdin: Option<&str>| {
        let mut body = json!({ "guest": { "memory_mib": 16, "timeout_s": 60 }, "run": { "wasm": "cat.wat" } });
        if let Some(stdin) = stdin {
            body["run"]["stdin"] = json!(stdin);
        }
        body
    };
    let id = daemon.create(cat(Some("input.txt")));
    // Changed after the job was created: the job reads the file it opened.
    std::fs::rename(root.path().join("input.txt"), root.path().join("moved.txt")).unwrap();
    std::fs::write(root.path().join("input.txt"), "replaced").unwrap();
    let record = daemon.wait_end("jobs", &id);
    assert_eq!(record["state"], "exited", "{record}");
    assert_eq!(record["spec"]["run"]["stdin"], "input.txt");
    assert_eq!(daemon.logs(&id, "stream=stdout"), input);

    let id = daemon.create(cat(None));
    assert_eq!(daemon.wait_end("jobs", &id)["state"], "exited");
    assert_eq!(daemon.logs(&id, "stream=stdout"), "", "no stdin field: empty stdin");

    std::os::unix::fs::symlink("/etc/passwd", root.path().join("passwd")).unwrap();
    let (status, error) = daemon.call("POST", "/v1/jobs", Some(&cat(Some("passwd"))));
    assert_eq!((status, &error["field"]), (403, &json!("run.stdin")), "{error}");

    // `mvm up --remote` sends `[run] stdin` (as a path the daemon opens).
    let toml = "[guest]\nmemory_mib = 16\n[run]\nwasm = \"cat.wat\"\nstdin = \"moved.txt\"\n";
    std::fs::write(root.path().join("job.toml"), toml).unwrap();
    let out = mvm().arg("up").arg("--remote").arg(&daemon.socket).arg(root.path().join("job.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), input);
}
