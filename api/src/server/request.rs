//! Requests to create a job or a VM: JSON checked field by field, before
//! anything exists, into what the supervisor starts.
//!
//! A job request has the fields of job.toml ([`RawJob`], the same serde
//! structs, so the same unknown-field and type rules). Its paths are
//! confined to the files root and made absolute, and the result is written
//! out as TOML and checked by [`JobSpec::parse`], exactly as `mvm up` will
//! check it again in the child: one validation, not two.
//!
//! A job's stdin file is the exception: it is opened here, beneath the files
//! root's directory (`openat2` with `RESOLVE_BENEATH`: no `..`, absolute
//! link or magic link out of it), checked on the open descriptor, and that
//! descriptor becomes the child's stdin; its name is never used again.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::record::{Kind, Limits, Record, State};
use crate::job::spec::{valid_name, RawJob, MIN_MEMORY_MIB};
use crate::job::{HostLimits, JobSpec, SpecError};

/// An error the API answers with: `{"error": "...", "field": "..."}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    /// The request field at fault, as a dotted path (`guest.memory_mib`,
    /// `files.inputs[0]`); `None` when the error is not about one field.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> ApiError {
        ApiError { status, error: error.into(), field: field.map(str::to_owned) }
    }

    /// A bad value: `field: problem`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {problem}"), Some(field))
    }

    pub fn not_found(kind: Kind, id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no {} with id {id:?}", kind.as_str()), None)
    }

    pub fn internal(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what.to_string(), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.error, "field": self.field }))).into_response()
    }
}

/// What requests are checked against.
pub struct RequestContext {
    /// Canonical: every host file a request names must be under it.
    pub files_root: PathBuf,
    pub state_dir: PathBuf,
    pub host: HostLimits,
    /// The cap of the daemon's compiled-code cache, which its jobs share.
    pub cache_max_mib: u64,
}

/// A checked request: the record to insert (state `created`) and how to
/// run it.
#[derive(Debug)]
pub struct Launch {
    pub record: Record,
    /// Jobs: the job file to write into the job's directory.
    pub job_toml: Option<String>,
    /// The `mvm` command line after the binary's name.
    pub args: Vec<String>,
    /// Jobs: the child's stdin (`run.stdin`, opened); `None`: empty.
    pub stdin: Option<File>,
}

/// The state directory of one machine: its job file, logs and staged images.
pub fn machine_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("jobs").join(id)
}

/// The daemon's compiled-code cache, shared by all its jobs.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}

/// Where a job's outputs land when the request names no directory.
pub fn default_outputs(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(OUTPUTS_DIR).join(id)
}

/// Under the state directory: every job's default outputs directory.
const OUTPUTS_DIR: &str = "outputs";

/// A `POST /v1/jobs` body, checked.
pub fn job(ctx: &RequestContext, id: &str, body: &[u8], now: f64) -> Result<Launch, ApiError> {
    let mut obj = parse_body(body)?;
    rename_mounts(&mut obj, TOML_MOUNTS)?;
    let raw: RawJob = typed(&obj).map_err(api_field)?;
    strip_nulls(&mut obj);

    let run = section(&mut obj, "run");
    if let Some(wasm) = &raw.run.wasm {
        run.insert("wasm".into(), path_value(&ctx.confine("run.wasm", wasm, true)?));
    }
    if let Some(kernel) = raw.guest.kernel.as_deref().filter(|k| *k != "builtin") {
        section(&mut obj, "guest").insert("kernel".into(), path_value(&ctx.confine("guest.kernel", kernel, true)?));
    }
    let files = section(&mut obj, "files");
    if let Some(inputs) = &raw.files.inputs {
        let mut confined = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            confined.push(path_value(&ctx.confine(&format!("files.inputs[{i}]"), input, true)?));
        }
        files.insert("inputs".into(), Value::Array(confined));
    }
    if let Some(mounts) = files.get_mut(TOML_MOUNTS).and_then(Value::as_array_mut) {
        for (i, mount) in mounts.iter_mut().enumerate() {
            let Some(mount) = mount.as_object_mut() else { continue };
            if let Some(host) = mount.get("host").and_then(Value::as_str) {
                let key = format!("{API_MOUNTS}[{i}].host");
                let host = ctx.confine(&key, host, false)?;
                // Its new contents are staged in its parent directory and
                // swapped in there: that must lie under the root too.
                if host == ctx.files_root && mount.get("mode").and_then(Value::as_str) == Some("rw") {
                    let root = ctx.files_root.display();
                    let problem = format!(
                        "a rw mount must lie strictly beneath the files root {root}, not be it: its new contents \
                         are staged beside it; mount a directory inside it"
                    );
                    return Err(ApiError::field(&key, problem));
                }
                mount.insert("host".into(), path_value(&host));
            }
        }
    }
    // With mounts, /out exists only when asked for, as in a job file.
    let has_mounts = raw.files.mount.as_ref().is_some_and(|m| !m.is_empty());
    let outputs = match &raw.files.outputs {
        Some(dir) => Some(ctx.confine("files.outputs", dir, false)?),
        None if has_mounts => None,
        None => Some(default_outputs(&ctx.state_dir, id)),
    };
    if let Some(outputs) = &outputs {
        files.insert("outputs".into(), path_value(outputs));
    }
    if raw.name.is_none() {
        obj.insert("name".into(), json!(default_name(raw.run.wasm.as_deref())));
    }
    // Opened now, checked last of all its fields by the job file's rules
    // below, and handed to the child as its stdin, not by name.
    let stdin = raw.run.stdin.as_deref().map(|path| ctx.open_stdin(path)).transpose()?;
    let mut job_file_fields = obj.clone();
    if let Some(Value::Object(run)) = job_file_fields.get_mut("run") {
        run.remove("stdin");
    }
    obj.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));
    job_file_fields.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));

    let toml =
        toml::to_string(&job_file_fields).map_err(|e| ApiError::internal(format!("cannot write the job file: {e}")))?;
    // The directory only anchors relative paths, and there are none left.
    let anchor = ctx.state_dir.join("jobs").join("job.toml");
    let spec = JobSpec::parse(&toml, &anchor, &ctx.host)
        .map_err(|e| match e {
            SpecError::Invalid { key, problem, .. } => ApiError::field(&key, problem),
            SpecError::UnknownKey { key, .. } => ApiError::field(&key, "unknown field"),
            other => ApiError::internal(other),
        })
        .map_err(api_field)?;
    // The record shows the request's own field name.
    rename_mounts(&mut obj, API_MOUNTS)?;
    let limits = Limits {
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        cpu_quota: spec.cpu_quota,
        timeout_s: Some(spec.timeout.as_secs_f64()),
        outputs_max_mib: Some(spec.outputs_max_bytes >> 20),
    };
    let job_file = machine_dir(&ctx.state_dir, id).join("job.toml");
    let mut args = vec![
        "up".into(),
        "--json".into(),
        format!("--cache-dir={}", cache_dir(&ctx.state_dir).display()),
        format!("--cache-max-mib={}", ctx.cache_max_mib),
        // The child checks the paths again as it loads them: they may
        // lead elsewhere by then.
        format!("--files-root={}", ctx.files_root.display()),
    ];
    if raw.files.outputs.is_none() && !has_mounts {
        // The daemon's own choice, in its state directory.
        args.push(format!("--files-root={}", ctx.state_dir.join(OUTPUTS_DIR).display()));
    }
    args.push(job_file.to_string_lossy().into_owned());
    Ok(Launch {
        record: new_record(id, Kind::Job, spec.name, Value::Object(obj), limits, spec.outputs, now),
        job_toml: Some(toml),
        args,
        stdin,
    })
}

/// `[[files.mount]]` in a job file (an array of tables, one per mount) is
/// `files.mounts` (an array) in a request.
const TOML_MOUNTS: &str = "mount";
const API_MOUNTS: &str = "files.mounts";

/// Renames the `files` object's mounts field to `to`: to the job file's
/// `mount` before checking, back to `mounts` for the record. The other name
/// is refused as unknown, so each form has one spelling.
fn rename_mounts(obj: &mut Map<String, Value>, to: &str) -> Result<(), ApiError> {
    let Some(Value::Object(files)) = obj.get_mut("files") else { return Ok(()) };
    let (from, to) = if to == TOML_MOUNTS { ("mounts", TOML_MOUNTS) } else { (TOML_MOUNTS, "mounts") };
    if to == TOML_MOUNTS && files.contains_key(TOML_MOUNTS) {
        return Err(ApiError::field("files.mount", "unknown field `mount`, expected `mounts`"));
    }
    if let Some(mounts) = files.remove(from) {
        files.insert(to.into(), mounts);
    }
    Ok(())
}

/// An error in the job file's terms (`files.mount[N]...`, in the field
/// and in the message, which may name another mount) in the request's
/// (`files.mounts[N]...`).
fn api_field(mut e: ApiError) -> ApiError {
    // The job file's own names never hold `files.mounts`, so nothing is
    // renamed twice.
    let rename = |s: &str| s.replace("files.mount[", "files.mounts[");
    if e.field.as_deref().is_some_and(|f| f.starts_with("files.mount[")) {
        e.field = e.field.as_deref().map(rename);
        e.error = rename(&e.error);
    }
    e
}

/// A `POST /v1/vms` body: the options of `mvm boot`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: Option<String>,
    kernel: Option<String>,
    memory_mib: Option<i64>,
    vcpus: Option<i64>,
    cmdline: Option<String>,
    timeout_s: Option<f64>,
    cpu_quota: Option<f64>,
    disks: Option<Vec<RawDisk>>,
    nets: Option<Vec<RawNet>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    path: Option<String>,
    read_only: Option<bool>,
    serial: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    tap: Option<String>,
    mac: Option<String>,
}

const DEFAULT_VM_MEMORY_MIB: u64 = 64;
const MAX_VCPUS: u64 = crate::job::spec::MAX_VCPUS;
/// virtio-blk's serial field.
const MAX_SERIAL: usize = 20;
/// Linux's IFNAMSIZ, less the terminating NUL.
const MAX_TAP: usize = 15;

/// A `POST /v1/vms` body, checked.
pub fn vm(ctx: &RequestContext, id: &str, body: &[u8], now: f64) -> Result<Launch, ApiError> {
    let mut obj = parse_body(body)?;
    let raw: RawVm = typed(&obj)?;
    strip_nulls(&mut obj);
    let name = match raw.name {
        Some(name) if valid_name(&name) => name,
        Some(name) => {
            return Err(ApiError::field(
                "name",
                format!("must be at most 64 letters, digits, '.', '_' or '-' (got {name:?})"),
            ))
        }
        None => format!("vm-{id}"),
    };
    let memory_mib = int("memory_mib", raw.memory_mib, DEFAULT_VM_MEMORY_MIB, MIN_MEMORY_MIB, ctx.host.memory_mib)?;
    let vcpus = int("vcpus", raw.vcpus, 1, 1, MAX_VCPUS)?;
    let mut args = vec!["boot".to_owned(), format!("--memory-mib={memory_mib}"), format!("--vcpus={vcpus}")];
    match raw.kernel.as_deref() {
        None | Some("builtin") => args.push("--kernel=builtin".into()),
        Some(path) => {
            let path = ctx.confine("kernel", path, true)?;
            existing_file("kernel", &path)?;
            args.push(format!("--kernel={}", path.display()));
            obj.insert("kernel".into(), path_value(&path));
        }
    }
    if let Some(cmdline) = &raw.cmdline {
        if cmdline.contains('\0') {
            return Err(ApiError::field("cmdline", "must not contain a NUL byte"));
        }
        args.push(format!("--cmdline={cmdline}"));
    }
    if let Some(t) = raw.timeout_s {
        // Refuses NaN, infinities, negatives, overflow and what rounds to 0 ns.
        if !std::time::Duration::try_from_secs_f64(t).is_ok_and(|d| !d.is_zero()) {
            return Err(ApiError::field(
                "timeout_s",
                format!("must be a number greater than 0 and not too large (got {t})"),
            ));
        }
        args.push(format!("--timeout-s={t}"));
    }
    if let Some(q) = raw.cpu_quota {
        if !(q.is_finite() && q > 0.0) {
            return Err(ApiError::field("cpu_quota", format!("must be a number greater than 0 (got {q})")));
        }
        if q > f64::from(ctx.host.cpus) {
            return Err(ApiError::field(
                "cpu_quota",
                format!("must be at most the host's {} CPUs (got {q})", ctx.host.cpus),
            ));
        }
        args.push(format!("--cpu-quota={q}"));
    }
    let mut disks = Vec::new();
    for (i, disk) in raw.disks.unwrap_or_default().into_iter().enumerate() {
        let key = format!("disks[{i}]");
        let Some(path) = disk.path else { return Err(ApiError::field(&format!("{key}.path"), "is required")) };
        let path = ctx.confine(&format!("{key}.path"), &path, true)?;
        existing_file(&format!("{key}.path"), &path)?;
        if path.to_string_lossy().contains(',') {
            return Err(ApiError::field(&format!("{key}.path"), "must not contain ','"));
        }
        let mut option = path.to_string_lossy().into_owned();
        if disk.read_only.unwrap_or(false) {
            option.push_str(",ro");
        }
        if let Some(serial) = &disk.serial {
            if serial.len() > MAX_SERIAL || serial.contains([',', '\0']) {
                return Err(ApiError::field(
                    &format!("{key}.serial"),
                    format!("must be at most {MAX_SERIAL} bytes, no ',' (got {serial:?})"),
                ));
            }
            option.push_str(&format!(",serial={serial}"));
        }
        args.push(format!("--disk={option}"));
        disks.push(
            json!({ "path": path_value(&path), "read_only": disk.read_only.unwrap_or(false), "serial": disk.serial }),
        );
    }
    if !disks.is_empty() {
        obj.insert("disks".into(), Value::Array(disks));
    }
    for (i, net) in raw.nets.unwrap_or_default().into_iter().enumerate() {
        let key = format!("nets[{i}]");
        let Some(tap) = net.tap else { return Err(ApiError::field(&format!("{key}.tap"), "is required")) };
        let valid =
            (1..=MAX_TAP).contains(&tap.len()) && tap.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(ApiError::field(
                &format!("{key}.tap"),
                format!("must be 1 to {MAX_TAP} letters, digits, '-', '_' or '.' (got {tap:?})"),
            ));
        }
        let mut option = format!("tap={tap}");
        if let Some(mac) = &net.mac {
            if !valid_mac(mac) {
                return Err(ApiError::field(
                    &format!("{key}.mac"),
                    format!("must be six hex bytes like 52:54:00:12:34:56, not multicast (got {mac:?})"),
                ));
            }
            option.push_str(&format!(",mac={mac}"));
        }
        args.push(format!("--net={option}"));
    }
    let limits =
        Limits { memory_mib, vcpus, cpu_quota: raw.cpu_quota, timeout_s: raw.timeout_s, outputs_max_mib: None };
    let record = new_record(id, Kind::Vm, name, Value::Object(obj), limits, None, now);
    Ok(Launch { record, job_toml: None, args, stdin: None })
}

pub(crate) fn new_record(
    id: &str,
    kind: Kind,
    name: String,
    spec: Value,
    limits: Limits,
    outputs_dir: Option<PathBuf>,
    now: f64,
) -> Record {
    Record {
        id: id.to_owned(),
        kind,
        name,
        spec,
        state: State::Created,
        created_at: now,
        started_at: None,
        ended_at: None,
        pid: None,
        limits,
        outputs_dir,
        exit: None,
        report: None,
        stderr_end: None,
        usage: None,
    }
}

/// The body as a JSON object.
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is not valid JSON: {e}"), None)
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "the request body must be a JSON object", None)),
    }
}

/// Deserializes `value` as `T`, naming the field at fault on error (for
/// an unknown field, the path ends with that field).
fn typed<T: DeserializeOwned>(obj: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(obj.clone())).map_err(|e| {
        let message = reword(&e.inner().to_string());
        match e.path().to_string() {
            field if field == "." => {
                ApiError::new(StatusCode::BAD_REQUEST, format!("the request body: {message}"), None)
            }
            field => ApiError::field(&field, message),
        }
    })
}

/// serde's words for types, in JSON's.
fn reword(message: &str) -> String {
    let mut out = message.replace("expected i64", "expected an integer").replace("expected f64", "expected a number");
    for (from, to) in [("sequence", "array"), ("map", "object"), ("a sequence", "an array"), ("a map", "an object")] {
        out = out.replace(&format!("invalid type: {from},"), &format!("invalid type: {to},"));
        out = out.replace(&format!("expected {from}"), &format!("expected {to}"));
    }
    if let Some(at) = out.find("expected struct Raw") {
        out.replace_range(at.., "expected an object");
    }
    out
}

/// Removes `null`s, which mean "absent" in a request and which TOML lacks.
fn strip_nulls(obj: &mut Map<String, Value>) {
    obj.retain(|_, v| !v.is_null());
    for value in obj.values_mut() {
        match value {
            Value::Object(map) => strip_nulls(map),
            Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).for_each(strip_nulls),
            _ => {}
        }
    }
}

/// The object under `key`, created when absent (the type checks made sure
/// that a present one is an object).
fn section<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

/// A path as a JSON string. Paths here are UTF-8: the state directory and
/// files root are checked at start, and [`RequestContext::confine`] checks
/// what symlinks resolve to.
pub fn path_value(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

/// The module's file stem when it makes a valid job name, else `job`.
fn default_name(wasm: Option<&str>) -> String {
    let stem = wasm.and_then(|w| Path::new(w).file_stem()).map(|s| s.to_string_lossy().into_owned());
    stem.filter(|s| valid_name(s)).unwrap_or_else(|| "job".to_owned())
}

fn int(key: &str, value: Option<i64>, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    let Some(got) = value else { return Ok(default) };
    match u64::try_from(got) {
        Ok(v) if v > max => Err(ApiError::field(key, format!("must be at most {max} (got {got})"))),
        Ok(v) if v >= min => Ok(v),
        _ => Err(ApiError::field(key, format!("must be at least {min} (got {got})"))),
    }
}

fn existing_file(key: &str, path: &Path) -> Result<(), ApiError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ApiError::field(key, format!("not a regular file: {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::field(key, format!("no such file: {}", path.display())))
        }
        Err(e) => Err(ApiError::field(key, format!("cannot access {}: {}", path.display(), e.kind()))),
    }
}

fn valid_mac(mac: &str) -> bool {
    let bytes: Vec<_> =
        mac.split(':').map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok()).flatten()).collect();
    bytes.len() == 6 && bytes.iter().all(Option::is_some) && bytes[0].is_some_and(|b| b & 1 == 0)
}

impl RequestContext {
    /// Opens `raw` (relative to the files root, or absolute under it)
    /// beneath the root's directory, for reading, without following a
    /// link out of the root (403) and without waiting on a FIFO; it must be
    /// a regular file, as its open descriptor says.
    fn open_stdin(&self, raw: &str) -> Result<File, ApiError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        use rustix::io::Errno;
        const KEY: &str = "run.stdin";
        if raw.is_empty() {
            return Err(ApiError::field(KEY, "must not be empty"));
        }
        if raw.contains('\0') {
            return Err(ApiError::field(KEY, "must not contain a NUL byte"));
        }
        let outside = || {
            let error = format!("{KEY}: must be under the files root {} (got {raw})", self.files_root.display());
            ApiError::new(StatusCode::FORBIDDEN, error, Some(KEY))
        };
        let path = Path::new(raw);
        let beneath =
            if path.is_absolute() { path.strip_prefix(&self.files_root).map_err(|_| outside())? } else { path };
        let root_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(&self.files_root, root_flags, Mode::empty()).map_err(|e| {
            ApiError::internal(format!("cannot open the files root {}: {e}", self.files_root.display()))
        })?;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // An empty remainder names the root itself, a directory.
        let beneath = if beneath.as_os_str().is_empty() { Path::new(".") } else { beneath };
        let fd = match rustix::fs::openat2(&root, beneath, flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(Errno::XDEV) => return Err(outside()),
            Err(Errno::NOENT) => return Err(ApiError::field(KEY, format!("no such file: {raw}"))),
            Err(Errno::NOSYS) => {
                return Err(ApiError::internal("opening run.stdin needs openat2 (Linux 5.6 or later)"));
            }
            Err(e) => return Err(ApiError::field(KEY, format!("cannot open {raw}: {e}"))),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| ApiError::field(KEY, format!("cannot access {raw}: {}", e.kind())))?;
        if !meta.is_file() {
            return Err(ApiError::field(KEY, format!("not a regular file: {raw}")));
        }
        // Blocking again, as a stdin is expected to be (reads of a regular
        // file never wait either way).
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| ApiError::internal(format!("run.stdin: {e}")))?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
            .map_err(|e| ApiError::internal(format!("run.stdin: {e}")))?;
        Ok(file)
    }

    /// `raw` (relative to the files root, or absolute) as an absolute path,
    /// refused (403) unless it is under the files root once symlinks are
    /// resolved. An existing file keeps the name it was given (it is the
    /// guest's argv[0] or `/in` name) in its canonical directory. A path
    /// that does not exist yet (an outputs directory; a missing file, which
    /// validation then reports) is checked through its nearest existing
    /// ancestor, with no `..` after it.
    fn confine(&self, key: &str, raw: &str, is_file: bool) -> Result<PathBuf, ApiError> {
        let path = self.confine_any(key, raw, is_file)?;
        match path.to_str() {
            Some(_) => Ok(path),
            None => Err(ApiError::field(key, format!("resolves to a path that is not UTF-8: {}", path.display()))),
        }
    }

    fn confine_any(&self, key: &str, raw: &str, is_file: bool) -> Result<PathBuf, ApiError> {
        if raw.is_empty() || raw.contains('\0') {
            // Validation names the problem.
            return Ok(PathBuf::from(raw));
        }
        let path = self.files_root.join(raw);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(ApiError::field(key, "must not contain '..'"));
        }
        let outside = |real: &Path| {
            let resolved = if real == path { String::new() } else { format!(", which resolves to {}", real.display()) };
            let root = self.files_root.display();
            let error = format!("{key}: must be under the files root {root} (got {}{resolved})", path.display());
            ApiError::new(StatusCode::FORBIDDEN, error, Some(key))
        };
        let inaccessible =
            |e: std::io::Error| ApiError::field(key, format!("cannot access {}: {}", path.display(), e.kind()));
        match std::fs::canonicalize(&path) {
            Ok(real) if !real.starts_with(&self.files_root) => Err(outside(&real)),
            Ok(real) => match (is_file, path.parent(), path.file_name()) {
                (true, Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent).map_err(inaccessible)?.join(name)),
                _ => Ok(real),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut existing = path.as_path();
                let mut rest = Vec::new();
                while !existing.exists() {
                    let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { break };
                    rest.push(name.to_owned());
                    existing = parent;
                }
                let real = std::fs::canonicalize(existing).map_err(inaccessible)?;
                let real = rest.iter().rev().fold(real, |p, name| p.join(name));
                if !real.starts_with(&self.files_root) {
                    return Err(outside(&real));
                }
                Ok(real)
            }
            Err(e) => Err(inaccessible(e)),
        }
    }
}

#[cfg(test)]
mod tests;
