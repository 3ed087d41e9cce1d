use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{interrupt, memory, CountingInterrupt, Driver, MEM_SIZE};
use crate::virtio::INT_USED_BUFFER;

/// A socketpair end as the backend: datagrams keep frame boundaries, as a TAP does.
struct Sock(UnixDatagram);

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Sock {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
}

const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x1000;
const BUFS: u64 = 0x1_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Bench {
    mem: GuestMemoryMmap,
    dev: VirtioNet,
    /// The host's end of the link.
    peer: UnixDatagram,
    vmm: Arc<CountingInterrupt>,
    irq: Arc<Interrupt>,
}

fn bench() -> Bench {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut dev = VirtioNet::with_backend(Arc::new(Sock(ours)), MAC);
    let mem = memory();
    let (vmm, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    dev.activate(mem.clone(), dev.features(), vec![rx, tx], irq.clone()).unwrap();
    Bench { mem, dev, peer, vmm, irq }
}

/// Waits (10 s at most) until `cond`; fails at once if the device stopped
/// meanwhile (its queues broken or its RX thread ended), since nothing will
/// come after that.
fn wait_until(dev: &VirtioNet, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Looked at before `cond`: a device that got there and then stopped is fine.
        let active = dev.active.as_ref().expect("the device is active");
        let broken = active.interrupt.needs_reset();
        let ended = active.rx_thread.as_ref().is_none_or(|t| t.is_finished());
        if cond() {
            return;
        }
        assert!(!broken, "the device asked for a reset while waiting until {what}");
        assert!(!ended, "the RX thread ended while waiting until {what}");
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

fn peer_recv(peer: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    match peer.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn mac_parsing_and_random_macs() {
    assert_eq!(parse_mac("52:54:00:12:34:56").unwrap(), MAC);
    assert_eq!(parse_mac("52-54-00-AB-cd-ef").unwrap(), [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    for bad in
        ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "5:54:00:12:34:56", "zz:54:00:12:34:56", "+1:54:00:12:34:56"]
    {
        assert!(matches!(parse_mac(bad), Err(NetError::InvalidMac(_))), "{bad}");
    }
    assert!(matches!(parse_mac("01:00:5e:00:00:01"), Err(NetError::MulticastMac(_))));
    for _ in 0..64 {
        let mac = random_mac();
        assert_eq!(mac[0] & 3, 2, "locally administered unicast: {mac:02x?}");
    }
    assert_ne!(random_mac(), random_mac());
}

#[test]
fn config_and_features() {
    let b = bench();
    let mut mac = [0u8; 8];
    b.dev.read_config(0, &mut mac);
    assert_eq!(mac[..6], MAC);
    assert_eq!(mac[6..], [0, 0]);
    assert_ne!(b.dev.features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert_ne!(b.dev.features() & VIRTIO_F_VERSION_1, 0);
    assert_eq!(b.dev.queue_max_sizes(), &[256, 256]);
    assert_eq!(b.dev.device_type(), 1);
    assert_eq!(b.dev.mac(), MAC);
}

#[test]
fn tx_frame_sizes_at_the_limits() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let big = frame(MAX_FRAME_LEN, 8);
    b.mem.write_slice(&big, GuestAddress(BUFS + 12)).unwrap();
    tx.add(&[(BUFS, 12 + MAX_FRAME_LEN as u32, false)]);
    tx.add(&[(BUFS, 13 + MAX_FRAME_LEN as u32, false)]);
    // A header and no frame: the backend decides (a TAP refuses it).
    tx.add(&[(BUFS, 12, false)]);
    b.dev.queue_notify(TX_QUEUE);
    assert_eq!(peer_recv(&b.peer).unwrap(), big, "the largest frame goes whole");
    assert_eq!(peer_recv(&b.peer).unwrap(), b"", "then the empty one; the one byte too big is dropped");
    assert_eq!(peer_recv(&b.peer), None);
    assert_eq!(tx.used_idx(), 3);
    assert_eq!(b.dev.metrics().errors.load(Ordering::Relaxed), 1);
}

#[test]
fn tx_frames_the_backend_cannot_take_are_dropped() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.mem.write_slice(&frame(1500, 1), GuestAddress(BUFS + 12)).unwrap();
    // The peer reads nothing: its socket fills up and sends would block.
    for _ in 0..10 {
        for _ in 0..16 {
            tx.add(&[(BUFS, 1512, false)]);
        }
        b.dev.queue_notify(TX_QUEUE);
    }
    let m = b.dev.metrics();
    let (sent, dropped) = (m.tx_frames.load(Ordering::Relaxed), m.tx_dropped.load(Ordering::Relaxed));
    assert_eq!(sent + dropped, 160);
    assert!(dropped > 0, "the peer's socket never filled ({sent} sent)");
    assert_eq!(m.errors.load(Ordering::Relaxed), 0, "a full backend is not an error");
    // A backend that fails outright is one (emptied first, so that closing
    // it does not also fail the RX side).
    while peer_recv(&b.peer).is_some() {}
    drop(b.peer);
    tx.add(&[(BUFS, 1512, false)]);
    b.dev.queue_notify(TX_QUEUE);
    assert_eq!(m.tx_dropped.load(Ordering::Relaxed), dropped + 1);
    assert_eq!(m.errors.load(Ordering::Relaxed), 1);
    assert_eq!(tx.used_idx(), 161);
}

#[test]
fn tx_frame_reaches_the_backend() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let f = frame(60, 1);
    b.mem.write_slice(&[0xee; NET_HDR_LEN], GuestAddress(BUFS)).unwrap();
    b.mem.write_slice(&f[..20], GuestAddress(BUFS + 0x100)).unwrap();
    b.mem.write_slice(&f[20..], GuestAddress(BUFS + 0x200)).unwrap();
    let head = tx.add(&[(BUFS, 12, false), (BUFS + 0x100, 20, false), (BUFS + 0x200, 40, false)]);
    // The header may share a buffer with the frame.
    b.mem.write_slice(&f, GuestAddress(BUFS + 0x30c)).unwrap();
    tx.add(&[(BUFS + 0x300, 8, false), (BUFS + 0x308, 4 + 60, false)]);
    b.dev.queue_notify(TX_QUEUE);
    assert_eq!(peer_recv(&b.peer).unwrap(), f);
    assert_eq!(peer_recv(&b.peer).unwrap(), f);
    assert_eq!(peer_recv(&b.peer), None);
    assert_eq!(tx.used_all(), vec![(u32::from(head), 0), (3, 0)]);
    assert_eq!(b.vmm.count(), 1);
    let m = b.dev.metrics();
    assert_eq!(m.tx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(m.tx_bytes.load(Ordering::Relaxed), 120);
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    tx.add(&[(BUFS, 8, false)]);
    tx.add(&[(BUFS, 12, false), (BUFS + 0x100, 60, true)]);
    tx.add(&[(BUFS, 12, false), (MEM_SIZE - 10, 60, false)]);
    tx.add(&[(BUFS, 12, false), (BUFS + 0x100, 70_000, false)]);
    b.dev.queue_notify(TX_QUEUE);
    assert_eq!(peer_recv(&b.peer), None);
    assert_eq!(tx.used_idx(), 4);
    assert_eq!(b.dev.metrics().errors.load(Ordering::Relaxed), 4);
    assert!(!b.irq.needs_reset());
}

#[test]
fn looping_tx_chain_breaks_the_queue() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let next = VRING_DESC_F_NEXT as u16;
    tx.write_desc(0, BUFS, 12, next, 1);
    tx.write_desc(1, BUFS + 0x100, 60, next, 0);
    tx.publish(0);
    b.dev.queue_notify(TX_QUEUE);
    assert!(b.irq.needs_reset());
    tx.add(&[(BUFS, 12, false), (BUFS + 0x100, 60, false)]);
    b.dev.queue_notify(TX_QUEUE);
    assert_eq!(peer_recv(&b.peer), None);
}

#[test]
fn rx_frame_lands_in_guest_memory_with_its_header() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    b.mem.write_slice(&[0xee; 2048], GuestAddress(BUFS)).unwrap();
    // Header and frame in separate buffers, as Linux's big-packet mode does.
    let head = rx.add(&[(BUFS, 12, true), (BUFS + 0x100, 1514, true)]);
    b.dev.queue_notify(RX_QUEUE);
    let f = frame(100, 3);
    b.peer.send(&f).unwrap();
    wait_until(&b.dev, "the frame is used", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (u32::from(head), 112));
    let mut header = [0xffu8; 12];
    b.mem.read_slice(&mut header, GuestAddress(BUFS)).unwrap();
    assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "zeroed, num_buffers = 1");
    let mut got = vec![0u8; 100];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 0x100)).unwrap();
    assert_eq!(got, f);
    wait_until(&b.dev, "the VMM is notified", || b.vmm.count() == 1);
    assert_eq!(b.irq.status() & INT_USED_BUFFER, INT_USED_BUFFER);
    let m = b.dev.metrics();
    assert_eq!(m.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(m.rx_bytes.load(Ordering::Relaxed), 100);
}

#[test]
fn rx_without_buffers_keeps_the_frame_until_the_driver_adds_some() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let (f1, f2) = (frame(64, 1), frame(80, 2));
    b.peer.send(&f1).unwrap();
    let metrics = b.dev.metrics();
    wait_until(&b.dev, "the frame waits for a buffer", || metrics.rx_deferred.load(Ordering::Relaxed) == 1);
    b.peer.send(&f2).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used_idx(), 0);
    assert_eq!(metrics.rx_dropped.load(Ordering::Relaxed), 0);
    // While a frame waits, the thread waits too: the second frame in the
    // backend does not wake it (it would find no buffer, over and over).
    assert_eq!(metrics.rx_deferred.load(Ordering::Relaxed), 1, "the RX thread spins");
    assert_eq!(rx.used_flags(), 0, "the device wants refill notifications");
    rx.add(&[(BUFS, 2048, true)]);
    rx.add(&[(BUFS + 0x1000, 2048, true)]);
    b.dev.queue_notify(RX_QUEUE);
    wait_until(&b.dev, "both frames are used", || rx.used_idx() == 2);
    let mut got = vec![0u8; 64];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 12)).unwrap();
    assert_eq!(got, f1, "the kept frame comes first");
    let mut got = vec![0u8; 80];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 0x1000 + 12)).unwrap();
    assert_eq!(got, f2);
    assert_eq!(rx.used_all(), vec![(0, 76), (1, 92)]);
    // Only the refill notification could have woken the thread for them; it
    // read it, or epoll would keep waking it.
    let refill = &b.dev.active.as_ref().unwrap().refill;
    assert!(refill.read().is_err(), "the refill notification was left unread");
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let head = rx.add(&[(BUFS, 64, true)]);
    b.dev.queue_notify(RX_QUEUE);
    b.peer.send(&frame(100, 1)).unwrap();
    let metrics = b.dev.metrics();
    wait_until(&b.dev, "the big frame is dropped", || metrics.rx_dropped.load(Ordering::Relaxed) == 1);
    assert_eq!(rx.used_idx(), 0);
    let small = frame(40, 9);
    b.peer.send(&small).unwrap();
    wait_until(&b.dev, "the small frame is used", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (u32::from(head), 52));
    let mut got = vec![0u8; 40];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 12)).unwrap();
    assert_eq!(got, small);
}

#[test]
fn rx_chain_outside_guest_memory_is_returned_and_the_frame_kept() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(MEM_SIZE - 16, 2048, true)]);
    rx.add(&[(BUFS, 2048, true)]);
    b.dev.queue_notify(RX_QUEUE);
    let f = frame(200, 4);
    b.peer.send(&f).unwrap();
    wait_until(&b.dev, "both chains are used", || rx.used_idx() == 2);
    assert_eq!(rx.used_all(), vec![(0, 0), (1, 212)]);
    let mut got = vec![0u8; 200];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 12)).unwrap();
    assert_eq!(got, f);
    assert_eq!(b.dev.metrics().errors.load(Ordering::Relaxed), 1);
}

#[test]
fn broken_rx_ring_sets_needs_reset() {
    let b = bench();
    let mem = b.mem.clone();
    let rx = Driver::new(&mem, RX_RING, 16);
    rx.set_avail_idx(100);
    b.peer.send(&frame(60, 0)).unwrap();
    wait_until(&b.dev, "the device asks for a reset", || b.irq.needs_reset());
    assert_eq!(rx.used_idx(), 0);
}

#[test]
fn many_frames_are_delivered_in_order() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let mut delivered = 0u16;
    for round in 0..5u8 {
        for i in 0..8u64 {
            rx.add(&[(BUFS + i * 0x1000, 2048, true)]);
        }
        b.dev.queue_notify(RX_QUEUE);
        for i in 0..8u8 {
            b.peer.send(&frame(60 + usize::from(i), round * 8 + i)).unwrap();
        }
        delivered += 8;
        wait_until(&b.dev, "the round is used", || rx.used_idx() == delivered);
        for i in 0..8u16 {
            let (id, len) = rx.used_elem(delivered - 8 + i);
            assert_eq!(len, 72 + u32::from(i));
            let mut got = vec![0u8; 60 + usize::from(i)];
            let buf = BUFS + u64::from(id % 8) * 0x1000;
            b.mem.read_slice(&mut got, GuestAddress(buf + 12)).unwrap();
            assert_eq!(got, frame(60 + usize::from(i), round * 8 + i as u8));
        }
    }
}

#[test]
fn reset_and_drop_stop_the_rx_thread() {
    let mut b = bench();
    // On a thread: a reset that never joins fails the test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        b.dev.reset();
        done_tx.send(b).unwrap();
    });
    let mut b = done_rx.recv_timeout(Duration::from_secs(10)).expect("reset joined the RX thread");
    // No thread reads the backend any more: the frame stays in the socket.
    b.peer.send(&frame(60, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 2048, true)]);
    b.dev.queue_notify(RX_QUEUE);
    b.dev.queue_notify(TX_QUEUE);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used_idx(), 0);

    // Activated again, the device picks the frame up.
    let (_, irq) = interrupt();
    let rxq = Driver::new(&mem, RX_RING, 16).queue();
    let txq = Driver::new(&mem, TX_RING, 16).queue();
    b.dev.activate(mem.clone(), b.dev.features(), vec![rxq, txq], irq).unwrap();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 2048, true)]);
    b.dev.queue_notify(RX_QUEUE);
    wait_until(&b.dev, "the frame is used after re-activation", || rx.used_idx() == 1);

    // Dropping a running device joins its thread, which lets go of what it shared.
    let metrics = b.dev.metrics();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(b);
        done_tx.send(()).unwrap();
    });
    done_rx.recv_timeout(Duration::from_secs(10)).expect("drop joined the RX thread");
    assert_eq!(Arc::strong_count(&metrics), 1, "the RX thread still runs");
}

#[test]
fn activation_needs_two_queues() {
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let mut dev = VirtioNet::with_backend(Arc::new(Sock(ours)), MAC);
    let mem = memory();
    let (_, irq) = interrupt();
    let q = Driver::new(&mem, RX_RING, 16).queue();
    assert!(matches!(dev.activate(mem.clone(), 0, vec![q], irq), Err(VirtioError::QueueCount { expected: 2, got: 1 })));
}

#[test]
fn rx_buffer_of_exactly_the_frames_size_is_used() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 12 + 100, true)]);
    b.dev.queue_notify(RX_QUEUE);
    let f = frame(100, 6);
    b.peer.send(&f).unwrap();
    wait_until(&b.dev, "the frame is used", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (0, 112));
    let mut got = vec![0u8; 100];
    b.mem.read_slice(&mut got, GuestAddress(BUFS + 12)).unwrap();
    assert_eq!(got, f);
    assert_eq!(b.dev.metrics().rx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn rx_refills_need_no_notification_while_buffers_last() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    for i in 0..4 {
        rx.add(&[(BUFS + i * 0x1000, 2048, true)]);
    }
    b.dev.queue_notify(RX_QUEUE);
    b.peer.send(&frame(60, 1)).unwrap();
    wait_until(&b.dev, "the frame is used", || rx.used_idx() == 1);
    let no_notify = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
    assert_eq!(rx.used_flags(), no_notify, "three buffers are left: the driver need not notify");
}

#[test]
fn rx_gives_up_on_an_available_ring_it_cannot_read() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut dev = VirtioNet::with_backend(Arc::new(Sock(ours)), MAC);
    let mem = memory();
    let (_, irq) = interrupt();
    // The RX ring's index says one buffer is there; the entry lies past the end of RAM.
    let mut rx = Queue::new(16).unwrap();
    rx.set_desc_table_address(Some(0), Some(0));
    rx.set_avail_ring_address(Some((MEM_SIZE - 4) as u32), Some(0));
    rx.set_used_ring_address(Some(0x2000), Some(0));
    rx.set_ready(true);
    mem.write_obj(1u16, GuestAddress(MEM_SIZE - 2)).unwrap();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    dev.activate(mem.clone(), dev.features(), vec![rx, tx], irq.clone()).unwrap();
    peer.send(&frame(60, 0)).unwrap();
    wait_until(&dev, "the device asks for a reset", || irq.needs_reset());
    assert_eq!(dev.metrics().rx_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn rx_keeps_up_with_a_driver_adding_buffers_meanwhile() {
    // With one buffer at a time the thread keeps running out, and
    // buffers added between its last look and re-enabling notifications
    // must neither be missed nor taken for a broken ring.
    const FRAMES: u16 = 4000;
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let peer = b.peer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        while sent < FRAMES {
            match peer.send(&frame(60, sent as u8)) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "the device stopped taking frames");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut added = 0u16;
    while rx.used_idx() < FRAMES {
        assert!(!b.irq.needs_reset(), "the queue broke after {} frames", rx.used_idx());
        assert!(Instant::now() < deadline, "only {} frames delivered", rx.used_idx());
        if added < FRAMES && added == rx.used_idx() {
            rx.add(&[(BUFS + u64::from(added % 16) * 0x1000, 2048, true)]);
            b.dev.queue_notify(RX_QUEUE);
            added += 1;
        } else {
            std::thread::yield_now();
        }
    }
    sender.join().unwrap();
    assert_eq!(b.dev.metrics().rx_frames.load(Ordering::Relaxed), u64::from(FRAMES));
}

/// A backend whose `recv` fails with the scripted errors first.
struct Scripted {
    sock: UnixDatagram,
    errors: std::sync::Mutex<Vec<io::ErrorKind>>,
}

impl AsRawFd for Scripted {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for Scripted {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.errors.lock().unwrap().pop() {
            Some(kind) => Err(kind.into()),
            None => self.sock.recv(buf),
        }
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
    }
}

fn scripted_bench(errors: Vec<io::ErrorKind>) -> (VirtioNet, UnixDatagram, GuestMemoryMmap) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let backend = Scripted { sock: ours, errors: std::sync::Mutex::new(errors) };
    let mut dev = VirtioNet::with_backend(Arc::new(backend), MAC);
    let mem = memory();
    let (_, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    dev.activate(mem.clone(), dev.features(), vec![rx, tx], irq).unwrap();
    (dev, peer, mem)
}

#[test]
fn rx_retries_an_interrupted_read() {
    let (mut dev, peer, mem) = scripted_bench(vec![io::ErrorKind::Interrupted]);
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 2048, true)]);
    dev.queue_notify(RX_QUEUE);
    peer.send(&frame(60, 2)).unwrap();
    wait_until(&dev, "the frame is used", || rx.used_idx() == 1);
    assert_eq!(dev.metrics().errors.load(Ordering::Relaxed), 0);
}

#[test]
fn rx_stops_when_the_backend_fails() {
    let (mut dev, peer, mem) = scripted_bench(vec![io::ErrorKind::ConnectionReset]);
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 2048, true)]);
    dev.queue_notify(RX_QUEUE);
    peer.send(&frame(60, 2)).unwrap();
    let metrics = dev.metrics();
    wait_until(&dev, "the failure is counted", || metrics.errors.load(Ordering::Relaxed) == 1);
    // The backend is not read again: the frame stays where it is.
    peer.send(&frame(60, 3)).unwrap();
    dev.queue_notify(RX_QUEUE);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used_idx(), 0);
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 1);
}

#[test]
fn rx_survives_a_signal_interrupting_its_wait() {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: the handler does nothing, so it is async-signal-safe; nothing
    // else in the test process uses SIGUSR2.
    let old = unsafe { libc::signal(libc::SIGUSR2, ignore as *const () as libc::sighandler_t) };
    assert_ne!(old, libc::SIG_ERR);
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let thread = {
        use std::os::unix::thread::JoinHandleExt;
        b.dev.active.as_ref().unwrap().rx_thread.as_ref().unwrap().as_pthread_t()
    };
    // epoll_wait fails with EINTR whenever a handler runs: a few signals, so
    // that some arrive while the thread waits.
    for _ in 0..5 {
        // SAFETY: `thread` is the RX thread, joinable until the device is dropped.
        assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
        std::thread::sleep(Duration::from_millis(5));
    }
    rx.add(&[(BUFS, 2048, true)]);
    b.dev.queue_notify(RX_QUEUE);
    b.peer.send(&frame(60, 4)).unwrap();
    wait_until(&b.dev, "the frame is used", || rx.used_idx() == 1);
}
