use super::*;
use crate::job::spec::Input;

/// A files root holding `m.wat` and `data/in.txt`, a state dir beside it,
/// and a file outside the root.
struct Fixture {
    _tmp: tempfile::TempDir,
    ctx: RequestContext,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(state.join("jobs")).unwrap();
    std::fs::write(root.join("m.wat"), "(module)").unwrap();
    std::fs::write(root.join("data/in.txt"), "x").unwrap();
    std::fs::write(root.join("disk.img"), [0u8; 512]).unwrap();
    let outside = tmp.path().join("secret.txt");
    std::fs::write(&outside, "s").unwrap();
    let ctx = RequestContext {
        files_root: std::fs::canonicalize(&root).unwrap(),
        state_dir: std::fs::canonicalize(&state).unwrap(),
        host: HostLimits { memory_mib: 1024, cpus: 2 },
        cache_max_mib: 100,
    };
    Fixture { _tmp: tmp, ctx, outside }
}

fn job(f: &Fixture, body: Value) -> Result<Launch, ApiError> {
    super::job(&f.ctx, "abc", body.to_string().as_bytes(), 1.0)
}

fn vm(f: &Fixture, body: Value) -> Result<Launch, ApiError> {
    super::vm(&f.ctx, "abc", body.to_string().as_bytes(), 1.0)
}

fn refused(result: Result<Launch, ApiError>) -> ApiError {
    result.expect_err("the request should be refused")
}

#[test]
fn a_job_gets_absolute_paths_default_outputs_and_its_limits() {
    let f = fixture();
    let launch = job(
        &f,
        json!({
            "guest": { "memory_mib": 16, "timeout_s": 30, "cpu_quota": null },
            "run": { "wasm": "m.wat", "args": ["/in/in.txt"], "env": { "A": "b" } },
            "files": { "inputs": ["data/in.txt"] },
        }),
    )
    .unwrap();
    let root = &f.ctx.files_root;
    let spec = &launch.record.spec;
    assert_eq!(spec["run"]["wasm"], json!(root.join("m.wat")));
    assert_eq!(spec["files"]["inputs"], json!([root.join("data/in.txt")]));
    let outputs = f.ctx.state_dir.join("outputs/abc");
    assert_eq!(spec["files"]["outputs"], json!(outputs));
    assert!(spec["guest"].get("cpu_quota").is_none(), "nulls are dropped");
    assert_eq!(launch.record.name, "m", "named after its module by default");
    assert_eq!(launch.record.outputs_dir.as_deref(), Some(outputs.as_path()));
    let limits = &launch.record.limits;
    assert_eq!(
        (limits.memory_mib, limits.vcpus, limits.timeout_s, limits.outputs_max_mib),
        (16, 1, Some(30.0), Some(64))
    );
    let job_file = f.ctx.state_dir.join("jobs/abc/job.toml");
    let cache = format!("--cache-dir={}", f.ctx.state_dir.join("cache").display());
    // The child checks its paths again: under the files root, or (the
    // default outputs) the state directory's outputs.
    let root_arg = format!("--files-root={}", f.ctx.files_root.display());
    let outputs_root = format!("--files-root={}", f.ctx.state_dir.join("outputs").display());
    let job_file = job_file.to_str().unwrap();
    assert_eq!(launch.args, ["up", "--json", &cache, "--cache-max-mib=100", &root_arg, &outputs_root, job_file]);
    let chosen = job(&f, json!({ "run": { "wasm": "m.wat" }, "files": { "outputs": "o" } })).unwrap();
    assert_eq!(chosen.args, ["up", "--json", &cache, "--cache-max-mib=100", &root_arg, job_file]);
    // The job file written is one `mvm up` accepts as it is.
    let anchor = f.ctx.state_dir.join("jobs/job.toml");
    let spec = JobSpec::parse(launch.job_toml.as_deref().unwrap(), &anchor, &f.ctx.host).unwrap();
    let input = Input { name: "in.txt".into(), path: root.join("data/in.txt"), given: root.join("data/in.txt") };
    assert_eq!(spec.inputs, Some(vec![input]));
    assert_eq!(spec.env, [("A".to_owned(), "b".to_owned())]);
    assert_eq!(launch.record.state, State::Created);
}

#[test]
fn bad_bodies_and_bad_types_name_their_field() {
    let f = fixture();
    let bad = |body: &str| super::job(&f.ctx, "abc", body.as_bytes(), 1.0).expect_err("refused");
    let e = bad("{\"run\": ");
    assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, None));
    assert!(e.error.contains("not valid JSON"), "{}", e.error);
    let e = bad("[1]");
    assert_eq!((e.status, e.error.as_str()), (StatusCode::BAD_REQUEST, "the request body must be a JSON object"));
    let cases = [
        (json!({ "nme": "x" }), "nme", "unknown field `nme`"),
        (json!({ "guest": { "memory": 16 } }), "guest.memory", "unknown field `memory`"),
        (json!({ "guest": { "memory_mib": "16" } }), "guest.memory_mib", "expected an integer"),
        (json!({ "guest": { "memory_mib": 16.5 } }), "guest.memory_mib", "expected an integer"),
        (json!({ "guest": 3 }), "guest", "expected an object"),
        (json!({ "run": { "args": "a" } }), "run.args", "expected an array"),
        (json!({ "files": { "inputs": ["a", 2] } }), "files.inputs[1]", "expected a string"),
        (json!({ "network": { "enabled": "yes" } }), "network.enabled", "expected a boolean"),
    ];
    for (body, field, says) in cases {
        let e = refused(job(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {}", e.error);
        assert!(e.error.contains(says), "{body}: {}", e.error);
    }
}

#[test]
fn values_out_of_range_are_refused_by_the_job_files_own_checks() {
    let f = fixture();
    let run = json!({ "wasm": "m.wat" });
    let cases = [
        (json!({ "run": run, "guest": { "memory_mib": 0 } }), "guest.memory_mib", "must be at least 2 (got 0)"),
        (json!({ "run": run, "guest": { "memory_mib": 4096 } }), "guest.memory_mib", "host's memory"),
        (json!({ "run": run, "guest": { "cpu_quota": 3 } }), "guest.cpu_quota", "host's 2 CPUs"),
        (json!({ "run": run, "guest": { "timeout_s": -1 } }), "guest.timeout_s", "greater than 0"),
        (json!({ "run": run, "name": "a b" }), "name", "letters, digits"),
        (json!({ "guest": {} }), "run.wasm", "is required"),
        (json!({ "run": { "wasm": "nope.wat" } }), "run.wasm", "no such file"),
        (json!({ "run": run, "files": { "outputs_max_mib": 0 } }), "files.outputs_max_mib", "at least 1"),
        (json!({ "run": run, "network": { "enabled": true } }), "network.tap", "is required"),
    ];
    for (body, field, says) in cases {
        let e = refused(job(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {}", e.error);
        assert!(e.error.contains(says), "{body}: {}", e.error);
    }
}

#[test]
fn paths_outside_the_files_root_are_forbidden_even_through_a_symlink() {
    let f = fixture();
    let root = &f.ctx.files_root;
    std::os::unix::fs::symlink(&f.outside, root.join("link.txt")).unwrap();
    let wasm = json!({ "wasm": "m.wat" });
    let cases = [
        (json!({ "run": wasm, "files": { "inputs": ["data/in.txt", f.outside] } }), "files.inputs[1]"),
        (json!({ "run": wasm, "files": { "inputs": ["link.txt"] } }), "files.inputs[0]"),
        (json!({ "run": { "wasm": "/etc/x.wat" } }), "run.wasm"),
        (json!({ "run": wasm, "files": { "outputs": "/tmp/elsewhere/out" } }), "files.outputs"),
        (json!({ "run": wasm, "guest": { "kernel": f.outside } }), "guest.kernel"),
    ];
    for (body, field) in cases {
        let e = refused(job(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::FORBIDDEN, Some(field)), "{body}: {}", e.error);
        assert!(e.error.contains("must be under the files root"), "{}", e.error);
    }
    let e = refused(job(&f, json!({ "run": { "wasm": "data/../m.wat" } })));
    assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("run.wasm")));
    // An outputs directory that does not exist yet, under the root, is fine.
    let launch = job(&f, json!({ "run": wasm, "files": { "outputs": "results/today" } })).unwrap();
    assert_eq!(launch.record.outputs_dir, Some(root.join("results/today")));
}

#[test]
fn a_vm_request_becomes_mvm_boot_options() {
    let f = fixture();
    let launch = vm(
        &f,
        json!({
            "memory_mib": 16,
            "cmdline": "mvm.exit=3",
            "timeout_s": 2.5,
            "cpu_quota": 0.5,
            "disks": [{ "path": "disk.img", "read_only": true, "serial": "d0" }],
            "nets": [{ "tap": "mvm0", "mac": "52:54:00:12:34:56" }],
        }),
    )
    .unwrap();
    let disk = f.ctx.files_root.join("disk.img");
    let expected = [
        "boot".to_owned(),
        "--memory-mib=16".into(),
        "--vcpus=1".into(),
        "--kernel=builtin".into(),
        "--cmdline=mvm.exit=3".into(),
        "--timeout-s=2.5".into(),
        "--cpu-quota=0.5".into(),
        format!("--disk={},ro,serial=d0", disk.display()),
        "--net=tap=mvm0,mac=52:54:00:12:34:56".into(),
    ];
    assert_eq!(launch.args, expected);
    assert_eq!(launch.record.name, "vm-abc");
    assert_eq!(launch.record.kind, Kind::Vm);
    assert!(launch.job_toml.is_none());
}

#[test]
fn bad_vm_requests_name_their_field() {
    let f = fixture();
    let cases = [
        (json!({ "memory_mib": 0 }), "memory_mib", StatusCode::BAD_REQUEST),
        (json!({ "memory_mib": 4096 }), "memory_mib", StatusCode::BAD_REQUEST),
        (json!({ "vcpus": 0 }), "vcpus", StatusCode::BAD_REQUEST),
        (json!({ "timeout_s": 0 }), "timeout_s", StatusCode::BAD_REQUEST),
        (json!({ "cpu_quota": 9 }), "cpu_quota", StatusCode::BAD_REQUEST),
        (json!({ "cmdline": 5 }), "cmdline", StatusCode::BAD_REQUEST),
        (json!({ "disk": [] }), "disk", StatusCode::BAD_REQUEST),
        (json!({ "disks": [{}] }), "disks[0].path", StatusCode::BAD_REQUEST),
        (
            json!({ "disks": [{ "path": "disk.img", "serial": "x".repeat(21) }] }),
            "disks[0].serial",
            StatusCode::BAD_REQUEST,
        ),
        (json!({ "disks": [{ "path": f.outside }] }), "disks[0].path", StatusCode::FORBIDDEN),
        (json!({ "nets": [{ "tap": "a/b" }] }), "nets[0].tap", StatusCode::BAD_REQUEST),
        (json!({ "nets": [{ "tap": "t", "mac": "01:00:00:00:00:00" }] }), "nets[0].mac", StatusCode::BAD_REQUEST),
        (json!({ "kernel": "nope" }), "kernel", StatusCode::BAD_REQUEST),
    ];
    for (body, field, status) in cases {
        let e = refused(vm(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (status, Some(field)), "{body}: {}", e.error);
    }
}

#[test]
fn vm_limits_are_inclusive_and_everything_past_them_is_refused() {
    let f = fixture();
    let serial = "s".repeat(20);
    let launch =
        vm(&f, json!({ "cpu_quota": 2, "timeout_s": 1e-9, "disks": [{ "path": "disk.img", "serial": serial }] }))
            .unwrap();
    assert!(launch.args.contains(&"--cpu-quota=2".to_owned()), "{:?}", launch.args);
    let cases = [
        json!({ "cpu_quota": 0 }),
        json!({ "cpu_quota": -1 }),
        json!({ "cpu_quota": 2.01 }),
        json!({ "timeout_s": -1 }),
        json!({ "timeout_s": 1e-12 }),
        json!({ "timeout_s": 1e300 }),
        json!({ "disks": [{ "path": "disk.img", "serial": "s".repeat(21) }] }),
        json!({ "disks": [{ "path": "disk.img", "serial": "a,b" }] }),
    ];
    for body in cases {
        let e = refused(vm(&f, body.clone()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}: {}", e.error);
    }
}

#[test]
fn a_vms_record_has_its_disks_paths_made_absolute_and_no_nulls() {
    let f = fixture();
    let launch = vm(&f, json!({ "disks": [{ "path": "disk.img" }], "nets": [{ "tap": "t0", "mac": null }] })).unwrap();
    let spec = &launch.record.spec;
    assert_eq!(
        spec["disks"],
        json!([{ "path": f.ctx.files_root.join("disk.img"), "read_only": false, "serial": null }])
    );
    assert_eq!(spec["nets"], json!([{ "tap": "t0" }]), "a null inside an array's object is dropped too");
    let launch = vm(&f, json!({ "memory_mib": 16 })).unwrap();
    assert_eq!(launch.record.spec, json!({ "memory_mib": 16 }), "no disks, no disks key");
}

#[test]
fn files_a_request_names_are_checked_with_the_reason() {
    let f = fixture();
    let say = |body: Value| {
        let e = refused(vm(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("kernel")), "{body}: {}", e.error);
        e.error.replace(&f.ctx.files_root.display().to_string(), "$ROOT")
    };
    assert_eq!(say(json!({ "kernel": "data" })), "kernel: not a regular file: $ROOT/data");
    assert_eq!(say(json!({ "kernel": "nope" })), "kernel: no such file: $ROOT/nope");
    assert_eq!(say(json!({ "kernel": "m.wat/x" })), "kernel: cannot access $ROOT/m.wat/x: not a directory");
    let launch = vm(&f, json!({ "memory_mib": 1024, "vcpus": 64 })).unwrap();
    assert_eq!((launch.record.limits.memory_mib, launch.record.limits.vcpus), (1024, 64), "limits are inclusive");
}

#[test]
fn job_paths_keep_their_given_names_and_the_job_files_own_checks() {
    let f = fixture();
    let root = &f.ctx.files_root;
    std::os::unix::fs::symlink("m.wat", root.join("alias.wat")).unwrap();
    let launch = job(&f, json!({ "run": { "wasm": "alias.wat" } })).unwrap();
    assert_eq!(launch.record.spec["run"]["wasm"], json!(root.join("alias.wat")), "argv[0] is the name given");
    for (wasm, says) in [
        ("", "run.wasm: must name a .wasm or .wat file (got \"\")"),
        ("m\u{0}.wat", "run.wasm: must not contain a NUL byte"),
    ] {
        let e = refused(job(&f, json!({ "run": { "wasm": wasm } })));
        assert_eq!((e.status, e.error.as_str()), (StatusCode::BAD_REQUEST, says));
    }
    std::fs::write(root.join("m.cwasm"), "\x7fELF").unwrap();
    let e = refused(job(&f, json!({ "run": { "wasm": "m.cwasm" } })));
    assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("run.wasm")));
    assert!(e.error.contains("not precompiled code"), "{}", e.error);
    // An outputs directory that cannot be made is refused now, not after the job ran.
    let e = refused(job(&f, json!({ "run": { "wasm": "m.wat" }, "files": { "outputs": "m.wat/out" } })));
    assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("files.outputs")), "{}", e.error);
    assert!(e.error.ends_with("m.wat/out: not a directory"), "{}", e.error);
}

#[test]
fn a_path_outside_the_root_says_what_it_resolves_to_only_through_a_link() {
    let f = fixture();
    std::os::unix::fs::symlink(&f.outside, f.ctx.files_root.join("link.txt")).unwrap();
    let inputs = |input: &Path| json!({ "run": { "wasm": "m.wat" }, "files": { "inputs": [input] } });
    let e = refused(job(&f, inputs(&f.ctx.files_root.join("link.txt"))));
    assert!(e.error.ends_with(&format!(", which resolves to {})", f.outside.display())), "{}", e.error);
    let e = refused(job(&f, inputs(&f.outside)));
    assert!(e.error.ends_with(&format!("(got {})", f.outside.display())), "{}", e.error);
}

#[test]
fn a_vm_keeps_a_valid_name_and_a_bad_one_is_refused() {
    let f = fixture();
    assert_eq!(vm(&f, json!({ "name": "web-1.a_b" })).unwrap().record.name, "web-1.a_b");
    for bad in ["", "a b", "..", &"x".repeat(65)] {
        let e = refused(vm(&f, json!({ "name": bad })));
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("name")), "{bad:?}: {}", e.error);
    }
}

#[tokio::test]
async fn an_error_answers_with_its_status_and_a_json_body_naming_the_field() {
    let response = ApiError::field("guest.vcpus", "must be at most 64 (got 65)").into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, json!({ "error": "guest.vcpus: must be at most 64 (got 65)", "field": "guest.vcpus" }));
    let response = ApiError::not_found(Kind::Vm, "abc").into_response();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({ "error": "no vm with id \"abc\"", "field": null })
    );
}

#[test]
fn macs_are_six_hex_bytes_and_unicast() {
    assert!(valid_mac("52:54:00:12:34:56"));
    for bad in ["52:54:00:12:34", "52:54:00:12:34:5g", "53:54:00:12:34:56", "525400123456", "52:54:00:12:34:56:00"] {
        assert!(!valid_mac(bad), "{bad}");
    }
}

#[test]
fn a_jobs_stdin_file_is_opened_beneath_the_root_and_kept_out_of_the_job_file() {
    use std::io::Read;
    let f = fixture();
    let root = &f.ctx.files_root;
    for named in [json!("data/in.txt"), json!(root.join("data/in.txt"))] {
        let launch = job(&f, json!({ "run": { "wasm": "m.wat", "stdin": named } })).unwrap();
        let mut content = String::new();
        launch.stdin.expect("an open stdin").read_to_string(&mut content).unwrap();
        assert_eq!(content, "x");
        assert_eq!(launch.record.spec["run"]["stdin"], named, "the record keeps it as asked");
        let toml = launch.job_toml.unwrap();
        assert!(!toml.contains("stdin"), "the child gets the file, not its name: {toml}");
    }
    let launch = job(&f, json!({ "run": { "wasm": "m.wat" } })).unwrap();
    assert!(launch.stdin.is_none(), "no stdin field: empty stdin");
}

#[test]
fn a_stdin_file_outside_the_root_missing_or_not_a_file_is_refused() {
    let f = fixture();
    let root = &f.ctx.files_root;
    std::os::unix::fs::symlink(&f.outside, root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("../../secret.txt", root.join("data/rel.txt")).unwrap();
    let fifo = root.join("fifo");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let cases = [
        (json!(f.outside), StatusCode::FORBIDDEN, "must be under the files root"),
        (json!("link.txt"), StatusCode::FORBIDDEN, "must be under the files root"),
        (json!("data/rel.txt"), StatusCode::FORBIDDEN, "must be under the files root"),
        (json!("../secret.txt"), StatusCode::FORBIDDEN, "must be under the files root"),
        (json!("nope.txt"), StatusCode::BAD_REQUEST, "no such file: nope.txt"),
        (json!("data"), StatusCode::BAD_REQUEST, "not a regular file: data"),
        (json!(root), StatusCode::BAD_REQUEST, "not a regular file"),
        (json!("fifo"), StatusCode::BAD_REQUEST, "not a regular file: fifo"),
        (json!(""), StatusCode::BAD_REQUEST, "must not be empty"),
        (json!(3), StatusCode::BAD_REQUEST, "run.stdin"),
    ];
    for (stdin, status, message) in cases {
        let e = refused(job(&f, json!({ "run": { "wasm": "m.wat", "stdin": stdin } })));
        assert_eq!((e.status, e.field.as_deref()), (status, Some("run.stdin")), "{stdin}: {}", e.error);
        assert!(e.error.contains(message), "{stdin}: {}", e.error);
    }
}

#[test]
fn mounts_are_confined_to_the_files_root_and_named_as_the_request_names_them() {
    let f = fixture();
    let root = &f.ctx.files_root;
    let body = json!({
        "run": { "wasm": "m.wat" },
        "files": { "mounts": [{ "host": "data", "guest": "/data", "mode": "rw" }, { "host": "m.wat", "guest": "/m" }], "disk_mib": 7 },
    });
    let launch = job(&f, body).unwrap();
    let spec = &launch.record.spec;
    assert_eq!(spec["files"]["mounts"][0]["host"], json!(root.join("data")));
    assert!(spec["files"].get("mount").is_none(), "the record keeps the request's field name");
    assert!(
        spec["files"].get("outputs").is_none() && launch.record.outputs_dir.is_none(),
        "with mounts, no default /out"
    );
    let anchor = f.ctx.state_dir.join("jobs/job.toml");
    let parsed = JobSpec::parse(launch.job_toml.as_deref().unwrap(), &anchor, &f.ctx.host).unwrap();
    let mounts: Vec<_> = parsed.mounts.iter().map(|m| (m.host.clone(), m.guest.as_str(), m.read_only)).collect();
    assert_eq!(mounts, [(root.join("data"), "/data", false), (root.join("m.wat"), "/m", true)]);
    assert_eq!((parsed.disk_mib, parsed.inputs, parsed.outputs), (7, None, None));

    let wasm = json!({ "wasm": "m.wat" });
    let mount =
        |host: Value, guest: &str| json!({ "run": wasm, "files": { "mounts": [{ "host": host, "guest": guest }] } });
    let cases = [
        (mount(json!(f.outside), "/x"), StatusCode::FORBIDDEN, "files.mounts[0].host", "must be under the files root"),
        (mount(json!("nope"), "/x"), StatusCode::BAD_REQUEST, "files.mounts[0].host", "no such file"),
        (mount(json!("data"), "x/.."), StatusCode::BAD_REQUEST, "files.mounts[0].guest", "must be an absolute path"),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": root, "guest": "/x", "mode": "rw" }] } }),
            StatusCode::BAD_REQUEST,
            "files.mounts[0].host",
            "a rw mount must lie strictly beneath the files root",
        ),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": ".", "guest": "/x", "mode": "rw" }] } }),
            StatusCode::BAD_REQUEST,
            "files.mounts[0].host",
            "a rw mount must lie strictly beneath the files root",
        ),
        (mount(json!(3), "/x"), StatusCode::BAD_REQUEST, "files.mounts[0].host", "expected a string"),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": "data", "guets": "/x" }] } }),
            StatusCode::BAD_REQUEST,
            "files.mounts[0].guets",
            "unknown field",
        ),
        (
            json!({ "run": wasm, "files": { "mount": [{ "host": "data", "guest": "/x" }] } }),
            StatusCode::BAD_REQUEST,
            "files.mount",
            "expected `mounts`",
        ),
        (
            json!({ "run": wasm, "files": { "mounts": [{ "host": "data", "guest": "/x" }, { "host": "m.wat", "guest": "/x" }] } }),
            StatusCode::BAD_REQUEST,
            "files.mounts[1].guest",
            "guest path /x is also files.mounts[0]'s",
        ),
    ];
    for (body, status, field, says) in cases {
        let e = refused(job(&f, body.clone()));
        assert_eq!((e.status, e.field.as_deref()), (status, Some(field)), "{body}: {}", e.error);
        assert!(e.error.contains(says), "{body}: {}", e.error);
    }
}
