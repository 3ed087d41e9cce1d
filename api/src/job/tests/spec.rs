use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::job::spec::{parse_meminfo, RawJob};
use crate::job::{HostLimits, Input, IpCidr, JobSpec, Kernel, NetworkSpec, Problem, SpecError};

const HOST: HostLimits = HostLimits { memory_mib: 8192, cpus: 4 };

/// A job directory holding `wc.wasm`, `data/words.txt` and `other/words.txt`.
struct JobDir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl JobDir {
    fn new() -> JobDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::write(root.join("wc.wasm"), b"\0asm\x01\0\0\0").unwrap();
        fs::create_dir(root.join("data")).unwrap();
        fs::write(root.join("data/words.txt"), "a b c").unwrap();
        fs::create_dir(root.join("other")).unwrap();
        fs::write(root.join("other/words.txt"), "d").unwrap();
        JobDir { _tmp: tmp, root }
    }

    fn file(&self) -> PathBuf {
        self.root.join("job.toml")
    }

    fn parse(&self, text: &str) -> Result<JobSpec, SpecError> {
        JobSpec::parse(text, &self.file(), &HOST)
    }

    /// The error's message, with the job directory written as `$DIR`.
    fn err(&self, text: &str) -> String {
        let e = self.parse(text).expect_err("the job file should be refused");
        e.to_string().replace(&self.root.display().to_string(), "$DIR")
    }
}

const MINIMAL: &str = "[run]\nwasm = \"wc.wasm\"\n";

#[test]
fn minimal_job_gets_every_default() {
    let dir = JobDir::new();
    let spec = dir.parse(MINIMAL).unwrap();
    let expected_name = dir
        .root
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace(|c: char| !c.is_ascii_alphanumeric() && !".-_".contains(c), "-");
    assert_eq!(
        spec,
        JobSpec {
            name: expected_name,
            dir: dir.root.clone(),
            kernel: Kernel::Builtin,
            memory_mib: 64,
            vcpus: 1,
            cpu_quota: None,
            timeout: Duration::from_secs(300),
            wasm: dir.root.join("wc.wasm"),
            args: vec![],
            env: vec![],
            stdin: None,
            inputs: Some(vec![]),
            outputs: Some(dir.root.join("out/")),
            outputs_max_bytes: 64 << 20,
            mounts: vec![],
            disk_mib: 1024,
            network: None,
        }
    );
    assert_eq!(spec.argv(), ["wc.wasm"]);
}

#[test]
fn full_job_file_resolves_every_field() {
    let dir = JobDir::new();
    fs::write(dir.root.join("vmlinux"), b"kernel").unwrap();
    let text = r#"
name = "wordcount"
[guest]
kernel = "vmlinux"
memory_mib = 16
vcpus = 2
cpu_quota = 0.25
timeout_s = 2.5
[run]
wasm = "wc.wasm"
args = ["/in/words.txt", "-l"]
env = { ZED = "z", LANG = "C", "WITH SPACE" = "" }
stdin = "data/words.txt"
[files]
inputs = ["data/words.txt"]
outputs = "results"
outputs_max_mib = 1
[network]
enabled = true
tap = "tap0"
address = "10.0.0.2/24"
gateway = "10.0.0.1"
"#;
    let spec = dir.parse(text).unwrap();
    assert_eq!(spec.name, "wordcount");
    assert_eq!(spec.kernel, Kernel::Path(dir.root.join("vmlinux")));
    assert_eq!((spec.memory_mib, spec.vcpus, spec.cpu_quota), (16, 2, Some(0.25)));
    assert_eq!(spec.timeout, Duration::from_millis(2500));
    assert_eq!(spec.args, ["/in/words.txt", "-l"]);
    assert_eq!(spec.argv(), ["wc.wasm", "/in/words.txt", "-l"]);
    let env: Vec<(&str, &str)> = spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("LANG", "C"), ("WITH SPACE", ""), ("ZED", "z")], "sorted by key");
    assert_eq!(spec.stdin, Some(dir.root.join("data/words.txt")));
    assert_eq!(
        spec.inputs,
        Some(vec![Input {
            name: "words.txt".into(),
            path: dir.root.join("data/words.txt"),
            given: dir.root.join("data/words.txt")
        }])
    );
    assert_eq!(spec.outputs, Some(dir.root.join("results")));
    assert_eq!(spec.outputs_max_bytes, 1 << 20);
    let ip = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    assert_eq!(
        spec.network,
        Some(NetworkSpec {
            tap: "tap0".into(),
            address: Some(IpCidr { addr: ip(10, 0, 0, 2), prefix_len: 24 }),
            gateway: Some(ip(10, 0, 0, 1)),
        })
    );
}

#[test]
fn integers_are_accepted_where_numbers_are() {
    let dir = JobDir::new();
    let spec = dir.parse("[run]\nwasm = \"wc.wasm\"\n[guest]\ncpu_quota = 1\ntimeout_s = 30\n").unwrap();
    assert_eq!(spec.cpu_quota, Some(1.0));
    assert_eq!(spec.timeout, Duration::from_secs(30));
}

#[test]
fn dotted_keys_and_wat_modules_are_accepted() {
    let dir = JobDir::new();
    fs::write(dir.root.join("m.wat"), "(module)").unwrap();
    let spec = dir.parse("run.wasm = \"m.wat\"\nguest.vcpus = 3\n").unwrap();
    assert_eq!((spec.wasm, spec.vcpus), (dir.root.join("m.wat"), 3));
}

#[test]
fn default_name_is_the_directory_name_made_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let jobdir = tmp.path().join("my job!");
    fs::create_dir(&jobdir).unwrap();
    fs::write(jobdir.join("wc.wasm"), b"").unwrap();
    let spec = JobSpec::parse(MINIMAL, &jobdir.join("job.toml"), &HOST).unwrap();
    assert_eq!(spec.name, "my-job-");
}

#[test]
fn relative_paths_resolve_against_the_job_file_directory() {
    let dir = JobDir::new();
    let jobdir = dir.root.join("jobs/a");
    fs::create_dir_all(&jobdir).unwrap();
    let abs_input = dir.root.join("data/words.txt");
    let text = format!(
        "[run]\nwasm = \"../../wc.wasm\"\n[files]\ninputs = [\"{}\"]\noutputs = \"../out\"\n",
        abs_input.display()
    );
    let spec = JobSpec::parse(&text, &jobdir.join("job.toml"), &HOST).unwrap();
    assert_eq!(spec.dir, jobdir);
    assert_eq!(spec.wasm, jobdir.join("../../wc.wasm"));
    assert!(spec.wasm.is_absolute());
    assert_eq!(spec.inputs, Some(vec![Input { name: "words.txt".into(), path: abs_input.clone(), given: abs_input }]));
    assert_eq!(spec.outputs, Some(dir.root.join("jobs/out")), "resolved as far as it exists, so never through a link");
    assert_eq!(spec.name, "a");
}

#[test]
fn disabled_network_is_none_but_its_fields_are_still_checked() {
    let dir = JobDir::new();
    let base = "[run]\nwasm = \"wc.wasm\"\n[network]\n";
    let spec = dir.parse(&format!("{base}enabled = false\ntap = \"tap0\"\naddress = \"fd00::2/64\"\n")).unwrap();
    assert_eq!(spec.network, None);
    assert_eq!(
        dir.err(&format!("{base}address = \"10.0.0.2\"\n")),
        "$DIR/job.toml:4: network.address: not an IP address with a prefix length, like 10.0.0.2/24 (got \"10.0.0.2\")"
    );
}

/// Each case: the job file after `[run]` and `wasm` (so it starts on line
/// 3), and the message expected.
#[test]
fn every_invalid_value_names_its_key_and_line() {
    let cases: &[(&str, &str)] = &[
        ("[guest]\nmemory_mib = 0", "job.toml:4: guest.memory_mib: must be at least 2 (got 0)"),
        ("[guest]\nmemory_mib = -5", "job.toml:4: guest.memory_mib: must be at least 2 (got -5)"),
        (
            "[guest]\nmemory_mib = 9000",
            "job.toml:4: guest.memory_mib: must be at most the host's memory, 8192 MiB (got 9000)",
        ),
        ("[guest]\nvcpus = 0", "job.toml:4: guest.vcpus: must be at least 1 (got 0)"),
        ("[guest]\nvcpus = 65", "job.toml:4: guest.vcpus: must be at most 64 (got 65)"),
        ("[guest]\ncpu_quota = 0", "job.toml:4: guest.cpu_quota: must be a number greater than 0 (got 0.0)"),
        ("[guest]\ncpu_quota = -0.5", "job.toml:4: guest.cpu_quota: must be a number greater than 0 (got -0.5)"),
        ("[guest]\ncpu_quota = nan", "job.toml:4: guest.cpu_quota: must be a number greater than 0 (got NaN)"),
        ("[guest]\ncpu_quota = 4.5", "job.toml:4: guest.cpu_quota: must be at most the host's 4 CPUs (got 4.5)"),
        ("[guest]\ntimeout_s = 0", "job.toml:4: guest.timeout_s: must be a number greater than 0 (got 0.0)"),
        ("[guest]\ntimeout_s = inf", "job.toml:4: guest.timeout_s: must be a number greater than 0 (got inf)"),
        ("[guest]\ntimeout_s = 1e300", "job.toml:4: guest.timeout_s: is too large (got 1e300)"),
        ("[guest]\ntimeout_s = 1e-12", "job.toml:4: guest.timeout_s: must be a number greater than 0 (got 1e-12)"),
        ("[guest]\nkernel = \"nope\"", "job.toml:4: guest.kernel: no such file: $DIR/nope"),
        ("[guest]\nkernel = \"data\"", "job.toml:4: guest.kernel: not a regular file: $DIR/data"),
        ("[files]\noutputs_max_mib = 0", "job.toml:4: files.outputs_max_mib: must be at least 1 (got 0)"),
        ("[files]\noutputs_max_mib = 4097", "job.toml:4: files.outputs_max_mib: must be at most 4096 (got 4097)"),
        ("[files]\ndisk_mib = 0", "job.toml:4: files.disk_mib: must be at least 1 (got 0)"),
        ("[files]\ndisk_mib = 1048577", "job.toml:4: files.disk_mib: must be at most 1048576 (got 1048577)"),
        ("[files]\noutputs = \"wc.wasm\"", "job.toml:4: files.outputs: exists and is not a directory: $DIR/wc.wasm"),
        ("[files]\noutputs = \"\"", "job.toml:4: files.outputs: must not be empty"),
        ("[files]\ninputs = [\"data/words.txt\",\n  \"missing.txt\"]", "job.toml:5: files.inputs[1]: no such file: $DIR/missing.txt"),
        ("[files]\ninputs = [\"data\"]", "job.toml:4: files.inputs[0]: not a regular file: $DIR/data"),
        (
            "[files]\ninputs = [\"data/words.txt\", \"other/words.txt\"]",
            "job.toml:4: files.inputs[1]: file name \"words.txt\" is also used by files.inputs[0]; both would be /in/words.txt",
        ),
        ("[network]\nenabled = true", "job.toml:4: network.tap: is required when network.enabled is true"),
        (
            "[network]\ntap = \"a-name-much-too-long\"",
            "job.toml:4: network.tap: not an interface name: at most 15 bytes, no '/', ':' or whitespace (got \"a-name-much-too-long\")",
        ),
        (
            "[network]\naddress = \"10.0.0.2/33\"",
            "job.toml:4: network.address: not an IP address with a prefix length, like 10.0.0.2/24 (got \"10.0.0.2/33\")",
        ),
        ("[network]\ngateway = \"10.0.0\"", "job.toml:4: network.gateway: not an IP address, like 10.0.0.1 (got \"10.0.0\")"),
    ];
    let dir = JobDir::new();
    for (body, expected) in cases {
        let message = dir.err(&format!("{MINIMAL}{body}\n"));
        assert_eq!(message, format!("$DIR/{expected}"), "for {body:?}");
    }
}

/// Every limit is inclusive: the largest value allowed is allowed.
#[test]
fn values_at_their_limits_are_accepted() {
    let dir = JobDir::new();
    let text =
        format!("{MINIMAL}[guest]\nmemory_mib = 8192\nvcpus = 64\ncpu_quota = 4\n[files]\noutputs_max_mib = 4096\n");
    let spec = dir.parse(&text).unwrap();
    assert_eq!((spec.memory_mib, spec.vcpus, spec.cpu_quota), (8192, 64, Some(4.0)));
    assert_eq!(spec.outputs_max_bytes, 4096 << 20);
    let spec = dir.parse(&format!("{MINIMAL}[guest]\nmemory_mib = 2\nvcpus = 1\n")).unwrap();
    assert_eq!((spec.memory_mib, spec.vcpus), (2, 1));
    let spec = dir.parse(&format!("{MINIMAL}[files]\noutputs = \"data\"\n")).unwrap();
    assert_eq!(spec.outputs, Some(dir.root.join("data")), "an existing directory is a fine outputs directory");
}

#[test]
fn a_path_that_cannot_be_looked_up_is_not_called_missing() {
    let dir = JobDir::new();
    assert_eq!(
        dir.err("[run]\nwasm = \"wc.wasm/m.wasm\""),
        "$DIR/job.toml:2: run.wasm: cannot access $DIR/wc.wasm/m.wasm: not a directory"
    );
}

#[test]
fn every_kind_of_bad_tap_name_and_address_is_refused() {
    let dir = JobDir::new();
    let too_long = "t".repeat(16);
    for tap in ["", ".", "..", too_long.as_str(), "a/b", "a:b", "a b", "a\tb", "a\\u0000b"] {
        let message = dir.err(&format!("{MINIMAL}[network]\ntap = \"{tap}\"\n"));
        assert!(message.starts_with("$DIR/job.toml:4: network.tap: not an interface name"), "{tap:?}: {message}");
    }
    for address in ["10.0.0.2", "10.0.0.2/", "10.0.0.2/+24", "10.0.0.2/ 24", "10.0.0.2/33", "::1/129", "x/24"] {
        let message = dir.err(&format!("{MINIMAL}[network]\naddress = \"{address}\"\n"));
        assert!(message.contains("network.address: not an IP address with a prefix length"), "{address:?}: {message}");
    }
    for tap in ["t", "mvm-0.1_x", &"t".repeat(15)] {
        let spec = dir.parse(&format!("{MINIMAL}[network]\nenabled = true\ntap = \"{tap}\"\n")).unwrap();
        assert_eq!(spec.network.unwrap().tap, tap);
    }
}

#[test]
fn invalid_run_values_name_their_key_and_line() {
    let dir = JobDir::new();
    let cases: &[(&str, &str)] = &[
        (
            "name = \"a b\"\n[run]\nwasm = \"wc.wasm\"",
            "job.toml:1: name: must be at most 64 letters, digits, '.', '_' or '-', and not '.' or '..' (got \"a b\")",
        ),
        ("[run]\nwasm = \"missing.wasm\"", "job.toml:2: run.wasm: no such file: $DIR/missing.wasm"),
        (
            "[run]\nwasm = \"data/words.txt\"",
            "job.toml:2: run.wasm: must name a .wasm or .wat file (got \"data/words.txt\")",
        ),
        (
            "[run]\nwasm = \"m.cwasm\"",
            "job.toml:2: run.wasm: must name a .wasm or .wat file, not precompiled code (got \"m.cwasm\"): mvm runs \
             only code it compiled itself; give the module the .cwasm was compiled from",
        ),
        ("[run]\nargs = []", "job.toml:1: run.wasm: is required"),
        ("[run]\nwasm = \"wc.wasm\"\nstdin = \"nope.txt\"", "job.toml:3: run.stdin: no such file: $DIR/nope.txt"),
        ("[run]\nwasm = \"wc.wasm\"\nstdin = \"data\"", "job.toml:3: run.stdin: not a regular file: $DIR/data"),
        ("[run]\nwasm = \"wc.wasm\"\nstdin = \"\"", "job.toml:3: run.stdin: must not be empty"),
        ("[run]\nwasm = \"wc.wasm\"\nstdin = 3", "job.toml:3: run.stdin: must be a string (got integer `3`)"),
        ("name = \"x\"", "job.toml: run.wasm: is required"),
        (
            "[run]\nwasm = \"wc.wasm\"\nargs = [\"ok\", \"a\\u0000b\"]",
            "job.toml:3: run.args[1]: must not contain a NUL byte",
        ),
        ("[run]\nwasm = \"wc.wasm\"\nenv = { \"\" = \"x\" }", "job.toml:3: run.env.\"\": must not be empty"),
        ("[run]\nwasm = \"wc.wasm\"\nenv = { \"A=B\" = \"x\" }", "job.toml:3: run.env.\"A=B\": must not contain '='"),
        (
            "[run]\nwasm = \"wc.wasm\"\n[run.env]\nA = \"x\\u0000\"",
            "job.toml:4: run.env.A: must not contain a NUL byte",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(dir.err(text), format!("$DIR/{expected}"), "for {text:?}");
    }
}

#[test]
fn input_names_may_be_as_long_as_the_host_allows() {
    let dir = JobDir::new();
    let long = "n".repeat(255);
    fs::write(dir.root.join(&long), "").unwrap();
    let spec = dir.parse(&format!("{MINIMAL}[files]\ninputs = [\"{long}\"]\n")).unwrap();
    assert_eq!(
        spec.inputs,
        Some(vec![Input { name: long.clone(), path: dir.root.join(&long), given: dir.root.join(&long) }])
    );
}

#[test]
fn unknown_keys_are_refused_at_every_level() {
    let dir = JobDir::new();
    let cases: &[(&str, &str)] = &[
        ("colour = \"red\"\n[run]\nwasm = \"wc.wasm\"", "job.toml:1: unknown key colour"),
        ("[run]\nwasm = \"wc.wasm\"\n[guest]\nmemroy_mib = 3", "job.toml:4: unknown key guest.memroy_mib"),
        ("guest.memroy_mib = 3\n[run]\nwasm = \"wc.wasm\"", "job.toml:1: unknown key guest.memroy_mib"),
        ("[run]\nwasm = \"wc.wasm\"\nargv = []", "job.toml:3: unknown key run.argv"),
        ("[run]\nwasm = \"wc.wasm\"\n[files]\ninput = []", "job.toml:4: unknown key files.input"),
        (
            "[run]\nwasm = \"wc.wasm\"\n[network]\n\"allowed peers\" = []",
            "job.toml:4: unknown key network.\"allowed peers\"",
        ),
        ("[run]\nwasm = \"wc.wasm\"\n[extra]\nx = 1", "job.toml:3: unknown key extra"),
    ];
    for (text, expected) in cases {
        assert_eq!(dir.err(text), format!("$DIR/{expected}"), "for {text:?}");
    }
}

#[test]
fn wrong_types_name_the_key_and_the_type_expected() {
    let dir = JobDir::new();
    let cases: &[(&str, &str)] = &[
        ("[guest]\nmemory_mib = \"16\"", "job.toml:4: guest.memory_mib: must be an integer (got string \"16\")"),
        (
            "[guest]\nmemory_mib = 99999999999999999999",
            "job.toml:4: guest.memory_mib: must be a 64-bit integer (got integer `99999999999999999999`)",
        ),
        ("[guest]\nmemory_mib = 16.5", "job.toml:4: guest.memory_mib: must be an integer (got floating point `16.5`)"),
        ("[guest]\ntimeout_s = \"30\"", "job.toml:4: guest.timeout_s: must be a number (got string \"30\")"),
        ("[guest]\nkernel = 1", "job.toml:4: guest.kernel: must be a string (got integer `1`)"),
        (
            "[files]\ninputs = \"data/words.txt\"",
            "job.toml:4: files.inputs: must be an array (got string \"data/words.txt\")",
        ),
        ("[files]\ninputs = [1]", "job.toml:4: files.inputs[0]: must be a string (got integer `1`)"),
        ("[network]\nenabled = \"yes\"", "job.toml:4: network.enabled: must be a boolean (got string \"yes\")"),
    ];
    for (body, expected) in cases {
        assert_eq!(dir.err(&format!("{MINIMAL}{body}\n")), format!("$DIR/{expected}"), "for {body:?}");
    }
    assert_eq!(
        dir.err("[run]\nwasm = \"wc.wasm\"\nenv = { A = 1 }\n"),
        "$DIR/job.toml:3: run.env.A: must be a string (got integer `1`)"
    );
    assert_eq!(
        dir.err("guest = 3\n[run]\nwasm = \"wc.wasm\"\n"),
        "$DIR/job.toml:1: guest: must be a table (got integer `3`)"
    );
    assert_eq!(
        dir.err("[run]\nwasm = \"wc.wasm\"\nargs = \"x\"\n"),
        "$DIR/job.toml:3: run.args: must be an array (got string \"x\")"
    );
}

#[test]
fn syntax_errors_keep_toml_message_and_line() {
    let dir = JobDir::new();
    let e = dir.parse("[run]\nwasm = \"wc.wasm\"\nname = 'oops\n").unwrap_err();
    let SpecError::Toml { at, message } = &e else { panic!("not a syntax error: {e}") };
    assert_eq!(at.line, Some(3));
    assert!(!message.is_empty());
    assert!(e.to_string().starts_with(&format!("{}:3: ", dir.file().display())), "{e}");
    let e = dir.parse("[run]\nwasm = \"wc.wasm\"\nwasm = \"x.wasm\"\n").unwrap_err();
    assert!(matches!(&e, SpecError::Toml { at, .. } if at.line == Some(3)), "{e}");
}

#[test]
fn errors_carry_key_and_problem() {
    let dir = JobDir::new();
    let e = dir.parse(&format!("{MINIMAL}[guest]\nvcpus = 0\n")).unwrap_err();
    let SpecError::Invalid { at, key, problem } = e else { panic!("{e}") };
    assert_eq!((at.line, key.as_str(), problem), (Some(4), "guest.vcpus", Problem::Below { min: 1, got: 0 }));
}

#[test]
fn load_reads_the_file_and_reports_a_missing_one() {
    let dir = JobDir::new();
    fs::write(dir.file(), MINIMAL).unwrap();
    assert_eq!(JobSpec::load(&dir.file(), &HOST).unwrap().wasm, dir.root.join("wc.wasm"));
    let missing = dir.root.join("nope.toml");
    let e = JobSpec::load(&missing, &HOST).unwrap_err();
    assert!(matches!(&e, SpecError::Read { path, .. } if path == &missing), "{e}");
    assert_eq!(e.to_string(), format!("{}: cannot read the job file", missing.display()));
}

#[test]
fn job_file_given_by_bare_name_uses_the_current_directory() {
    // The test binary's cwd is the crate directory; only the directory is
    // resolved here, so the missing wasm is what fails, with an absolute path.
    let e = JobSpec::parse(MINIMAL, Path::new("job.toml"), &HOST).unwrap_err();
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    assert_eq!(e.to_string(), format!("job.toml:2: run.wasm: no such file: {}", cwd.join("wc.wasm").display()));
}

#[test]
fn raw_job_deserializes_from_json_with_the_same_rules() {
    let raw: RawJob =
        serde_json::from_str(r#"{"run": {"wasm": "wc.wasm", "env": {"A": "1"}}, "guest": {"memory_mib": 16}}"#)
            .unwrap();
    assert_eq!(raw.run.wasm.as_deref(), Some("wc.wasm"));
    assert_eq!(raw.guest.memory_mib, Some(16));
    let e = serde_json::from_str::<RawJob>(r#"{"guest": {"memroy_mib": 16}}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `memroy_mib`"), "{e}");
}

#[test]
fn meminfo_parsing() {
    let text = "MemFree:  1000 kB\nMemTotal:       16318412 kB\nBuffers: 1 kB\n";
    assert_eq!(parse_meminfo(text), Some(15935));
    assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
    let host = HostLimits::detect();
    assert!(host.memory_mib > 0 && host.cpus > 0);
}

#[test]
fn mounts_resolve_and_take_the_place_of_the_shorthands() {
    let dir = JobDir::new();
    let text = format!(
        "{MINIMAL}[files]\ndisk_mib = 5\n[[files.mount]]\nhost = \"data\"\nguest = \"/data\"\nmode = \"rw\"\n\
         [[files.mount]]\nhost = \"{}\"\nguest = \"/etc/words\"\n",
        dir.root.join("other/words.txt").display()
    );
    let spec = dir.parse(&text).unwrap();
    assert_eq!((spec.inputs.clone(), spec.outputs.clone(), spec.disk_mib), (None, None, 5), "no /in or /out");
    let mounts: Vec<_> =
        spec.mounts.iter().map(|m| (m.host.clone(), m.guest.as_str(), m.read_only, m.is_dir, m.label())).collect();
    let file = dir.file().display().to_string();
    assert_eq!(
        mounts,
        [
            (dir.root.join("data"), "/data", false, true, format!("{file}:5: files.mount[0]")),
            (dir.root.join("other/words.txt"), "/etc/words", true, false, format!("{file}:9: files.mount[1]")),
        ],
        "ro by default"
    );
    let text = format!(
        "{MINIMAL}[files]\ninputs = [\"data/words.txt\"]\noutputs = \"results\"\n[[files.mount]]\nhost = \"other\"\nguest = \"/\"\n"
    );
    let spec = dir.parse(&text).unwrap();
    assert_eq!(
        spec.inputs,
        Some(vec![Input {
            name: "words.txt".into(),
            path: dir.root.join("data/words.txt"),
            given: dir.root.join("data/words.txt")
        }])
    );
    assert_eq!(spec.outputs, Some(dir.root.join("results")));
    assert_eq!(spec.mounts[0].guest, "/", "a ro mount at / may hold the shorthands");
}

#[test]
fn a_symlinked_host_path_is_resolved_and_ro_trees_may_be_mounted_twice() {
    let dir = JobDir::new();
    std::os::unix::fs::symlink(dir.root.join("data"), dir.root.join("link")).unwrap();
    let text = format!(
        "{MINIMAL}[[files.mount]]\nhost = \"link\"\nguest = \"/a\"\n[[files.mount]]\nhost = \"data/words.txt\"\nguest = \"/a/w\"\n"
    );
    let spec = dir.parse(&text).unwrap();
    assert_eq!(spec.mounts[0].host, dir.root.join("data"));
    assert_eq!(spec.mounts[1].guest, "/a/w", "a mount may lie inside a ro mount");
}

/// Each case: what follows [`MINIMAL`] (so it starts on line 3), and the
/// message expected.
#[test]
fn every_bad_mount_names_its_key_and_line() {
    let dir = JobDir::new();
    let _socket = std::os::unix::net::UnixListener::bind(dir.root.join("sock")).unwrap();
    let m = |host: &str, guest: &str, mode: &str| {
        format!("[[files.mount]]\nhost = \"{host}\"\nguest = \"{guest}\"\nmode = \"{mode}\"\n")
    };
    let cases: Vec<(String, String)> = vec![
        (m("nope", "/x", "ro"), "job.toml:4: files.mount[0].host: no such file: $DIR/nope".into()),
        (m("sock", "/x", "ro"), "job.toml:4: files.mount[0].host: not a directory or regular file: $DIR/sock".into()),
        (m("", "/x", "ro"), "job.toml:4: files.mount[0].host: must not be empty".into()),
        ("[[files.mount]]\nguest = \"/x\"\n".into(), "job.toml:3: files.mount[0].host: is required".into()),
        ("[[files.mount]]\nhost = \"data\"\n".into(), "job.toml:3: files.mount[0].guest: is required".into()),
        ("[[files.mount]]\nhost = \"data\"\nhots = 1\n".into(), "job.toml:5: unknown key files.mount[0].hots".into()),
        (m("data", "/x", "rx"), "job.toml:6: files.mount[0].mode: must be \"ro\" or \"rw\" (got \"rx\")".into()),
        (m("wc.wasm", "/", "ro"), "job.toml:4: files.mount[0].host: a mount at / must be a directory, not the file $DIR/wc.wasm".into()),
        (m("data", "/a/b", "ro") + &m("other", "/a/b", "ro"),
            "job.toml:9: files.mount[1].guest: guest path /a/b is also files.mount[0]'s".into()),
        ("[files]\ninputs = []\n".to_owned() + &m("data", "/in", "ro"),
            "job.toml:7: files.mount[0].guest: guest path /in is also files.inputs's".into()),
        ("[files]\noutputs = \"results\"\n".to_owned() + &m("data", "/out", "ro"),
            "job.toml:7: files.mount[0].guest: guest path /out is also files.outputs's".into()),
        (m("data", "/a", "rw") + &m("other", "/a/b", "ro"),
            "job.toml:9: files.mount[1].guest: guest path /a/b lies inside rw mount /a (files.mount[0]); mounts may nest only inside ro mounts".into()),
        (m("other", "/a/b", "ro") + &m("data", "/a", "rw"),
            "job.toml:5: files.mount[0].guest: guest path /a/b lies inside rw mount /a (files.mount[1]); mounts may nest only inside ro mounts".into()),
        ("[files]\noutputs = \"results\"\n".to_owned() + &m("data", "/", "rw"),
            "job.toml:4: files.outputs: guest path /out lies inside rw mount / (files.mount[0]); mounts may nest only inside ro mounts".into()),
        (m("data", "/a", "rw") + &m("data/words.txt", "/b", "ro"),
            "job.toml:8: files.mount[1].host: host path $DIR/data/words.txt overlaps files.mount[0]'s $DIR/data; a tree may be mounted twice only when every use is ro".into()),
        ("[files]\noutputs = \"data/out\"\n".to_owned() + &m(".", "/job", "ro"),
            "job.toml:6: files.mount[0].host: host path $DIR overlaps files.outputs's $DIR/data/out; a tree may be mounted twice only when every use is ro".into()),
    ];
    for (body, expected) in cases {
        assert_eq!(dir.err(&format!("{MINIMAL}{body}")), format!("$DIR/{expected}"), "for {body:?}");
    }
    for guest in ["x", "/a/", "/a//b", "/a/./b", "/a/../b", "", "/a\u{0}"] {
        let body = m("data", guest, "ro").replace('\0', "\\u0000");
        let expected = format!(
            "$DIR/job.toml:5: files.mount[0].guest: must be an absolute path with no empty, '.' or '..' component, \
             each at most 255 bytes (got {guest:?})"
        );
        assert_eq!(dir.err(&format!("{MINIMAL}{body}")), expected, "for {guest:?}");
    }
    let long = format!("/{}", "n".repeat(256));
    assert!(dir
        .err(&format!("{MINIMAL}{}", m("data", &long, "ro")))
        .contains("files.mount[0].guest: must be an absolute"));
}

#[test]
fn a_rw_mount_must_be_on_its_parents_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let dir = JobDir::new();
    let text = format!("{MINIMAL}[[files.mount]]\nhost = \"/proc\"\nguest = \"/p\"\nmode = \"rw\"\n");
    let message = dir.err(&text);
    // Root may write /proc and /; anyone else cannot write /proc.
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        assert_eq!(
            message,
            "$DIR/job.toml:4: files.mount[0].host: /proc is a mount point: a rw mount is swapped into place by a \
             rename, so it must be on its parent directory's filesystem; mount a directory inside it"
        );
    } else {
        assert!(message.starts_with("$DIR/job.toml:4: files.mount[0].host: cannot write /proc"), "{message}");
    }
    let text = format!("{MINIMAL}[[files.mount]]\nhost = \"/proc\"\nguest = \"/p\"\n");
    assert_eq!(dir.parse(&text).unwrap().mounts[0].host, Path::new("/proc"), "ro, it is fine");
}

/// `mvm up --files-root` (what `mvm serve` runs): every host path is
/// checked again as the child loads it, links resolved.
#[test]
fn with_a_files_root_every_host_path_must_lie_beneath_it() {
    let dir = JobDir::new();
    let root = dir.root.join("data");
    fs::write(root.join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink(dir.root.join("other"), root.join("escape")).unwrap();
    let roots = [root.clone()];
    let parse = |text: &str| JobSpec::parse_beneath(text, &root.join("job.toml"), &HOST, &roots);
    let ok = "[run]\nwasm = \"m.wasm\"\nstdin = \"words.txt\"\n[files]\ninputs = [\"words.txt\"]\noutputs = \"out\"\n\
              [[files.mount]]\nhost = \"sub\"\nguest = \"/d\"\n";
    parse(ok).unwrap();
    let m = "[run]\nwasm = \"m.wasm\"\n";
    let cases = [
        ("[run]\nwasm = \"../wc.wasm\"\n".to_owned(), "run.wasm", "$DIR/wc.wasm"),
        ("[run]\nwasm = \"m.wasm\"\nstdin = \"escape/words.txt\"\n".to_owned(), "run.stdin", "$DIR/other/words.txt"),
        (format!("[guest]\nkernel = \"../wc.wasm\"\n{m}"), "guest.kernel", "$DIR/wc.wasm"),
        (format!("{m}[files]\ninputs = [\"escape/words.txt\"]\n"), "files.inputs[0]", "$DIR/other/words.txt"),
        (format!("{m}[files]\noutputs = \"escape/new\"\n"), "files.outputs", "$DIR/other/new"),
        (format!("{m}[[files.mount]]\nhost = \"escape\"\nguest = \"/d\"\n"), "files.mount[0].host", "$DIR/other"),
    ];
    for (text, key, path) in cases {
        let e = parse(&text).expect_err(key).to_string().replace(&dir.root.display().to_string(), "$DIR");
        assert!(e.ends_with(&format!("{key}: {path} is not under the files root $DIR/data")), "{e}");
    }
    let e = parse(&format!("{m}[[files.mount]]\nhost = \".\"\nguest = \"/d\"\nmode = \"rw\"\n")).unwrap_err();
    assert!(e.to_string().contains("files.mount[0].host: ") && e.to_string().contains("is the files root"), "{e}");
    parse(&format!("{m}[[files.mount]]\nhost = \".\"\nguest = \"/d\"\n")).unwrap();
}

/// Its staging copy, `.NAME.mvm-` and 16 hex digits, must be a name too.
#[test]
fn a_rw_mounts_name_leaves_room_for_its_staging_copys() {
    let dir = JobDir::new();
    for len in [233, 234] {
        fs::create_dir(dir.root.join("d".repeat(len))).unwrap();
    }
    let rw = |len: usize| {
        format!("{MINIMAL}[[files.mount]]\nhost = \"{}\"\nguest = \"/d\"\nmode = \"rw\"\n", "d".repeat(len))
    };
    dir.parse(&rw(233)).unwrap();
    let e = dir.err(&rw(234));
    let expected = format!(
        "$DIR/job.toml:4: files.mount[0].host: $DIR/{}: a rw mount's name may be at most 233 bytes",
        "d".repeat(234)
    );
    assert!(e.starts_with(&expected), "{e}");
    dir.parse(&rw(234).replace("rw", "ro")).unwrap();
}
