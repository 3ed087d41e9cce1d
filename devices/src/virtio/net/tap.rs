//! A TAP interface as a [`NetBackend`]: IFF_TAP | IFF_NO_PI, no vnet header,
//! non-blocking. Each read or write is one Ethernet frame.
//!
//! Attaching to a persistent TAP that the user owns (`sudo ip tuntap add tap0
//! mode tap user $USER`, once) needs no privilege; creating one needs
//! CAP_NET_ADMIN, and a TAP mvm creates disappears with it. Either way the
//! host side (addresses, bridge, `ip link set tap0 up`) is the user's to set.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetBackend;

const TUNTAP: u32 = b'T' as u32;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// IFNAMSIZ, the terminating NUL included.
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, in a
/// union padded to 24 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is invalid: 1 to 15 bytes, no '/', ':', whitespace or NUL")]
    InvalidName(String),
    #[error("cannot open /dev/net/tun: the tun module is not loaded (`sudo modprobe tun`)")]
    NoTunDevice(#[source] io::Error),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error(
        "{name}: permission denied (it does not exist, or belongs to another user): create it first with \
         `sudo ip tuntap add {name} mode tap user $USER`, or give mvm CAP_NET_ADMIN"
    )]
    PermissionDenied { name: String },
    #[error("{name} is busy: another process has it open, or it was created with other flags (multi_queue, vnet_hdr); recreate it with `sudo ip tuntap add {name} mode tap user $USER`")]
    Busy { name: String },
    #[error("{name} exists but is not a TAP interface (a TUN interface, or another kind of link)")]
    NotTap { name: String },
    #[error("cannot attach to TAP interface {name}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it if it does not
    /// exist (which needs CAP_NET_ADMIN).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let valid = !name.is_empty()
            && name.len() < IFNAMSIZ
            && name != "."
            && name != ".."
            && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
        if !valid {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|err| match err.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice(err),
                _ => TapError::OpenTun(err),
            })?;
        let mut req = IfReq { name: [0; IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a
        // live, writable struct laid out as the kernel's `struct ifreq` (40
        // bytes on 64-bit Linux), which TUNSETIFF reads and may update; the
        // return value is checked below.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EINVAL) => TapError::NotTap { name },
                _ => TapError::Attach { name, source: err },
            });
        }
        Ok(Tap { file, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
        assert_eq!(TUNSETIFF(), 0x4004_54ca);
    }

    #[test]
    fn invalid_names_are_refused_before_any_syscall() {
        for name in ["", "a/b", "sixteen-chars-xx", "tap 0", "a:b", "..", "nul\0"] {
            assert!(matches!(Tap::open(name), Err(TapError::InvalidName(_))), "{name:?}");
        }
    }

    #[test]
    fn opening_a_missing_tap_creates_it_or_says_what_to_do() {
        let name = format!("mvmt{}", std::process::id() % 100_000);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Unprivileged: nothing is created, and the error names the TAP.
            match Tap::open(&name) {
                Err(TapError::PermissionDenied { name: n }) => assert_eq!(n, name),
                other => panic!("expected PermissionDenied, got {:?}", other.map(|t| t.name().to_owned())),
            }
        } else {
            // As root: created, in a network namespace of a thread of its own
            // (never among the host's interfaces), and gone once closed.
            std::thread::spawn(move || {
                // SAFETY: unshare has no memory-safety preconditions; it moves
                // only this thread into a new network namespace.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", io::Error::last_os_error());
                let c_name = std::ffi::CString::new(name.clone()).unwrap();
                // SAFETY: `c_name` is a valid NUL-terminated string.
                let index = || unsafe { libc::if_nametoindex(c_name.as_ptr()) };
                assert_eq!(index(), 0);
                let tap = Tap::open(&name).unwrap();
                assert_eq!(tap.name(), name);
                assert_ne!(index(), 0, "the TAP exists while open");
                drop(tap);
                assert_eq!(index(), 0, "a TAP mvm created is gone once closed");
            })
            .join()
            .unwrap();
        }
        let msg = TapError::PermissionDenied { name: "tap0".into() }.to_string();
        assert!(msg.contains("sudo ip tuntap add tap0 mode tap user $USER"), "{msg}");
        assert!(msg.contains("CAP_NET_ADMIN"));
    }
}
