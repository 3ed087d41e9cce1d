//! The host's KVM: opening it with errors that say how to fix them, and what
//! it can do.

use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

use crate::pvm;

pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}: no such device: KVM is not available on this host (load the kvm_intel or kvm_amd module, or enable nested virtualization for this machine)")]
    NoKvm(PathBuf),
    #[error("{0}: permission denied: add your user to the kvm group (`sudo usermod -aG kvm $USER`, then log in again) or run as root")]
    PermissionDenied(PathBuf),
    #[error("{path}: cannot open")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a KVM device (KVM_GET_API_VERSION failed)")]
    NotKvm(PathBuf),
    #[error("{path}: KVM API version {found}, mvm needs {expected}")]
    ApiVersion { path: PathBuf, found: i32, expected: i32 },
    #[error("cannot create a probe VM to read the host's capabilities")]
    Probe(#[source] kvm_ioctls::Error),
}

/// Which kind of KVM runs the guest: it decides how the guest gets native
/// speed (see pvm.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// VMX or SVM: the guest runs natively at CPL 0.
    Hardware,
    /// kvm-pvm, software virtualization on shadow page tables.
    Pvm,
}

impl HostKind {
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Hardware => "hardware (VMX/SVM)",
            HostKind::Pvm => "pvm",
        }
    }
}

pub struct Host {
    pub kvm: Kvm,
    pub path: PathBuf,
}

impl Host {
    pub fn open(path: &Path) -> Result<Host, HostError> {
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| HostError::NoKvm(path.into()))?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|err| match err.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => HostError::NoKvm(path.into()),
            libc::EACCES | libc::EPERM => HostError::PermissionDenied(path.into()),
            _ => HostError::Open { path: path.into(), source: err.into() },
        })?;
        let version = kvm.get_api_version();
        if version < 0 {
            return Err(HostError::NotKvm(path.into()));
        }
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HostError::ApiVersion {
                path: path.into(),
                found: version,
                expected: kvm_bindings::KVM_API_VERSION as i32,
            });
        }
        Ok(Host { kvm, path: path.into() })
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Asks a throwaway VM's vCPU which kind of KVM this is. A VM that mvm
    /// boots asks its own first vCPU instead (see `vm.rs`).
    pub fn probe_kind(&self) -> Result<HostKind, HostError> {
        let vm = self.kvm.create_vm().map_err(HostError::Probe)?;
        let vcpu = vm.create_vcpu(0).map_err(HostError::Probe)?;
        Ok(pvm::detect(&vcpu))
    }
}

/// Total RAM of the host, from /proc/meminfo; None where it cannot be read.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:       24578384 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24578384 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn missing_device_says_kvm_is_unavailable() {
        let err = Host::open(Path::new("/nonexistent/kvm")).err().unwrap();
        assert!(matches!(err, HostError::NoKvm(_)), "{err}");
        assert!(err.to_string().contains("KVM is not available"));
    }

    #[test]
    fn a_device_that_is_not_kvm_is_named_as_such() {
        let err = Host::open(Path::new("/dev/null")).err().unwrap();
        assert!(matches!(err, HostError::NotKvm(_)), "{err}");
    }
}
