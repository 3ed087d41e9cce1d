//! The job file: `job.toml` read, checked and resolved into a [`JobSpec`].
//!
//! Everything is checked before a VM exists: unknown keys at any level, wrong
//! types, impossible values and missing files are errors naming the key and
//! its line (`job.toml:4: guest.memory_mib: must be at least 2 (got 0)`). Paths
//! are resolved against the job file's directory and defaults are applied,
//! so the rest of mvm never sees a relative path or an unset field.
//!
//! The file is first deserialized into the `Raw*` structs, which mirror the
//! file's layout with every field optional and refuse unknown fields. They
//! are plain serde types, so the REST API can deserialize the same fields
//! from JSON; the line numbers come from a separate index of the TOML
//! document's spans.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;

use mvm_wasi::fsimage::NAME_MAX;

use super::collect::MAX_RW_NAME;
use super::toml_keys::{join_key, KeyIndex, Lines, Spot};

pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Below this the tiny guest cannot hold its page tables, heap and module.
pub const MIN_MEMORY_MIB: u64 = 2;
pub const MAX_VCPUS: u64 = 64;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_OUTPUTS: &str = "out/";
pub const DEFAULT_OUTPUTS_MAX_MIB: u64 = 64;
pub const MAX_OUTPUTS_MAX_MIB: u64 = 4096;
/// The room a job may write into on its filesystem disk.
pub const DEFAULT_DISK_MIB: u64 = 1024;
/// 1 TiB: the disk is a sparse file, but its size is what the guest may fill.
pub const MAX_DISK_MIB: u64 = 1 << 20;
/// The guest paths of the `inputs` and `outputs` shorthands.
pub const IN_DIR: &str = "/in";
pub const OUT_DIR: &str = "/out";
/// Job names end up in API paths and file names, so they stay short and plain.
pub const MAX_NAME_LEN: usize = 64;
/// Linux's IFNAMSIZ, less the terminating NUL.
const MAX_TAP_NAME: usize = 15;
const MIB: u64 = 1 << 20;

/// The job file as written. Every field is optional here so that a missing
/// required one is reported by [`JobSpec`] validation with its key, the same
/// way as any other mistake.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub name: Option<String>,
    #[serde(default)]
    pub guest: RawGuest,
    #[serde(default)]
    pub run: RawRun,
    #[serde(default)]
    pub files: RawFiles,
    #[serde(default)]
    pub network: RawNetwork,
}

/// Integers are `i64`, the TOML integer type, so that a negative number is
/// reported as out of range rather than as a wrong type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    pub kernel: Option<String>,
    pub memory_mib: Option<i64>,
    pub vcpus: Option<i64>,
    pub cpu_quota: Option<f64>,
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub wasm: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub stdin: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub inputs: Option<Vec<String>>,
    pub outputs: Option<String>,
    pub outputs_max_mib: Option<i64>,
    /// `[[files.mount]]`: an array of tables, hence the singular.
    pub mount: Option<Vec<RawMount>>,
    pub disk_mib: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub host: Option<String>,
    pub guest: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub enabled: Option<bool>,
    pub tap: Option<String>,
    pub address: Option<String>,
    pub gateway: Option<String>,
}

/// A checked job, paths absolute and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// The job file's directory, which relative paths in it are relative to.
    pub dir: PathBuf,
    pub kernel: Kernel,
    pub memory_mib: u64,
    pub vcpus: u64,
    /// Share of one host CPU for all vCPU threads together; `None`: no quota.
    pub cpu_quota: Option<f64>,
    pub timeout: Duration,
    /// The module as named in the job file (not canonicalized, so that its
    /// file name, argv[0], is the one the user wrote).
    pub wasm: PathBuf,
    /// argv[1..].
    pub args: Vec<String>,
    /// Sorted by key.
    pub env: Vec<(String, String)>,
    /// The file the job reads as its stdin; `None`: `mvm up`'s own stdin.
    pub stdin: Option<PathBuf>,
    /// Each seen in the guest as `/in/<name>`; names are unique.
    /// `None`: the job has no `/in` (it has mounts and no `inputs`).
    pub inputs: Option<Vec<Input>>,
    /// Where the job's `/out` comes back, canonical as far as it exists
    /// (the rest appended). Not created by validation.
    /// `None`: the job has no `/out` (it has mounts and no `outputs`).
    pub outputs: Option<PathBuf>,
    pub outputs_max_bytes: u64,
    /// `[[files.mount]]`, in file order.
    pub mounts: Vec<MountSpec>,
    /// Free room on the filesystem disk beyond its initial contents.
    pub disk_mib: u64,
    /// `Some` only when the network is enabled.
    pub network: Option<NetworkSpec>,
}

/// One of `files.inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file name the job file gave, its name in `/in`.
    pub name: String,
    /// Canonical (symlinks resolved), so that staging can open it following
    /// no symlink.
    pub path: PathBuf,
    /// As the job file named it (beside the job file when relative): what
    /// `mvm up --remote` sends, so that the daemon names it as the job file
    /// did even when it is a symlink.
    pub given: PathBuf,
}

/// One `[[files.mount]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Canonical (symlinks resolved), so that overlaps can be compared and
    /// a rw mount's write-back lands where the job file meant.
    pub host: PathBuf,
    /// Absolute and normalized: `/`, or `/a/b` with no empty, `.` or `..`
    /// component.
    pub guest: String,
    pub read_only: bool,
    /// A directory (taken recursively) or a regular file.
    pub is_dir: bool,
    /// `files.mount[N]` and where it is, for errors found while staging.
    pub key: String,
    pub at: Location,
}

impl MountSpec {
    /// `job.toml:LINE: files.mount[N]`.
    pub fn label(&self) -> String {
        format!("{}: {}", self.at, self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// The project's tiny guest, built into mvm.
    Builtin,
    /// A vmlinux or bzImage; checked to be a regular file, not yet parsed.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub tap: String,
    pub address: Option<IpCidr>,
    pub gateway: Option<IpAddr>,
}

/// An address with its prefix length, as in `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// What validation may not exceed on this host; a parameter so that tests
/// do not depend on the machine they run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub memory_mib: u64,
    pub cpus: u32,
}

impl HostLimits {
    /// RAM from /proc/meminfo's MemTotal, CPUs from the available
    /// parallelism (which honours affinity and cgroup limits). When either
    /// cannot be read, it is logged and that limit is not enforced.
    pub fn detect() -> HostLimits {
        let memory_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| parse_meminfo(&s));
        let memory_mib = memory_mib.unwrap_or_else(|| {
            warn!("cannot read MemTotal from /proc/meminfo: guest memory is not capped by host RAM");
            u64::MAX
        });
        let cpus = match std::thread::available_parallelism() {
            Ok(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
            Err(e) => {
                warn!(error = %e, "cannot count host CPUs: cpu_quota is not capped by them");
                u32::MAX
            }
        };
        HostLimits { memory_mib, cpus }
    }
}

/// MemTotal in MiB, from /proc/meminfo's `MemTotal:  16318412 kB` line.
pub(crate) fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024)
}

/// Where an error is: the job file as the user named it, and the line when
/// the key is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: cannot read the job file", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot resolve the job file's directory", .path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A TOML syntax error, in toml's own words.
    #[error("{at}: {message}")]
    Toml { at: Location, message: String },
    #[error("{at}: unknown key {key}")]
    UnknownKey { at: Location, key: String },
    #[error("{at}: {key}: {problem}")]
    Invalid { at: Location, key: String, problem: Problem },
}

/// What is wrong with one value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("must be {expected} (got {got})")]
    Type { expected: String, got: String },
    /// A deserialization error that is not a type mismatch, in serde's words.
    #[error("{0}")]
    Decode(String),
    #[error("is required")]
    Required,
    #[error("must be at least {min} (got {got})")]
    Below { min: u64, got: i64 },
    #[error("must be at most {max} (got {got})")]
    Above { max: u64, got: i64 },
    #[error("must be at most the host's memory, {host_mib} MiB (got {got})")]
    AboveHostMemory { host_mib: u64, got: u64 },
    #[error("must be a number greater than 0 (got {got:?})")]
    NotPositive { got: f64 },
    #[error("must be at most the host's {cpus} CPUs (got {got:?})")]
    AboveHostCpus { cpus: u32, got: f64 },
    #[error("is too large (got {got:?})")]
    TooLarge { got: f64 },
    #[error("must not be empty")]
    Empty,
    #[error("must not contain a NUL byte")]
    ContainsNul,
    #[error("must not contain '='")]
    ContainsEquals,
    #[error("must be at most {MAX_NAME_LEN} letters, digits, '.', '_' or '-', and not '.' or '..' (got {0:?})")]
    BadName(String),
    #[error("must name a .wasm or .wat file (got {0:?})")]
    NotWasmName(String),
    #[error(
        "must name a .wasm or .wat file, not precompiled code (got {0:?}): mvm runs only code it \
         compiled itself; give the module the .cwasm was compiled from"
    )]
    Precompiled(String),
    #[error("{} is not under the files root {}", .path.display(), .root.display())]
    OutsideFilesRoot { path: PathBuf, root: PathBuf },
    #[error("{} is the files root: a rw mount must lie strictly beneath it, since its new contents are staged beside it; mount a directory inside it", .0.display())]
    RwFilesRoot(PathBuf),
    #[error("{}: a rw mount's name may be at most {MAX_RW_NAME} bytes, so that its staging copy's (.NAME.mvm-RANDOM) is a name; rename it or mount its parent", .0.display())]
    RwNameTooLong(PathBuf),
    #[error("no such file: {}", .0.display())]
    NoSuchFile(PathBuf),
    #[error("cannot access {}: {kind}", .path.display())]
    Inaccessible { path: PathBuf, kind: io::ErrorKind },
    #[error("not a regular file: {}", .0.display())]
    NotAFile(PathBuf),
    #[error("exists and is not a directory: {}", .0.display())]
    NotADirectory(PathBuf),
    #[error("has no file name: {0:?}")]
    NoFileName(String),
    #[error("not a directory or regular file: {}", .0.display())]
    NotDirOrFile(PathBuf),
    #[error(
        "must be an absolute path with no empty, '.' or '..' component, each at most {NAME_MAX} bytes (got {0:?})"
    )]
    BadGuestPath(String),
    #[error("must be \"ro\" or \"rw\" (got {0:?})")]
    BadMode(String),
    #[error("a mount at / must be a directory, not the file {}", .0.display())]
    RootNotDir(PathBuf),
    #[error("guest path {guest} is also {other}'s")]
    DuplicateGuest { guest: String, other: String },
    /// `outer`: the rw mount's guest path and key, as `/a (files.mount[0])`.
    #[error("guest path {guest} lies inside rw mount {outer}; mounts may nest only inside ro mounts")]
    InsideRwMount { guest: String, outer: String },
    /// `other`: the other key and its host path, as `files.mount[0]'s /a`.
    #[error("host path {} overlaps {other}; a tree may be mounted twice only when every use is ro", .path.display())]
    HostOverlap { path: PathBuf, other: String },
    #[error("{} is a mount point: a rw mount is swapped into place by a rename, so it must be on its parent directory's filesystem; mount a directory inside it", .0.display())]
    MountPoint(PathBuf),
    #[error("cannot write {} ({kind}): a rw mount needs write access to it and to its parent directory, where its new contents are staged", .path.display())]
    NotWritable { path: PathBuf, kind: io::ErrorKind },
    #[error("file name {name:?} is also used by {other}; both would be /in/{name}")]
    DuplicateInput { name: String, other: String },
    #[error("is required when network.enabled is true")]
    TapRequired,
    #[error("not an interface name: at most {MAX_TAP_NAME} bytes, no '/', ':' or whitespace (got {0:?})")]
    BadTap(String),
    #[error("not an IP address with a prefix length, like 10.0.0.2/24 (got {0:?})")]
    BadCidr(String),
    #[error("not an IP address, like 10.0.0.1 (got {0:?})")]
    BadIp(String),
}

impl JobSpec {
    /// Reads and checks the job file at `path`.
    pub fn load(path: &Path, host: &HostLimits) -> Result<JobSpec, SpecError> {
        JobSpec::load_beneath(path, host, &[])
    }

    /// [`JobSpec::load`], refusing any host path the job names (module,
    /// kernel, stdin, inputs, outputs, mounts) that does not lie beneath
    /// one of `files_roots` (canonical) once symlinks are resolved, unless
    /// there are none.
    pub fn load_beneath(path: &Path, host: &HostLimits, files_roots: &[PathBuf]) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
        JobSpec::parse_beneath(&text, path, host, files_roots)
    }

    /// Checks a job file's text. `file` is what messages call the file, and
    /// its directory (which must exist) is the base of relative paths.
    pub fn parse(text: &str, file: &Path, host: &HostLimits) -> Result<JobSpec, SpecError> {
        JobSpec::parse_beneath(text, file, host, &[])
    }

    /// [`JobSpec::parse`], with [`JobSpec::load_beneath`]'s `files_roots`.
    pub fn parse_beneath(
        text: &str,
        file: &Path,
        host: &HostLimits,
        files_roots: &[PathBuf],
    ) -> Result<JobSpec, SpecError> {
        let root = toml::de::DeTable::parse(text).map_err(|e| SpecError::Toml {
            at: Location { file: file.to_owned(), line: e.span().map(|s| Lines::new(text).line_of(s.start)) },
            message: e.message().to_owned(),
        })?;
        let keys = KeyIndex::new(text, root.get_ref());
        let raw = RawJob::deserialize(toml::de::Deserializer::from(root)).map_err(|e| decode_error(&e, file, &keys))?;
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::fs::canonicalize(parent).map_err(|source| SpecError::Dir { path: parent.to_owned(), source })?;
        Resolver { file, dir, keys: &keys, host, files_roots }.resolve(raw)
    }

    /// The guest's whole argv: the module's file name, then [`JobSpec::args`].
    pub fn argv(&self) -> Vec<String> {
        let argv0 = self.wasm.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::iter::once(argv0).chain(self.args.iter().cloned()).collect()
    }
}

/// Turns a serde error, which knows only a byte span, into one naming the key.
fn decode_error(e: &toml::de::Error, file: &Path, keys: &KeyIndex) -> SpecError {
    let at = |line| Location { file: file.to_owned(), line };
    let Some(span) = e.span() else {
        return SpecError::Toml { at: at(None), message: e.message().to_owned() };
    };
    let line = Some(keys.line_of_offset(span.start));
    match keys.spot(&span) {
        Some(Spot::Key(key)) => SpecError::UnknownKey { at: at(line), key: key.to_owned() },
        Some(Spot::Value(key)) => {
            SpecError::Invalid { at: at(line), key: key.to_owned(), problem: type_problem(e.message()) }
        }
        None => SpecError::Toml { at: at(line), message: e.message().to_owned() },
    }
}

/// Rewords serde's `invalid type: string "3", expected i64` in the job
/// file's terms; a message of another shape is kept as it is.
fn type_problem(message: &str) -> Problem {
    let parsed = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.rsplit_once(", expected "));
    let Some((got, expected)) = parsed else {
        return Problem::Decode(message.to_owned());
    };
    let expected = match expected {
        "i64" => "an integer",
        "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    let got = match got {
        "sequence" => "an array",
        "map" => "a table",
        g => g,
    };
    // An integer refused where an integer is expected is one beyond i64.
    if let Some(big) = got.strip_suffix(" as i128").or_else(|| got.strip_suffix(" as u128")) {
        return Problem::Type { expected: "a 64-bit integer".to_owned(), got: big.to_owned() };
    }
    Problem::Type { expected: expected.to_owned(), got: got.to_owned() }
}

/// Checks a [`RawJob`] and resolves its paths against the job directory.
struct Resolver<'a> {
    file: &'a Path,
    dir: PathBuf,
    keys: &'a KeyIndex,
    host: &'a HostLimits,
    files_roots: &'a [PathBuf],
}

impl Resolver<'_> {
    fn invalid(&self, key: &str, problem: Problem) -> SpecError {
        self.invalid_near(key, key, problem)
    }

    /// An error about `key`, on the line of `near` (for a key that is
    /// missing but should not be, the line of the key that requires it).
    fn invalid_near(&self, key: &str, near: &str, problem: Problem) -> SpecError {
        let at = Location { file: self.file.to_owned(), line: self.keys.line_of(near) };
        SpecError::Invalid { at, key: key.to_owned(), problem }
    }

    fn resolve(&self, raw: RawJob) -> Result<JobSpec, SpecError> {
        let name = match raw.name {
            Some(name) if valid_name(&name) => name,
            Some(name) => return Err(self.invalid("name", Problem::BadName(name))),
            None => default_name(&self.dir),
        };
        let g = raw.guest;
        let kernel = match g.kernel.as_deref() {
            None | Some("builtin") => Kernel::Builtin,
            Some(path) => Kernel::Path(self.confined("guest.kernel", self.existing_file("guest.kernel", path)?)?),
        };
        let memory_mib = self.int("guest.memory_mib", g.memory_mib, DEFAULT_MEMORY_MIB, MIN_MEMORY_MIB, u64::MAX)?;
        if memory_mib > self.host.memory_mib {
            let problem = Problem::AboveHostMemory { host_mib: self.host.memory_mib, got: memory_mib };
            return Err(self.invalid("guest.memory_mib", problem));
        }
        let vcpus = self.int("guest.vcpus", g.vcpus, 1, 1, MAX_VCPUS)?;
        let cpu_quota = match g.cpu_quota {
            None => None,
            Some(q) => {
                let q = self.positive("guest.cpu_quota", q)?;
                if q > f64::from(self.host.cpus) {
                    return Err(
                        self.invalid("guest.cpu_quota", Problem::AboveHostCpus { cpus: self.host.cpus, got: q })
                    );
                }
                Some(q)
            }
        };
        let timeout = match g.timeout_s {
            None => DEFAULT_TIMEOUT,
            Some(t) => {
                let t = self.positive("guest.timeout_s", t)?;
                match Duration::try_from_secs_f64(t) {
                    // Under a nanosecond rounds to no time at all.
                    Ok(d) if d.is_zero() => {
                        return Err(self.invalid("guest.timeout_s", Problem::NotPositive { got: t }))
                    }
                    Ok(d) => d,
                    Err(_) => return Err(self.invalid("guest.timeout_s", Problem::TooLarge { got: t })),
                }
            }
        };

        let wasm = match raw.run.wasm {
            None => return Err(self.invalid("run.wasm", Problem::Required)),
            Some(w) if w.ends_with(".cwasm") => return Err(self.invalid("run.wasm", Problem::Precompiled(w))),
            Some(w) if !(w.ends_with(".wasm") || w.ends_with(".wat")) => {
                return Err(self.invalid("run.wasm", Problem::NotWasmName(w)))
            }
            Some(w) => self.confined("run.wasm", self.existing_file("run.wasm", &w)?)?,
        };
        let args = raw.run.args.unwrap_or_default();
        for (i, arg) in args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(self.invalid(&format!("run.args[{i}]"), Problem::ContainsNul));
            }
        }
        let env: Vec<(String, String)> = raw.run.env.unwrap_or_default().into_iter().collect();
        for (k, v) in &env {
            let problem = if k.is_empty() {
                Problem::Empty
            } else if k.contains('=') {
                Problem::ContainsEquals
            } else if k.contains('\0') || v.contains('\0') {
                Problem::ContainsNul
            } else {
                continue;
            };
            return Err(self.invalid(&join_key("run.env", k), problem));
        }
        let stdin = raw.run.stdin.map(|path| self.confined("run.stdin", self.existing_file("run.stdin", &path)?));
        let stdin = stdin.transpose()?;

        let files = raw.files;
        let mounts = self.mounts(files.mount.unwrap_or_default())?;
        // Without mounts, /in and /out exist as they always have; with
        // mounts, only the shorthands the file gives.
        let inputs = match files.inputs {
            Some(inputs) => Some(self.inputs(inputs)?),
            None if mounts.is_empty() => Some(Vec::new()),
            None => None,
        };
        let outputs = match files.outputs.as_deref() {
            Some(outputs) => Some(self.outputs(outputs)?),
            None if mounts.is_empty() => Some(self.outputs(DEFAULT_OUTPUTS)?),
            None => None,
        };
        self.check_tree(&mounts, inputs.is_some(), outputs.as_deref())?;
        let max_mib = files.outputs_max_mib;
        let outputs_max_mib =
            self.int("files.outputs_max_mib", max_mib, DEFAULT_OUTPUTS_MAX_MIB, 1, MAX_OUTPUTS_MAX_MIB)?;
        let disk_mib = self.int("files.disk_mib", files.disk_mib, DEFAULT_DISK_MIB, 1, MAX_DISK_MIB)?;
        let network = self.network(raw.network)?;

        Ok(JobSpec {
            name,
            dir: self.dir.clone(),
            kernel,
            memory_mib,
            vcpus,
            cpu_quota,
            timeout,
            wasm,
            args,
            env,
            stdin,
            inputs,
            outputs,
            outputs_max_bytes: outputs_max_mib * MIB,
            mounts,
            disk_mib,
            network,
        })
    }

    /// An integer within `min..=max`, or `default` when absent.
    fn int(&self, key: &str, value: Option<i64>, default: u64, min: u64, max: u64) -> Result<u64, SpecError> {
        let Some(got) = value else { return Ok(default) };
        match u64::try_from(got) {
            Ok(v) if v > max => Err(self.invalid(key, Problem::Above { max, got })),
            Ok(v) if v >= min => Ok(v),
            _ => Err(self.invalid(key, Problem::Below { min, got })),
        }
    }

    /// A finite number above 0 (TOML also has `nan` and `inf`).
    fn positive(&self, key: &str, got: f64) -> Result<f64, SpecError> {
        if got.is_finite() && got > 0.0 {
            Ok(got)
        } else {
            Err(self.invalid(key, Problem::NotPositive { got }))
        }
    }

    /// `path` resolved against the job directory, as written (not
    /// canonicalized); it must be an existing regular file, symlinks followed.
    fn existing_file(&self, key: &str, path: &str) -> Result<PathBuf, SpecError> {
        let full = self.path(key, path)?;
        match std::fs::metadata(&full) {
            Ok(meta) if meta.is_file() => Ok(full),
            Ok(_) => Err(self.invalid(key, Problem::NotAFile(full))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.invalid(key, Problem::NoSuchFile(full))),
            Err(e) => Err(self.invalid(key, Problem::Inaccessible { path: full, kind: e.kind() })),
        }
    }

    fn path(&self, key: &str, path: &str) -> Result<PathBuf, SpecError> {
        if path.is_empty() {
            return Err(self.invalid(key, Problem::Empty));
        }
        if path.contains('\0') {
            return Err(self.invalid(key, Problem::ContainsNul));
        }
        Ok(self.dir.join(path))
    }

    /// `path`, unchanged, when there are no files roots or it lies beneath
    /// one once symlinks are resolved.
    fn confined(&self, key: &str, path: PathBuf) -> Result<PathBuf, SpecError> {
        let Some(first) = self.files_roots.first() else { return Ok(path) };
        let real = real_path(&path);
        if self.files_roots.iter().any(|root| real.starts_with(root)) {
            return Ok(path);
        }
        Err(self.invalid(key, Problem::OutsideFilesRoot { path: real, root: first.clone() }))
    }

    fn inputs(&self, inputs: Vec<String>) -> Result<Vec<Input>, SpecError> {
        let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
        let mut resolved = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let key = format!("files.inputs[{i}]");
            let path = self.existing_file(&key, input)?;
            let Some(name) = Path::new(input).file_name().and_then(|n| n.to_str()) else {
                return Err(self.invalid(&key, Problem::NoFileName(input.clone())));
            };
            if let Some(first) = by_name.insert(name.to_owned(), i) {
                let problem =
                    Problem::DuplicateInput { name: name.to_owned(), other: format!("files.inputs[{first}]") };
                return Err(self.invalid(&key, problem));
            }
            let path = self.confined(&key, path)?;
            let real = std::fs::canonicalize(&path)
                .map_err(|e| self.invalid(&key, Problem::Inaccessible { path: path.clone(), kind: e.kind() }))?;
            resolved.push(Input { name: name.to_owned(), path: real, given: path });
        }
        Ok(resolved)
    }

    fn outputs(&self, outputs: &str) -> Result<PathBuf, SpecError> {
        let path = self.path("files.outputs", outputs)?;
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => Err(self.invalid("files.outputs", Problem::NotADirectory(path))),
            // Canonical, so that collecting can follow no symlink on its way.
            _ => self.confined("files.outputs", real_path(&path)),
        }
    }

    /// Each `[[files.mount]]` on its own: paths, mode, access.
    fn mounts(&self, raw: Vec<RawMount>) -> Result<Vec<MountSpec>, SpecError> {
        let mut mounts = Vec::with_capacity(raw.len());
        for (i, mount) in raw.into_iter().enumerate() {
            let key = format!("files.mount[{i}]");
            let host_key = format!("{key}.host");
            let guest_key = format!("{key}.guest");
            let Some(host) = mount.host else {
                return Err(self.invalid_near(&host_key, &key, Problem::Required));
            };
            let path = self.path(&host_key, &host)?;
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.invalid(&host_key, Problem::NoSuchFile(path)))
                }
                Err(e) => return Err(self.invalid(&host_key, Problem::Inaccessible { path, kind: e.kind() })),
            };
            if !meta.is_dir() && !meta.is_file() {
                return Err(self.invalid(&host_key, Problem::NotDirOrFile(path)));
            }
            let host = std::fs::canonicalize(&path)
                .map_err(|e| self.invalid(&host_key, Problem::Inaccessible { path: path.clone(), kind: e.kind() }))?;
            let host = self.confined(&host_key, host)?;
            let Some(guest) = mount.guest else {
                return Err(self.invalid_near(&guest_key, &key, Problem::Required));
            };
            if !valid_guest_path(&guest) {
                return Err(self.invalid(&guest_key, Problem::BadGuestPath(guest)));
            }
            if guest == "/" && !meta.is_dir() {
                return Err(self.invalid(&host_key, Problem::RootNotDir(host)));
            }
            let read_only = match mount.mode.as_deref() {
                None | Some("ro") => true,
                Some("rw") => false,
                Some(other) => return Err(self.invalid(&format!("{key}.mode"), Problem::BadMode(other.to_owned()))),
            };
            if !read_only {
                if self.files_roots.contains(&host) {
                    return Err(self.invalid(&host_key, Problem::RwFilesRoot(host)));
                }
                if host.file_name().is_some_and(|n| n.len() > MAX_RW_NAME) {
                    return Err(self.invalid(&host_key, Problem::RwNameTooLong(host)));
                }
                self.writable(&host_key, &host)?;
            }
            let at = Location { file: self.file.to_owned(), line: self.keys.line_of(&key) };
            mounts.push(MountSpec { host, guest, read_only, is_dir: meta.is_dir(), key, at });
        }
        Ok(mounts)
    }

    /// A rw mount is written back by building its new contents beside it
    /// and swapping them in, so both it and its parent must be writable.
    /// The swap is a rename, so the two must also be on one filesystem.
    fn writable(&self, key: &str, host: &Path) -> Result<(), SpecError> {
        let parent = host.parent().unwrap_or(host);
        for path in [host, parent] {
            if let Err(e) = rustix::fs::access(path, rustix::fs::Access::WRITE_OK) {
                let problem = Problem::NotWritable { path: path.to_owned(), kind: io::Error::from(e).kind() };
                return Err(self.invalid(key, problem));
            }
        }
        let dev = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
                .map_err(|e| self.invalid(key, Problem::Inaccessible { path: path.to_owned(), kind: e.kind() }))
        };
        if host != parent && dev(host)? != dev(parent)? {
            return Err(self.invalid(key, Problem::MountPoint(host.to_owned())));
        }
        Ok(())
    }

    /// The mounts together with the shorthands: no two at one guest path,
    /// none inside a rw one, no host tree shared with a rw one.
    fn check_tree(&self, mounts: &[MountSpec], inputs: bool, outputs: Option<&Path>) -> Result<(), SpecError> {
        // (key, guest path, read-only, host path) of everything in the tree.
        let mut all: Vec<(String, &str, bool, Option<PathBuf>)> = Vec::new();
        if inputs {
            all.push(("files.inputs".into(), IN_DIR, true, None));
        }
        if let Some(outputs) = outputs {
            // Already resolved as far as it exists (see `outputs`).
            all.push(("files.outputs".into(), OUT_DIR, false, Some(outputs.to_owned())));
        }
        all.extend(mounts.iter().map(|m| (m.key.clone(), m.guest.as_str(), m.read_only, Some(m.host.clone()))));
        for (i, (key, guest, read_only, host)) in all.iter().enumerate() {
            let guest_key = if key.starts_with("files.mount") { format!("{key}.guest") } else { key.clone() };
            for (other_key, other_guest, other_ro, other_host) in &all[..i] {
                if guest == other_guest {
                    let problem = Problem::DuplicateGuest { guest: guest.to_string(), other: other_key.clone() };
                    return Err(self.invalid(&guest_key, problem));
                }
                let (Some(host), Some(other_host)) = (host, other_host) else { continue };
                if (!read_only || !other_ro) && (host.starts_with(other_host) || other_host.starts_with(host)) {
                    let host_key = if key.starts_with("files.mount") { format!("{key}.host") } else { key.clone() };
                    let other = format!("{other_key}'s {}", other_host.display());
                    let problem = Problem::HostOverlap { path: host.clone(), other };
                    return Err(self.invalid(&host_key, problem));
                }
            }
            for (other_key, other_guest, other_ro, _) in &all {
                if !other_ro && guest_inside(guest, other_guest) {
                    let outer = format!("{other_guest} ({other_key})");
                    let problem = Problem::InsideRwMount { guest: guest.to_string(), outer };
                    return Err(self.invalid(&guest_key, problem));
                }
            }
        }
        Ok(())
    }

    /// The network fields are checked even when it is disabled, so that a
    /// mistake does not wait until someone turns it on.
    fn network(&self, raw: RawNetwork) -> Result<Option<NetworkSpec>, SpecError> {
        if let Some(tap) = &raw.tap {
            let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c == '\0';
            if tap.is_empty() || tap.len() > MAX_TAP_NAME || tap == "." || tap == ".." || tap.contains(bad) {
                return Err(self.invalid("network.tap", Problem::BadTap(tap.clone())));
            }
        }
        let address = match raw.address {
            None => None,
            Some(a) => Some(parse_cidr(&a).ok_or_else(|| self.invalid("network.address", Problem::BadCidr(a)))?),
        };
        let gateway = match raw.gateway {
            None => None,
            Some(g) => Some(g.parse().map_err(|_| self.invalid("network.gateway", Problem::BadIp(g)))?),
        };
        if !raw.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let tap = raw.tap.ok_or_else(|| self.invalid_near("network.tap", "network.enabled", Problem::TapRequired))?;
        Ok(Some(NetworkSpec { tap, address, gateway }))
    }
}

fn parse_cidr(s: &str) -> Option<IpCidr> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix_len: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix_len <= max).then_some(IpCidr { addr, prefix_len })
}

/// `/`, or `/a/b`: absolute, with no empty, `.` or `..` component, each a
/// name the job filesystem can hold.
pub(crate) fn valid_guest_path(path: &str) -> bool {
    path == "/" || path.strip_prefix('/').is_some_and(|rest| rest.split('/').all(mvm_wasi::fsimage::valid_name))
}

/// Whether guest path `inner` lies strictly beneath `outer`.
pub(crate) fn guest_inside(inner: &str, outer: &str) -> bool {
    inner != outer && (outer == "/" || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/')))
}

/// `path` with symlinks resolved as far as it exists, the rest appended.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p: PathBuf, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name != "." && name != ".." && name.chars().all(name_char)
}

/// The job directory's name, made into a valid job name: other characters
/// become '-', and a name that cannot be saved becomes `job`.
fn default_name(dir: &Path) -> String {
    let raw = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = raw.chars().map(|c| if name_char(c) { c } else { '-' }).take(MAX_NAME_LEN).collect();
    if valid_name(&name) {
        name
    } else {
        "job".to_owned()
    }
}
