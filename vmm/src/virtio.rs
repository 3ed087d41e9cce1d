//! The VM's virtio devices: what the user asks for (`--disk`, `--net`), where
//! each sits (one 4 KiB MMIO window and one interrupt line each, from
//! [`MMIO_BASE`] and [`FIRST_IRQ`] up), and how the guest learns of them:
//! `virtio_mmio.device=4K@<base>:<irq>` words on its command line, as Linux
//! expects.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, VmFd};
use mvm_devices::virtio::{
    net, BlockError, MmioTransport, Tap, TapError, VirtioBlock, VirtioConsole, VirtioDevice, VirtioError,
    VirtioInterrupt, VirtioNet, MMIO_LEN, QUEUE_NOTIFY,
};
use mvm_devices::{Bus, BusDevice, BusError};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::vcpu::Wakeup;

pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_WINDOW: u64 = 0x1000;
/// Legacy lines 5 and up: 4 is COM1's.
pub const FIRST_IRQ: u32 = 5;
/// As many devices as the IOAPIC has lines left for a Linux guest.
pub const MAX_DEVICES: usize = 18;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// The ID the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP device to attach to (created if missing and mvm may).
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

/// Where a virtio console's output goes: a writer shared with whoever set
/// up the VM (a job's stdout, a log).
#[derive(Clone)]
pub struct ConsoleSink(Arc<Mutex<dyn Write + Send>>);

/// One virtio console: where its output goes and where its input comes
/// from. Without an input, the guest reads an ended stream.
pub struct ConsoleConfig {
    pub output: ConsoleSink,
    /// Read only while the guest has receive buffers posted, straight into
    /// them (see mvm_devices::virtio::console): a pipe, a terminal, a file.
    pub input: Option<File>,
}

impl ConsoleConfig {
    pub fn output(output: ConsoleSink) -> ConsoleConfig {
        ConsoleConfig { output, input: None }
    }
}

impl ConsoleSink {
    pub fn new(out: impl Write + Send + 'static) -> ConsoleSink {
        ConsoleSink(Arc::new(Mutex::new(out)))
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("empty path")]
    EmptyPath,
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("serial `{0}` is longer than 20 bytes")]
    SerialTooLong(String),
    #[error("missing tap=NAME")]
    MissingTap,
    #[error("TAP name `{0}` must be 1 to 15 bytes of letters, digits, '-', '_' or '.'")]
    BadTapName(String),
    #[error("MAC address `{0}` must be six hex bytes like 52:54:00:12:34:56, not multicast")]
    BadMac(String),
}

/// `PATH[,ro][,serial=ID]`
impl FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or(ConfigError::EmptyPath)?;
        let mut disk = DiskConfig { path: PathBuf::from(path), read_only: false, serial: None };
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => disk.read_only = true,
                None if option == "rw" => disk.read_only = false,
                Some(("serial", id)) if id.len() <= 20 => disk.serial = Some(id.to_string()),
                Some(("serial", id)) => return Err(ConfigError::SerialTooLong(id.to_string())),
                _ => return Err(ConfigError::UnknownOption(option.to_string())),
            }
        }
        Ok(disk)
    }
}

/// `tap=NAME[,mac=52:54:00:12:34:56]`
impl FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac) = (None, None);
        for option in text.split(',') {
            match option.split_once('=') {
                Some(("tap", name)) => tap = Some(tap_name(name)?),
                Some(("mac", text)) => mac = Some(parse_mac(text)?),
                _ => return Err(ConfigError::UnknownOption(option.to_string())),
            }
        }
        Ok(NetConfig { tap: tap.ok_or(ConfigError::MissingTap)?, mac })
    }
}

fn tap_name(name: &str) -> Result<String, ConfigError> {
    let valid = (1..16).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    valid.then(|| name.to_string()).ok_or_else(|| ConfigError::BadTapName(name.to_string()))
}

fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    net::parse_mac(text).map_err(|_| ConfigError::BadMac(text.to_string()))
}

/// How a guest's queue notification reaches its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyPath {
    /// The MMIO write exits to the VMM, and the vCPU thread processes the
    /// queue before resuming the guest: one exit, and the answer is there
    /// when the guest looks. The default.
    #[default]
    Exit,
    /// KVM completes the write in the kernel and signals an ioeventfd; a
    /// notifier thread per device processes the queue while the guest runs
    /// on (and polls, or halts until the device wakes it).
    Ioeventfd,
}

impl FromStr for NotifyPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "exit" => Ok(NotifyPath::Exit),
            "ioeventfd" => Ok(NotifyPath::Ioeventfd),
            other => Err(format!("`{other}`: expected exit or ioeventfd")),
        }
    }
}

/// The notifier threads of [`NotifyPath::Ioeventfd`]; dropping this stops
/// and joins them.
#[derive(Default)]
pub struct Notifiers {
    stop: Option<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Notifiers {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.write(1);
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a virtio notifier thread panicked");
            }
        }
    }
}

/// Waits on a device's queue ioeventfds (one per queue, matched on the
/// queue index the guest writes) and hands each notification to the
/// transport, as the MMIO exit would have.
fn notifier(transport: Arc<Mutex<MmioTransport>>, queues: Vec<EventFd>, stop: EventFd) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(&stop)
        .chain(&queues)
        .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    loop {
        // SAFETY: `fds` is a valid array of pollfd of the given length,
        // whose descriptors outlive the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("virtio notifier: poll failed: {}", std::io::Error::last_os_error());
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (queue, (pollfd, fd)) in fds[1..].iter_mut().zip(&queues).enumerate() {
            if std::mem::take(&mut pollfd.revents) != 0 && fd.read().is_ok() {
                let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
                transport.write(QUEUE_NOTIFY, &(queue as u32).to_le_bytes());
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("too many virtio devices: at most {MAX_DEVICES}")]
    TooMany,
    #[error("disk {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: BlockError,
    },
    #[error("network device on TAP {tap}")]
    Net {
        tap: String,
        #[source]
        source: TapError,
    },
    #[error("cannot share a console's input with its device")]
    ConsoleInput(#[source] std::io::Error),
    #[error("cannot set up a virtio transport")]
    Transport(#[source] VirtioError),
    #[error("cannot place a virtio device on the MMIO bus")]
    Bus(#[source] BusError),
    #[error("cannot wire a virtio interrupt to the irqchip")]
    Irq(#[source] std::io::Error),
    #[error("cannot set up an ioeventfd for virtio queue notifications")]
    Ioeventfd(#[source] std::io::Error),
}

/// How a device tells the guest it used buffers: it wakes the boot vCPU if
/// it is halted (the tiny guest polls and halts), and raises the device's
/// interrupt line through an irqfd when the VM has an irqchip (Linux).
struct GuestNotifier {
    wakeup: Arc<Wakeup>,
    irq: Option<EventFd>,
}

impl VirtioInterrupt for GuestNotifier {
    fn notify(&self) {
        self.wakeup.notify();
        if let Some(irq) = &self.irq {
            if let Err(err) = irq.write(1) {
                tracing::warn!("cannot raise a virtio interrupt: {err}");
            }
        }
    }
}

/// The virtio devices a VM is to have, in the order the guest sees them.
pub struct Requested<'a> {
    pub disks: &'a [DiskConfig],
    pub nets: &'a [NetConfig],
    pub consoles: &'a [ConsoleConfig],
    pub notify: NotifyPath,
}

/// Creates the devices asked for, disks then network devices then consoles,
/// places them on the MMIO bus, and returns the command-line words that
/// announce them, with the notifier threads of `notify`'s path.
pub fn attach(
    Requested { disks, nets, consoles, notify }: Requested<'_>,
    mem: &GuestMemoryMmap,
    vm: &VmFd,
    irqchip: bool,
    wakeup: &Arc<Wakeup>,
    bus: &mut Bus,
) -> Result<(Vec<String>, Notifiers), AttachError> {
    if disks.len() + nets.len() + consoles.len() > MAX_DEVICES {
        return Err(AttachError::TooMany);
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in disks {
        let block = VirtioBlock::new(&disk.path, disk.read_only, disk.serial.clone())
            .map_err(|source| AttachError::Disk { path: disk.path.clone(), source })?;
        devices.push(Box::new(block));
    }
    for config in nets {
        let tap = Tap::open(&config.tap).map_err(|source| AttachError::Net { tap: config.tap.clone(), source })?;
        devices.push(Box::new(VirtioNet::new(tap, config.mac.unwrap_or_else(net::random_mac))));
    }
    for console in consoles {
        let output = Box::new(console.output.clone());
        let device = match &console.input {
            None => VirtioConsole::new(output),
            // A second descriptor of the same open file: the offset is shared.
            Some(input) => VirtioConsole::with_input(output, input.try_clone().map_err(AttachError::ConsoleInput)?),
        };
        devices.push(Box::new(device));
    }
    let count = devices.len();
    let mut notifiers = Notifiers::default();
    for (index, device) in devices.into_iter().enumerate() {
        let (base, line) = slot(index);
        let irq = if irqchip {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(AttachError::Irq)?;
            vm.register_irqfd(&fd, line).map_err(|e| AttachError::Irq(e.into()))?;
            Some(fd)
        } else {
            None
        };
        let queue_count = device.queue_max_sizes().len();
        let interrupt = Arc::new(GuestNotifier { wakeup: wakeup.clone(), irq });
        let transport = MmioTransport::new(device, mem.clone(), interrupt).map_err(AttachError::Transport)?;
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(base, MMIO_LEN, transport.clone()).map_err(AttachError::Bus)?;
        if notify == NotifyPath::Ioeventfd {
            let io_err = |e: kvm_ioctls::Error| AttachError::Ioeventfd(e.into());
            let mut queues = Vec::with_capacity(queue_count);
            for queue in 0..queue_count as u32 {
                let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(AttachError::Ioeventfd)?;
                vm.register_ioevent(&fd, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), queue).map_err(io_err)?;
                queues.push(fd);
            }
            let stop = match &notifiers.stop {
                Some(stop) => stop.try_clone(),
                None => EventFd::new(libc::EFD_NONBLOCK),
            }
            .map_err(AttachError::Ioeventfd)?;
            if notifiers.stop.is_none() {
                notifiers.stop = Some(stop.try_clone().map_err(AttachError::Ioeventfd)?);
            }
            let thread = std::thread::Builder::new()
                .name(format!("virtio{index}-notify"))
                .spawn(move || notifier(transport, queues, stop))
                .map_err(AttachError::Ioeventfd)?;
            notifiers.threads.push(thread);
        }
    }
    Ok((cmdline_words(count), notifiers))
}

/// Where device `index` sits: (MMIO base, interrupt line).
pub fn slot(index: usize) -> (u64, u32) {
    (MMIO_BASE + index as u64 * MMIO_WINDOW, FIRST_IRQ + index as u32)
}

/// The command-line words that announce `count` devices.
pub fn cmdline_words(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let (base, irq) = slot(i);
            format!("virtio_mmio.device=4K@{base:#x}:{irq}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        let disk: DiskConfig = "img.raw".parse().unwrap();
        assert_eq!(disk, DiskConfig { path: "img.raw".into(), read_only: false, serial: None });
        let disk: DiskConfig = "/a/b.img,ro,serial=data-1".parse().unwrap();
        assert!(disk.read_only);
        assert_eq!(disk.serial.as_deref(), Some("data-1"));
        assert_eq!("".parse::<DiskConfig>(), Err(ConfigError::EmptyPath));
        assert_eq!("x,rox".parse::<DiskConfig>(), Err(ConfigError::UnknownOption("rox".into())));
        assert!(matches!("x,serial=123456789012345678901".parse::<DiskConfig>(), Err(ConfigError::SerialTooLong(_))));
    }

    #[test]
    fn net_options() {
        let net: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(net, NetConfig { tap: "tap0".into(), mac: None });
        let net: NetConfig = "tap=mvm-1,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(net.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!("mac=52:54:00:12:34:56".parse::<NetConfig>(), Err(ConfigError::MissingTap));
        assert!(matches!("tap=a/b".parse::<NetConfig>(), Err(ConfigError::BadTapName(_))));
        assert!(matches!("tap=0123456789abcdef".parse::<NetConfig>(), Err(ConfigError::BadTapName(_))));
        for bad in
            ["01:00:00:00:00:00", "52:54:00:12:34", "52:54:00:12:34:5g", "5:54:00:12:34:56:", "+1:54:00:12:34:56"]
        {
            assert!(matches!(parse_mac(bad), Err(ConfigError::BadMac(_))), "{bad}");
        }
    }

    #[test]
    fn slots_and_announcements() {
        assert_eq!(slot(0), (0xd000_0000, 5));
        assert_eq!(slot(2), (0xd000_2000, 7));
        assert_eq!(cmdline_words(2), vec!["virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6"]);
        let (last_base, _) = slot(MAX_DEVICES - 1);
        assert!(last_base + MMIO_WINDOW <= crate::layout::MMIO_GAP_END);
    }
}
