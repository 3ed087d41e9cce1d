use super::*;

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
    assert_eq!(launch.args, ["up", "--json", job_file.to_str().unwrap()]);
    // The job file written is one `mvm up` accepts as it is.
    let anchor = f.ctx.state_dir.join("jobs/job.toml");
    let spec = JobSpec::parse(launch.job_toml.as_deref().unwrap(), &anchor, &f.ctx.host).unwrap();
    assert_eq!(spec.inputs, [root.join("data/in.txt")]);
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
fn macs_are_six_hex_bytes_and_unicast() {
    assert!(valid_mac("52:54:00:12:34:56"));
    for bad in ["52:54:00:12:34", "52:54:00:12:34:5g", "53:54:00:12:34:56", "525400123456", "52:54:00:12:34:56:00"] {
        assert!(!valid_mac(bad), "{bad}");
    }
}
