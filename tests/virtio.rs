//! virtio-blk and virtio-net end to end: the guest's drivers against mvm's
//! devices, with real image files and a real TAP in a network namespace.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{boot, guest_elf};

/// FNV-1a, 64 bits, as the guest computes it.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The byte the guest's write test puts at `offset`.
fn pattern(offset: u64) -> u8 {
    (offset as u8) ^ ((offset >> 9) as u8).wrapping_mul(31)
}

fn image(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn known_content(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_reads_a_disk_and_its_checksum_matches() {
    common::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let content = known_content(3 * 1024 * 1024 + 512);
    let disk = image(dir.path(), "data.img", &content);
    let (code, stdout, stderr) =
        boot(&["--disk", &format!("{disk},ro,serial=data-disk-1"), "--cmdline", "mvm.test=blk-sum:0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let expected = format!(
        "blk sectors={} read_only=true id=\"data-disk-1\" fnv1a64={:#018x}",
        content.len() / 512,
        fnv1a(&content)
    );
    assert!(stdout.contains(&expected), "expected {expected:?} in {stdout}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn guest_writes_a_second_disk_byte_for_byte() {
    common::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let first = image(dir.path(), "first.img", &known_content(64 * 1024));
    let second = image(dir.path(), "second.img", &vec![0u8; 2 * 1024 * 1024]);
    let (code, stdout, stderr) =
        boot(&["--disk", &format!("{first},ro"), "--disk", &second, "--cmdline", "mvm.test=blk-write:1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("blk wrote bytes=2097152"), "{stdout}");
    let written = std::fs::read(&second).unwrap();
    assert_eq!(written.len(), 2 * 1024 * 1024, "the image keeps its size");
    let wrong = written.iter().enumerate().position(|(i, b)| *b != pattern(i as u64));
    assert_eq!(wrong, None, "first wrong byte");
    // The read-only first disk is untouched.
    assert_eq!(std::fs::read(&first).unwrap(), known_content(64 * 1024));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn read_only_disk_refuses_writes() {
    common::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let content = known_content(8192);
    let disk = image(dir.path(), "ro.img", &content);
    let (code, stdout, stderr) = boot(&["--disk", &format!("{disk},ro"), "--cmdline", "mvm.test=blk-ro:0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("blk write refused: IoError (read_only=true)"), "{stdout}");
    assert_eq!(std::fs::read(&disk).unwrap(), content);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn malformed_requests_fail_and_good_ones_still_work() {
    common::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let content = known_content(64 * 1024);
    let disk = image(dir.path(), "abuse.img", &content);
    let (code, stdout, stderr) = boot(&["--disk", &disk, "--cmdline", "mvm.test=blk-abuse:0", "--timeout-s", "60"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Each malformed request fails with IOERR where the device could write a
    // status, or marks the device broken; the guest then resets it.
    for (case, outcome) in [
        ("no-status", "failed status=0xff"),
        ("short-header", "failed status=0x1"),
        ("data-outside-ram", "failed status=0x1"),
        ("writable-header", "failed status=0x1"),
        ("huge-length", ""),
        ("next-past-table", "device-broken"),
        ("looping-chain", "device-broken"),
    ] {
        assert!(stdout.contains(&format!("blk abuse {case}: {outcome}")), "{case}: {stdout}");
    }
    assert!(stdout.contains("blk abuse past-end: Err(IoError)"), "{stdout}");
    assert!(stdout.contains("blk abuse: good reads ok"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing was written outside what the guest asked for: no write happened at all.
    assert_eq!(std::fs::read(&disk).unwrap(), content);
}

#[test]
fn bad_disk_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let odd = image(dir.path(), "odd.img", &[0u8; 1000]);
    for (args, expected) in
        [(vec!["--disk", "/nonexistent/disk.img"], "/nonexistent/disk.img"), (vec!["--disk", odd.as_str()], "512")]
    {
        let (code, _, stderr) = boot(&args);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = boot(&["--disk", "x.img,fast"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown option `fast`"), "{stderr}");
    let _ = guest_elf();
}

/// A network namespace of the test's own, deleted (with every interface in
/// it) when dropped, also when the test fails. Its name has the process id
/// and a tag per test, so that tests running at once never share one.
struct Netns {
    name: String,
}

/// The host side of the guest's link and the guest, as the selftests use them.
const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const GUEST_MAC: &str = "52:54:00:12:34:56";
const GUEST_CMDLINE: &str = "mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1";

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("mvm{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("cannot run ip (iproute2)");
        assert!(out.status.success(), "ip netns add {name}: {}", common::text(&out.stderr));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAMESPACE args`, which must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let out = self.try_ip(args);
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.name, common::text(&out.stderr));
        common::text(&out.stdout)
    }

    fn try_ip(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["-n", &self.name]).args(args).output().expect("cannot run ip (iproute2)")
    }

    /// A persistent TAP `name` with the host side at HOST_IP/24, up.
    fn add_tap(&self, name: &str) {
        self.ip(&["tuntap", "add", name, "mode", "tap"]);
        self.configure(name);
    }

    fn configure(&self, tap: &str) {
        self.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", tap]);
        self.ip(&["link", "set", tap, "up"]);
    }

    fn link_exists(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", name]).status.success()
    }

    /// Whether the kernel sees a carrier on `tap`: a process has it open.
    fn carrier(&self, tap: &str) -> bool {
        self.ip(&["-o", "link", "show", tap]).contains("LOWER_UP")
    }

    fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `mvm boot` in the namespace with the guest's NIC on `tap`.
    fn mvm_boot(&self, tap: &str, args: &[&str], test: &str) -> Command {
        let mut cmd = self.exec(env!("CARGO_BIN_EXE_mvm"));
        cmd.env_remove("RUST_LOG")
            .arg("boot")
            .args(["--net", &format!("tap={tap},mac={GUEST_MAC}"), "--timeout-s", "60"])
            .args(args)
            .args(["--cmdline", &format!("{GUEST_CMDLINE} mvm.test={test}")]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A TAP name no other test process uses (at most 15 bytes).
fn tap_name() -> String {
    format!("mvt{}", std::process::id())
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_for(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms for at most `limit`, failing when `child` ends first.
fn poll_while_running(child: &mut Child, what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "not {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Echoes one connection's bytes, stopping once the guest's whole message
/// (byte i is i % 251, 100,000 bytes) is in, then says who sent what.
const ECHO_SERVER: &str = r#"
import socket
expected = bytes(i % 251 for i in range(100000))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.0.0.1", 7777))
srv.listen(1)
srv.settimeout(60)
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(60)
received = bytearray()
while len(received) < len(expected):
    data = conn.recv(65536)
    if not data:
        break
    received += data
    conn.sendall(data)
print(f"from {peer[0]} received {len(received)} bytes, as sent: {bytes(received) == expected}", flush=True)
"#;

/// The guest's TCP echo test (net-echo) against a server in `ns`, through
/// `tap`: both ends must see every byte, and the guest's address must be
/// the one its command line gave it.
fn guest_echoes_through(ns: &Netns, tap: &str, args: &[&str]) {
    let mut server =
        ns.exec("python3").args(["-c", ECHO_SERVER]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut server_out = BufReader::new(server.stdout.take().unwrap());
    let mut ready = String::new();
    server_out.read_line(&mut ready).unwrap();
    assert_eq!(ready, "listening\n", "the echo server did not start");
    let out = ns.mvm_boot(tap, args, &format!("net-echo:{HOST_IP}:7777")).output().unwrap();
    let (stdout, stderr) = (common::text(&out.stdout), common::text(&out.stderr));
    let server_status = wait_for(&mut server, "the echo server", Duration::from_secs(30));
    let mut report = String::new();
    server_out.read_to_string(&mut report).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let net_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("net ")).collect();
    assert_eq!(net_lines, ["net echo ok bytes=100000"], "{stdout}");
    assert!(!stderr.contains("virtio"), "the devices complained: {stderr}");
    assert!(server_status.success(), "echo server: {server_status}");
    assert_eq!(report, format!("from {GUEST_IP} received 100000 bytes, as sent: True\n"));
}

/// Pings the guest (net-serve) three times from `ns` and checks the ARP
/// entry it left; `while_serving` runs first, once the guest's stack is up.
fn guest_answers_ping_through(ns: &Netns, tap: &str, while_serving: impl FnOnce()) {
    let mut guest =
        ns.mvm_boot(tap, &[], "net-serve:5000").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut guest_out = BufReader::new(guest.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("net serving") {
        line.clear();
        if guest_out.read_line(&mut line).unwrap() == 0 {
            let status = wait_for(&mut guest, "mvm", Duration::from_secs(10));
            panic!("the guest ended ({status}) before serving");
        }
    }
    assert_eq!(line, "net serving for 5000 ms\n");
    while_serving();
    let ping = ns.exec("ping").args(["-n", "-c", "3", "-i", "0.2", "-W", "5", GUEST_IP]).output().unwrap();
    let neighbour = ns.ip(&["neigh", "show", GUEST_IP]);
    let status = wait_for(&mut guest, "the serving guest", Duration::from_secs(60));
    let mut rest = String::new();
    guest_out.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    guest.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let ping = common::text(&ping.stdout);
    let replies = ping.lines().filter(|l| l.starts_with(&format!("64 bytes from {GUEST_IP}: icmp_seq="))).count();
    assert_eq!(replies, 3, "{ping}");
    // Duplicates or errors would show here ("3 received, +3 duplicates").
    assert!(ping.contains("\n3 packets transmitted, 3 received, 0% packet loss, "), "{ping}");
    assert!(neighbour.starts_with(&format!("{GUEST_IP} dev {tap} lladdr {GUEST_MAC} ")), "ARP entry: {neighbour}");
    assert_eq!(status.code(), Some(0), "{rest}{stderr}");
    assert!(!rest.contains("panic") && !stderr.contains("virtio"), "{rest}{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root for a network namespace and a TAP: MVM_SKIP_ROOT=1")]
fn guest_talks_tcp_and_answers_ping_through_a_tap() {
    common::require_kvm();
    common::require_root();
    let ns = Netns::create("tcp");
    let tap = tap_name();
    ns.add_tap(&tap);
    guest_echoes_through(&ns, &tap, &[]);
    guest_answers_ping_through(&ns, &tap, || {});
    assert!(ns.link_exists(&tap), "the TAP the test made outlives the VMs");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root for a network namespace and a TAP: MVM_SKIP_ROOT=1")]
fn net_works_with_ioeventfd_notifications() {
    common::require_kvm();
    common::require_root();
    let ns = Netns::create("ioev");
    let tap = tap_name();
    ns.add_tap(&tap);
    guest_echoes_through(&ns, &tap, &["--virtio-notify", "ioeventfd"]);
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root to create a TAP: MVM_SKIP_ROOT=1")]
fn mvm_creates_a_missing_tap_and_it_is_gone_when_the_vm_ends() {
    common::require_kvm();
    common::require_root();
    let ns = Netns::create("mk");
    let tap = tap_name();
    assert!(!ns.link_exists(&tap));
    // The host side of a TAP mvm made is the user's to configure while it runs.
    guest_answers_ping_through(&ns, &tap, || {
        assert!(ns.link_exists(&tap), "mvm did not create {tap}");
        ns.configure(&tap);
    });
    assert!(!ns.link_exists(&tap), "the TAP mvm made outlived its VM: {}", ns.ip(&["link", "show", &tap]));
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root for a network namespace and a TAP: MVM_SKIP_ROOT=1")]
fn a_jobs_network_section_attaches_its_tap() {
    common::require_kvm();
    common::require_root();
    let ns = Netns::create("job");
    let tap = tap_name();
    ns.add_tap(&tap);
    assert!(!ns.carrier(&tap), "no VM has the new TAP open yet");
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sleeper/sleeper.wat");
    std::fs::copy(example, dir.path().join("sleeper.wat")).unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"netjob\"\n[guest]\nmemory_mib = 16\ntimeout_s = 30\n[run]\nwasm = \"sleeper.wat\"\n\
             [network]\nenabled = true\ntap = \"{tap}\"\naddress = \"{GUEST_IP}/24\"\ngateway = \"{HOST_IP}\"\n"
        ),
    )
    .unwrap();
    let mut mvm = ns
        .exec(env!("CARGO_BIN_EXE_mvm"))
        .env_remove("RUST_LOG")
        .arg("up")
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The job sleeps 2 s: its VM holds the TAP meanwhile.
    poll_while_running(&mut mvm, "the job's VM attached the TAP", Duration::from_secs(20), || ns.carrier(&tap));
    let status = wait_for(&mut mvm, "the job", Duration::from_secs(60));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    mvm.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    mvm.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "slept 2 s\n");
    assert!(stderr.contains("mvm: job netjob ended: exit 0"), "{stderr}");
    assert!(!ns.carrier(&tap), "the VM let go of the TAP when the job ended");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn missing_tap_without_privilege_says_how_to_fix_it() {
    common::require_kvm();
    let missing = format!("mvmno{}", std::process::id());
    if !common::is_root() {
        let (code, _, stderr) = boot(&["--net", &format!("tap={missing}")]);
        assert_eq!(code, 125);
        assert!(stderr.contains(&missing), "{stderr}");
        return;
    }
    // As root, drop every capability: mvm may then neither create nor attach.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--", env!("CARGO_BIN_EXE_mvm"), "boot", "--net"])
        .arg(format!("tap={missing}"))
        .output()
        .expect("cannot run setpriv (util-linux): scripts/setup installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("ip tuntap add"), "{stderr}");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn disks_work_with_ioeventfd_notifications() {
    common::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let content = known_content(1024 * 1024);
    let disk = image(dir.path(), "data.img", &content);
    let second = image(dir.path(), "second.img", &vec![0u8; 256 * 1024]);
    let notify = ["--virtio-notify", "ioeventfd"];
    let (code, stdout, stderr) =
        boot(&[&notify[..], &["--disk", &format!("{disk},ro"), "--cmdline", "mvm.test=blk-sum:0"]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("fnv1a64={:#018x}", fnv1a(&content))), "{stdout}");
    let (code, stdout, stderr) =
        boot(&[&notify[..], &["--disk", &disk, "--disk", &second, "--cmdline", "mvm.test=blk-write:1"]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let written = std::fs::read(&second).unwrap();
    assert!(written.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)), "the pattern reached the image");
}
