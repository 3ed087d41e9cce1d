//! TCP/IP for the guest: smoltcp over the virtio-net driver, with the static
//! address from the command line (`mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1`).
//! smoltcp answers ARP and ICMP echo by itself whenever the stack is polled.

use alloc::vec;
use alloc::vec::Vec;
use core::str::FromStr;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use crate::idle::halt_until;
use crate::time::monotonic_ns;
use crate::virtio::net::Net;

/// Extra egress passes per poll: at most the TX queue's size.
const EGRESS_BATCH: usize = 31;

/// The longest the guest halts between polls when smoltcp has no timer due.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// The TCP send buffer of `send_stream`: the most data in flight.
const STREAM_SEND_BUFFER: usize = 256 * 1024;

pub struct Stack {
    device: Net,
    iface: Interface,
    sockets: SocketSet<'static>,
}

fn now() -> Instant {
    Instant::from_micros((monotonic_ns() / 1000) as i64)
}

fn word<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a str> {
    cmdline
        .split(|b| *b == b' ')
        .filter_map(|w| w.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
        .filter_map(|v| core::str::from_utf8(v).ok())
        .next_back()
}

impl Stack {
    pub fn new(mut device: Net, cmdline: &[u8]) -> Stack {
        let address = word(cmdline, "mvm.ip").unwrap_or_else(|| panic!("networking needs mvm.ip=<address>/<prefix>"));
        let cidr = IpCidr::from_str(address).unwrap_or_else(|_| panic!("mvm.ip={address}: not an address/prefix"));
        let config = Config::new(EthernetAddress(device.mac).into());
        let mut iface = Interface::new(config, &mut device, now());
        iface.update_ip_addrs(|addrs| addrs.push(cidr).expect("room for one address"));
        if let Some(gateway) = word(cmdline, "mvm.gw") {
            let gateway = Ipv4Address::from_str(gateway).unwrap_or_else(|_| panic!("mvm.gw={gateway}: not an address"));
            iface.routes_mut().add_default_ipv4_route(gateway).expect("room for a route");
        }
        Stack { device, iface, sockets: SocketSet::new(Vec::new()) }
    }

    /// One pass of the stack. smoltcp sends at most one segment per socket
    /// and egress pass, so egress runs again while it sends, up to a queue's
    /// worth; the frames queued and receive buffers returned are then
    /// announced to the device once (one VM exit), not once per frame.
    fn poll(&mut self) -> PollResult {
        let mut result = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        for _ in 0..EGRESS_BATCH {
            if self.iface.poll_egress(now(), &mut self.device, &mut self.sockets) == PollResult::None {
                break;
            }
            result = PollResult::SocketStateChanged;
        }
        self.device.kick();
        result
    }

    /// Polls the stack, then halts until smoltcp's next timer, a received
    /// frame (the VMM wakes the vCPU) or `IDLE_POLL`.
    fn step(&mut self) {
        self.poll();
        let delay = self.iface.poll_delay(now(), &self.sockets).unwrap_or(IDLE_POLL).min(IDLE_POLL);
        if delay > Duration::ZERO {
            halt_until(monotonic_ns() + delay.total_micros() * 1000);
        }
    }

    /// Keeps the interface up (answering ARP and ping) for `ms` milliseconds.
    pub fn serve(&mut self, ms: u64) {
        crate::console::print(format_args!("net serving for {ms} ms\n"));
        let end = monotonic_ns() + ms * 1_000_000;
        while monotonic_ns() < end {
            self.step();
        }
    }

    /// Connects to `peer`, sends `message`, and returns what comes back
    /// until as many bytes arrived or the peer closed, within `timeout_ms`.
    pub fn echo(&mut self, peer: IpEndpoint, message: &[u8], timeout_ms: u64) -> Result<Vec<u8>, &'static str> {
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
        let handle = self.sockets.add(socket);
        let local_port = 49152 + (monotonic_ns() % 16384) as u16;
        let context = self.iface.context();
        self.sockets.get_mut::<tcp::Socket>(handle).connect(context, peer, local_port).map_err(|_| "cannot connect")?;
        let deadline = monotonic_ns() + timeout_ms * 1_000_000;
        let (mut sent, mut received) = (0, Vec::new());
        while received.len() < message.len() {
            if monotonic_ns() > deadline {
                return Err("timed out");
            }
            self.poll();
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if !socket.is_open() {
                return Err("connection closed");
            }
            if socket.can_send() && sent < message.len() {
                sent += socket.send_slice(&message[sent..]).map_err(|_| "send failed")?;
            }
            if socket.can_recv() {
                socket
                    .recv(|data| {
                        received.extend_from_slice(data);
                        (data.len(), ())
                    })
                    .map_err(|_| "receive failed")?;
                continue;
            }
            self.step();
        }
        self.sockets.get_mut::<tcp::Socket>(handle).close();
        self.step();
        Ok(received)
    }

    /// Connects to `peer`, sends `len` bytes (`chunk` over and over) as fast
    /// as the peer takes them and closes; returns once the peer has
    /// acknowledged the data and the close, or fails after `timeout_ms`.
    pub fn send_stream(
        &mut self,
        peer: IpEndpoint,
        chunk: &[u8],
        len: u64,
        timeout_ms: u64,
    ) -> Result<(), &'static str> {
        if chunk.is_empty() {
            return Err("nothing to send: the chunk is empty");
        }
        let buffers = (tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; STREAM_SEND_BUFFER]));
        let handle = self.sockets.add(tcp::Socket::new(buffers.0, buffers.1));
        let local_port = 49152 + (monotonic_ns() % 16384) as u16;
        let context = self.iface.context();
        self.sockets.get_mut::<tcp::Socket>(handle).connect(context, peer, local_port).map_err(|_| "cannot connect")?;
        let deadline = monotonic_ns() + timeout_ms * 1_000_000;
        let (mut queued, mut closing) = (0, false);
        let result = loop {
            if monotonic_ns() > deadline {
                break Err("timed out");
            }
            // smoltcp sends at most one segment per socket and poll.
            let progress = self.poll();
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::Closed => break Err("connection refused or reset"),
                tcp::State::FinWait2 | tcp::State::TimeWait => break Ok(()),
                _ => {}
            }
            if queued < len && socket.can_send() {
                let at = (queued % chunk.len() as u64) as usize;
                let end = chunk.len().min(at + (len - queued).min(chunk.len() as u64) as usize);
                match socket.send_slice(&chunk[at..end]) {
                    Ok(n) => queued += n as u64,
                    Err(_) => break Err("send failed"),
                }
            } else if queued == len && !closing && socket.may_send() {
                socket.close();
                closing = true;
            } else if progress == PollResult::None {
                self.step();
            }
        };
        self.sockets.remove(handle);
        result
    }
}

/// `a.b.c.d:port`.
pub fn parse_endpoint(text: &str) -> Option<IpEndpoint> {
    let (addr, port) = text.rsplit_once(':')?;
    Some(IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from_str(addr).ok()?), port.parse().ok()?))
}
