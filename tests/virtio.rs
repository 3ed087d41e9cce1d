//! virtio-blk and virtio-net end to end: the guest's drivers against mvm's
//! devices, with real image files and a real TAP in a network namespace.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

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

/// A network namespace with a TAP inside, removed when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Netns {
        let ok = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        assert!(ok(&["netns", "add", name]), "ip netns add {name} failed");
        let ns = Netns { name: name.to_string() };
        let setup = [
            vec!["tuntap", "add", "mvmtap0", "mode", "tap"],
            vec!["addr", "add", "10.0.0.1/24", "dev", "mvmtap0"],
            vec!["link", "set", "mvmtap0", "up"],
            vec!["link", "set", "lo", "up"],
        ];
        for step in setup {
            let mut args = vec!["netns", "exec", name, "ip"];
            args.extend(step);
            assert!(ok(&args), "ip {args:?} failed");
        }
        ns
    }

    fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

const ECHO_SERVER: &str = r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.0.0.1", 7777))
srv.listen(1)
srv.settimeout(60)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(60)
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
"#;

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
#[cfg_attr(mvm_skip_root, ignore = "needs root for a network namespace and a TAP: MVM_SKIP_ROOT=1")]
fn guest_talks_tcp_and_answers_ping_through_a_tap() {
    common::require_kvm();
    common::require_root();
    let ns = Netns::create(&format!("mvmtest{}", std::process::id()));
    let mvm = env!("CARGO_BIN_EXE_mvm");
    let net_args = ["--net", "tap=mvmtap0,mac=52:54:00:12:34:56"];
    let cmdline = "mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1";

    // TCP echo: the guest connects out to a server in the namespace.
    let mut server = ns.exec("python3").args(["-c", ECHO_SERVER]).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "listening");
    let out = ns
        .exec(mvm)
        .arg("boot")
        .args(net_args)
        .args(["--timeout-s", "60", "--cmdline", &format!("{cmdline} mvm.test=net-echo:10.0.0.1:7777")])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("net echo ok bytes=100000"), "{stdout}");

    // ARP and ICMP: the host pings the guest while it serves.
    let mut guest = ns
        .exec(mvm)
        .arg("boot")
        .args(net_args)
        .args(["--timeout-s", "60", "--cmdline", &format!("{cmdline} mvm.test=net-serve:8000")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Ping once the guest's stack is up, not while it boots.
    let mut guest_out = std::io::BufReader::new(guest.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("net serving") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut guest_out, &mut line).unwrap() > 0, "guest ended before serving");
    }
    let ping = ns.exec("ping").args(["-c", "3", "-i", "0.2", "-W", "5", "10.0.0.2"]).output().unwrap();
    let neighbours = ns.exec("ip").args(["neigh", "show", "10.0.0.2"]).output().unwrap();
    let status = guest.wait().unwrap();
    assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stdout));
    assert!(String::from_utf8_lossy(&ping.stdout).contains("3 received"), "{}", String::from_utf8_lossy(&ping.stdout));
    assert!(String::from_utf8_lossy(&neighbours.stdout).contains("52:54:00:12:34:56"), "ARP entry");
    assert!(status.success());
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn missing_tap_without_privilege_says_how_to_fix_it() {
    common::require_kvm();
    if !common::is_root() {
        let (code, _, stderr) = boot(&["--net", "tap=mvmnotap0"]);
        assert_eq!(code, 125);
        assert!(stderr.contains("mvmnotap0"), "{stderr}");
        return;
    }
    // As root, drop every capability: mvm may then neither create nor attach.
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            env!("CARGO_BIN_EXE_mvm"),
            "boot",
            "--net",
            "tap=mvmnotap0",
        ])
        .output()
        .expect("cannot run setpriv (util-linux): scripts/setup installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("mvmnotap0"), "{stderr}");
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
