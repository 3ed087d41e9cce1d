use std::io::Seek;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::test_utils::{interrupt, memory, Buf, CountingInterrupt, Driver, MEM_SIZE};
use crate::virtio::INT_USED_BUFFER;

const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x1000;
const BUFS: u64 = 0x1_0000;

/// A writer whose bytes and calls the test can see, and make fail.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<SinkState>>);

#[derive(Default)]
struct SinkState {
    data: Vec<u8>,
    writes: usize,
    flushes: usize,
    /// Every write and flush fails with this.
    fail: Option<io::ErrorKind>,
    /// Each write takes at most this many bytes.
    max_write: Option<usize>,
    /// The next write fails with `Interrupted`.
    interrupt_next: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.0.lock().unwrap();
        if std::mem::take(&mut s.interrupt_next) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = s.fail {
            return Err(kind.into());
        }
        let n = buf.len().min(s.max_write.unwrap_or(usize::MAX));
        s.data.extend_from_slice(&buf[..n]);
        s.writes += 1;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.flushes += 1;
        match s.fail {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

impl Sink {
    fn data(&self) -> Vec<u8> {
        self.0.lock().unwrap().data.clone()
    }
    fn writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }
    fn flushes(&self) -> usize {
        self.0.lock().unwrap().flushes
    }
    fn set_fail(&self, kind: Option<io::ErrorKind>) {
        self.0.lock().unwrap().fail = kind;
    }
}

struct Bench {
    mem: GuestMemoryMmap,
    dev: VirtioConsole,
    sink: Sink,
    vmm: Arc<CountingInterrupt>,
    irq: Arc<Interrupt>,
}

/// An active console on two 16-entry queues.
fn bench() -> Bench {
    let sink = Sink::default();
    let mut dev = VirtioConsole::new(Box::new(sink.clone()));
    let mem = memory();
    let (vmm, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    dev.activate(mem.clone(), dev.features(), vec![rx, tx], irq.clone()).unwrap();
    Bench { mem, dev, sink, vmm, irq }
}

impl Bench {
    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn metric(&self, counter: impl Fn(&ConsoleMetrics) -> &AtomicU64) -> u64 {
        counter(&self.dev.metrics()).load(Ordering::Relaxed)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn identity_features_queues_and_config() {
    let b = bench();
    assert_eq!(b.dev.device_type(), 3);
    assert_eq!(b.dev.features(), VIRTIO_F_VERSION_1, "no SIZE, no MULTIPORT");
    assert_eq!(b.dev.queue_max_sizes(), &[256, 256]);
    let mut config = [0xffu8; 12];
    b.dev.read_config(0, &mut config);
    assert_eq!(config, [0; 12]);
}

#[test]
fn activate_wants_both_queues() {
    let mut dev = VirtioConsole::new(Box::new(Sink::default()));
    let mem = memory();
    let (_, irq) = interrupt();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    let err = dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![tx], irq).unwrap_err();
    assert!(matches!(err, VirtioError::QueueCount { expected: 2, got: 1 }));
}

#[test]
fn multi_descriptor_chain_arrives_in_order() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS + 0x200, b"hello, ");
    b.put(BUFS, b"virtio ");
    b.put(BUFS + 0x900, b"console\n");
    let head = tx.add(&[(BUFS + 0x200, 7, false), (BUFS, 7, false), (BUFS + 0x900, 8, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"hello, virtio console\n");
    assert_eq!(tx.used_all(), vec![(u32::from(head), 0)]);
    assert_eq!(b.sink.writes(), 1, "one write for the whole chain");
    assert_eq!(b.sink.flushes(), 1);
    assert_eq!(b.vmm.count(), 1);
    assert_eq!(b.irq.status(), INT_USED_BUFFER);
    assert_eq!(b.metric(|m| &m.bytes_out), 22);
    assert_eq!(b.metric(|m| &m.chains), 1);
}

#[test]
fn a_batch_arrives_in_order_with_one_interrupt_and_one_flush() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let mut expected = Vec::new();
    for i in 0..10u64 {
        let line = format!("line {i}\n");
        b.put(BUFS + i * 0x100, line.as_bytes());
        tx.add(&[(BUFS + i * 0x100, line.len() as u32, false)]);
        expected.extend_from_slice(line.as_bytes());
    }
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), expected);
    assert_eq!(tx.used_all(), (0..10).map(|i| (i, 0)).collect::<Vec<_>>());
    assert_eq!(b.vmm.count(), 1);
    assert_eq!(b.sink.writes(), 1, "small chains are gathered into one write");
    assert_eq!(b.sink.flushes(), 1);
    assert_eq!(b.metric(|m| &m.chains), 10);
    // The ring wraps: 30 more in batches of 10, one interrupt each.
    for batch in 0..3u64 {
        for i in 0..10u64 {
            b.put(BUFS + i * 0x100, &[b'a' + batch as u8]);
            tx.add(&[(BUFS + i * 0x100, 1, false)]);
        }
        b.dev.queue_notify(TRANSMIT_QUEUE);
    }
    assert_eq!(tx.used_idx(), 40);
    assert_eq!(b.vmm.count(), 4);
    assert!(b.sink.data().ends_with(b"aaaaaaaaaabbbbbbbbbbcccccccccc"));
    assert!(!b.irq.needs_reset());
}

#[test]
fn chains_larger_than_the_buffer_arrive_whole() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let data = pattern(3 * OUTPUT_BUFFER_LEN + 100, 5);
    b.put(BUFS, &data);
    // Descriptors that do not line up with the output buffer's size.
    let split = [0, 1000, 70_000, 150_000, data.len()];
    let bufs: Vec<_> = split.windows(2).map(|w| (BUFS + w[0] as u64, (w[1] - w[0]) as u32, false)).collect();
    tx.add(&bufs);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), data);
    assert_eq!(b.sink.writes(), 4);
    assert_eq!(b.metric(|m| &m.bytes_out), data.len() as u64);
}

#[test]
fn short_and_interrupted_writes_are_retried() {
    let mut b = bench();
    b.sink.0.lock().unwrap().max_write = Some(7);
    b.sink.0.lock().unwrap().interrupt_next = true;
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let data = pattern(100, 9);
    b.put(BUFS, &data);
    tx.add(&[(BUFS, 100, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), data);
    assert_eq!(b.metric(|m| &m.errors), 0);
    assert_eq!(b.metric(|m| &m.lost_bytes), 0);
}

#[test]
fn chain_with_a_device_writable_descriptor_is_dropped_but_returned() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS, b"before|");
    b.put(BUFS + 0x100, b"secret");
    b.put(BUFS + 0x200, b"after");
    tx.add(&[(BUFS, 7, false)]);
    tx.add(&[(BUFS + 0x100, 6, false), (BUFS + 0x300, 16, true)]);
    // Writable first, as an RX buffer would be.
    tx.add(&[(BUFS + 0x300, 16, true)]);
    tx.add(&[(BUFS + 0x200, 5, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"before|after");
    assert_eq!(tx.used_all(), vec![(0, 0), (1, 0), (3, 0), (4, 0)]);
    assert_eq!(b.metric(|m| &m.dropped_chains), 2);
    assert_eq!(b.metric(|m| &m.chains), 4);
    assert_eq!(b.vmm.count(), 1);
    assert!(!b.irq.needs_reset());
}

#[test]
fn buffers_outside_guest_memory_are_dropped_but_returned() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS, b"ok");
    b.put(MEM_SIZE - 4, b"tail");
    // Straddles the end of memory: not even its first bytes are written.
    tx.add(&[(MEM_SIZE - 4, 8, false)]);
    // A good buffer followed by one past the end.
    tx.add(&[(BUFS, 2, false), (MEM_SIZE, 4, false)]);
    tx.add(&[(0xdead_0000_0000, 16, false)]);
    tx.add(&[(u64::MAX - 8, 64, false)]);
    tx.add(&[(BUFS, 2, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"ok");
    assert_eq!(tx.used_idx(), 5);
    assert!(tx.used_all().iter().all(|&(_, len)| len == 0));
    assert_eq!(b.metric(|m| &m.dropped_chains), 4);
    assert!(!b.irq.needs_reset());
}

#[test]
fn chain_over_the_byte_cap_is_dropped_but_returned() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    // 1 MiB + 2 bytes in two descriptors over the same memory.
    let half = (MAX_CHAIN_BYTES / 2 + 1) as u32;
    tx.add(&[(BUFS, half, false), (BUFS, half, false)]);
    b.put(BUFS, b"next");
    tx.add(&[(BUFS, 4, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"next");
    assert_eq!(tx.used_all(), vec![(0, 0), (2, 0)]);
    assert_eq!(b.metric(|m| &m.dropped_chains), 1);
}

#[test]
fn chain_of_exactly_the_byte_cap_is_output() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    let half = (MAX_CHAIN_BYTES / 2) as u32;
    let data = pattern(half as usize, 5);
    b.put(BUFS, &data);
    tx.add(&[(BUFS, half, false), (BUFS, half, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), [data.clone(), data].concat());
    assert_eq!(b.metric(|m| &m.dropped_chains), 0);
}

#[test]
fn empty_chain_is_returned_with_no_output() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    tx.add(&[(BUFS, 0, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_all(), vec![(0, 0)]);
    assert!(b.sink.data().is_empty());
    assert_eq!(b.sink.writes(), 0);
    assert_eq!(b.metric(|m| &m.dropped_chains), 0);
}

#[test]
fn looping_chain_needs_reset_without_hanging() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS, b"first");
    tx.add(&[(BUFS, 5, false)]);
    let next = VRING_DESC_F_NEXT as u16;
    tx.write_desc(1, BUFS, 5, next, 2);
    tx.write_desc(2, BUFS, 5, next, 1);
    tx.publish(1);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert!(b.irq.needs_reset());
    assert_eq!(b.metric(|m| &m.broken_queue), 1);
    assert_eq!(b.sink.data(), b"first", "the chain before the loop is written");
    assert_eq!(tx.used_all(), vec![(0, 0)]);
    // Nothing more is looked at until a reset.
    tx.write_desc(3, BUFS, 5, 0, 0);
    tx.publish(3);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_idx(), 1);
    assert_eq!(b.sink.data(), b"first");
    assert_eq!(b.metric(|m| &m.broken_queue), 1);
}

#[test]
fn next_index_past_the_table_and_avail_running_ahead_need_reset() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    tx.write_desc(0, BUFS, 5, VRING_DESC_F_NEXT as u16, 16);
    tx.publish(0);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert!(b.irq.needs_reset());
    assert!(b.sink.data().is_empty());

    let mut b = bench();
    let mem = b.mem.clone();
    let tx = Driver::new(&mem, TX_RING, 16);
    tx.set_avail_idx(100);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert!(b.irq.needs_reset());
    assert_eq!(tx.used_idx(), 0);
}

#[test]
fn failing_writer_loses_bytes_but_chains_are_returned() {
    let mut b = bench();
    b.sink.set_fail(Some(io::ErrorKind::BrokenPipe));
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS, b"lost output");
    for _ in 0..3 {
        tx.add(&[(BUFS, 11, false)]);
    }
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_all(), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(b.vmm.count(), 1);
    assert!(!b.irq.needs_reset());
    assert_eq!(b.metric(|m| &m.lost_bytes), 33);
    assert_eq!(b.metric(|m| &m.bytes_out), 0);
    assert_eq!(b.metric(|m| &m.errors), 1, "one write for the batch, no flush after it failed");
    assert_eq!(b.metric(|m| &m.dropped_chains), 0, "the guest did nothing wrong");
    // Later batches are still returned, and output resumes when the writer works again.
    tx.add(&[(BUFS, 11, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_idx(), 4);
    assert_eq!(b.metric(|m| &m.lost_bytes), 44);
    b.sink.set_fail(None);
    b.put(BUFS, b"back");
    tx.add(&[(BUFS, 4, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"back");
    assert_eq!(b.metric(|m| &m.lost_bytes), 44);
    assert_eq!(b.vmm.count(), 3);
}

#[test]
fn a_writer_that_keeps_failing_and_recovering_is_logged_a_bounded_number_of_times() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    for i in 0..40 {
        b.sink.set_fail((i % 2 == 0).then_some(io::ErrorKind::WouldBlock));
        tx.add(&[(BUFS, 8, false)]);
        b.dev.queue_notify(TRANSMIT_QUEUE);
    }
    assert_eq!(tx.used_idx(), 40);
    assert_eq!(b.dev.output.failures, 20, "each failure after a success starts a new one");
    assert!(b.dev.output.failures > OUTPUT_FAILURE_LOG_LIMIT, "past the limit, only counted");
    assert!(!b.dev.output.failing);
    assert_eq!(b.metric(|m| &m.lost_bytes), 20 * 8);
    assert_eq!(b.metric(|m| &m.bytes_out), 20 * 8);
}

#[test]
fn writer_failing_part_way_counts_only_the_rest_as_lost() {
    struct Half(usize);
    impl Write for Half {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut dev = VirtioConsole::new(Box::new(Half(30)));
    let mem = memory();
    let (_, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![rx, tx.queue()], irq).unwrap();
    tx.add(&[(BUFS, 100, false)]);
    dev.queue_notify(TRANSMIT_QUEUE);
    let m = dev.metrics();
    assert_eq!(m.bytes_out.load(Ordering::Relaxed), 30);
    assert_eq!(m.lost_bytes.load(Ordering::Relaxed), 70);
    assert_eq!(tx.used_idx(), 1);
}

#[test]
fn failing_flush_is_counted() {
    struct BadFlush;
    impl Write for BadFlush {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }
    let mut dev = VirtioConsole::new(Box::new(BadFlush));
    let mem = memory();
    let (_, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![rx, tx.queue()], irq).unwrap();
    tx.add(&[(BUFS, 10, false)]);
    dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(dev.metrics().errors.load(Ordering::Relaxed), 1);
    assert_eq!(tx.used_idx(), 1);
}

#[test]
fn no_interrupt_flag_suppresses_notifications() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    tx.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    b.put(BUFS, b"polled");
    tx.add(&[(BUFS, 6, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_idx(), 1);
    assert_eq!(b.sink.data(), b"polled");
    assert_eq!(b.vmm.count(), 0, "a polling driver is not woken");
    assert_eq!(tx.used_flags(), 0, "notifications from the driver re-enabled");
}

#[test]
fn reset_stops_processing() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.dev.reset();
    b.put(BUFS, b"after reset");
    tx.add(&[(BUFS, 11, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(tx.used_idx(), 0);
    assert!(b.sink.data().is_empty());
    assert_eq!(b.vmm.count(), 0);
    // Activated again on fresh rings, it works.
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![rx, tx.queue()], b.irq.clone()).unwrap();
    tx.add(&[(BUFS, 5, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"after");
}

#[test]
fn without_a_source_receive_buffers_come_back_empty_at_once() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let mut tx = Driver::new(&mem, TX_RING, 16);
    b.put(BUFS, &[0xee; 64]);
    rx.add(&[(BUFS, 64, true)]);
    // Even a chain that could take nothing: nothing is written to any.
    rx.add(&[(BUFS + 0x100, 64, false)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    assert_eq!(rx.used_all(), vec![(0, 0), (1, 0)], "the stream has ended");
    assert_eq!(b.vmm.count(), 1);
    let mut buf = [0u8; 64];
    b.mem.read_slice(&mut buf, GuestAddress(BUFS)).unwrap();
    assert_eq!(buf, [0xee; 64], "the buffer is not touched");
    b.put(BUFS + 0x200, b"out");
    tx.add(&[(BUFS + 0x200, 3, false)]);
    b.dev.queue_notify(TRANSMIT_QUEUE);
    assert_eq!(b.sink.data(), b"out");
    assert_eq!(b.metric(|m| &m.receive_chains), 2);
    assert!(!b.irq.needs_reset());
}

/// A console reading `source`, active on 16-entry queues.
fn input_bench(source: File) -> Bench {
    let sink = Sink::default();
    let mut dev = VirtioConsole::with_input(Box::new(sink.clone()), source);
    let mem = memory();
    let (vmm, irq) = interrupt();
    let rx = Driver::new(&mem, RX_RING, 16).queue();
    let tx = Driver::new(&mem, TX_RING, 16).queue();
    dev.activate(mem.clone(), dev.features(), vec![rx, tx], irq.clone()).unwrap();
    Bench { mem, dev, sink, vmm, irq }
}

/// A connected pair: what the test writes to the first, the device reads
/// from the second (as from a pipe).
fn stream() -> (UnixStream, File) {
    let (writer, reader) = UnixStream::pair().unwrap();
    (writer, File::from(OwnedFd::from(reader)))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Bench {
    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

#[test]
fn input_fills_posted_buffers_in_order_and_ends_with_an_empty_one() {
    let (mut writer, reader) = stream();
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    writer.write_all(b"hello, ").unwrap();
    rx.add(&[(BUFS, 0x100, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the first chain", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (0, 7));
    assert_eq!(b.get(BUFS, 7), b"hello, ");
    assert_eq!(b.vmm.count(), 1, "the driver asked for notifications");
    assert_eq!(b.irq.status(), INT_USED_BUFFER);
    // Two chains posted before the bytes come: the first takes them.
    rx.add(&[(BUFS + 0x100, 0x100, true)]);
    rx.add(&[(BUFS + 0x200, 0x100, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used_idx(), 1, "nothing to read yet: the chain is held");
    writer.write_all(b"world").unwrap();
    wait_for("the second chain", || rx.used_idx() == 2);
    assert_eq!(rx.used_elem(1), (1, 5));
    assert_eq!(b.get(BUFS + 0x100, 5), b"world");
    drop(writer);
    wait_for("the end of the stream", || rx.used_idx() == 3);
    assert_eq!(rx.used_elem(2), (2, 0), "length 0: the end");
    // Later chains come back empty at once.
    rx.add(&[(BUFS, 0x100, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("a chain after the end", || rx.used_idx() == 4);
    assert_eq!(rx.used_elem(3), (3, 0));
    assert_eq!(b.metric(|m| &m.bytes_in), 12);
    assert_eq!(b.metric(|m| &m.receive_chains), 4);
    assert!(!b.irq.needs_reset());
}

#[test]
fn the_source_is_read_no_further_than_the_buffers_posted() {
    let (mut writer, reader) = stream();
    let data = pattern(200_000, 3);
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let producer = {
        let data = data.clone();
        std::thread::spawn(move || writer.write_all(&data).is_ok())
    };
    rx.add(&[(BUFS, 0x1000, true)]);
    rx.add(&[(BUFS + 0x1000, 0x1000, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("both chains", || rx.used_idx() == 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(b.metric(|m| &m.bytes_in), 0x2000, "two buffers' worth, whatever waits in the source");
    assert_eq!(rx.used_all(), vec![(0, 0x1000), (1, 0x1000)]);
    assert_eq!(rx.used_flags(), 0, "out of buffers: the driver must notify");
    // The rest, through one buffer reused over and over, as a guest would.
    let mut got = b.get(BUFS, 0x2000);
    let mut used = 2;
    while got.len() < data.len() {
        rx.add(&[(BUFS + 0x4000, 0x8000, true)]);
        b.dev.queue_notify(RECEIVE_QUEUE);
        wait_for("a refill", || rx.used_idx() == used + 1);
        let (_, len) = rx.used_elem(used);
        assert!(len > 0 && len <= 0x8000);
        got.extend(b.get(BUFS + 0x4000, len as usize));
        used += 1;
    }
    assert_eq!(got, data);
    assert!(producer.join().unwrap());
}

#[test]
fn a_regular_file_fills_every_buffer_of_a_chain_and_then_ends() {
    let mut file = tempfile::tempfile().unwrap();
    let data = pattern(10_000, 7);
    file.write_all(&data).unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut b = input_bench(file);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS + 0x3000, 3000, true), (BUFS, 5000, true)]);
    rx.add(&[(BUFS + 0x5000, 4096, true)]);
    rx.add(&[(BUFS + 0x7000, 4096, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("three chains", || rx.used_idx() == 3);
    assert_eq!(rx.used_all(), vec![(0, 8000), (2, 2000), (3, 0)]);
    let got = [b.get(BUFS + 0x3000, 3000), b.get(BUFS, 5000), b.get(BUFS + 0x5000, 2000)].concat();
    assert_eq!(got, data);
}

#[test]
fn receive_chains_that_cannot_take_input_need_a_reset_and_read_nothing() {
    let bad: [&[Buf]; 4] = [
        &[(BUFS, 16, false), (BUFS + 0x100, 16, true)],
        &[(BUFS, 0, true)],
        &[(MEM_SIZE - 8, 16, true)],
        &[(BUFS, 16, true), (0xdead_0000_0000, 16, true)],
    ];
    for chain in bad {
        let (mut writer, reader) = stream();
        writer.write_all(b"kept").unwrap();
        let mut b = input_bench(reader);
        let mem = b.mem.clone();
        let mut rx = Driver::new(&mem, RX_RING, 16);
        rx.add(chain);
        b.dev.queue_notify(RECEIVE_QUEUE);
        wait_for("the reset request", || b.irq.needs_reset());
        assert_eq!(rx.used_idx(), 0, "{chain:?}: not returned, so not taken for the end");
        assert_eq!(b.metric(|m| &m.broken_queue), 1);
        assert_eq!(b.metric(|m| &m.bytes_in), 0);
        // After a reset, a good chain gets the bytes: none were lost.
        b.dev.reset();
        let mut rx = Driver::new(&mem, RX_RING, 16);
        let tx = Driver::new(&mem, TX_RING, 16);
        b.dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![rx.queue(), tx.queue()], b.irq.clone()).unwrap();
        rx.add(&[(BUFS + 0x1000, 16, true)]);
        b.dev.queue_notify(RECEIVE_QUEUE);
        wait_for("the good chain", || rx.used_idx() == 1);
        assert_eq!(rx.used_elem(0), (0, 4));
        assert_eq!(b.get(BUFS + 0x1000, 4), b"kept");
    }
}

#[test]
fn a_looping_receive_chain_needs_reset() {
    let (_writer, reader) = stream();
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let flags = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
    rx.write_desc(0, BUFS, 5, flags, 1);
    rx.write_desc(1, BUFS, 5, flags, 0);
    rx.publish(0);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the reset request", || b.irq.needs_reset());
    assert_eq!(rx.used_idx(), 0);
}

#[test]
fn a_source_that_never_speaks_does_not_hold_up_reset_or_drop() {
    let (writer, reader) = stream();
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.add(&[(BUFS, 64, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    std::thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    b.dev.reset();
    let tx = Driver::new(&mem, TX_RING, 16);
    b.dev
        .activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![Driver::new(&mem, RX_RING, 16).queue(), tx.queue()],
            b.irq.clone(),
        )
        .unwrap();
    drop(b);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    drop(writer);
}

#[test]
fn a_polling_driver_is_not_woken_and_reposts_cost_no_notification() {
    let (mut writer, reader) = stream();
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    rx.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    rx.add(&[(BUFS, 4, true)]);
    rx.add(&[(BUFS + 0x100, 4, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    writer.write_all(b"abcd").unwrap();
    wait_for("the first chain", || rx.used_idx() == 1);
    assert_eq!(rx.used_flags(), VRING_USED_F_NO_NOTIFY as u16, "a chain is held: reposts need no notify");
    writer.write_all(b"efgh").unwrap();
    wait_for("the second chain", || rx.used_idx() == 2);
    assert_eq!(b.vmm.count(), 0, "a polling driver is not woken");
    wait_for("notifications back on", || rx.used_flags() == 0);
}

#[test]
fn the_stream_goes_on_across_a_reset() {
    let (mut writer, reader) = stream();
    let mut b = input_bench(reader);
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    writer.write_all(b"one").unwrap();
    rx.add(&[(BUFS, 3, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the first chain", || rx.used_idx() == 1);
    b.dev.reset();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    let tx = Driver::new(&mem, TX_RING, 16);
    b.dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![rx.queue(), tx.queue()], b.irq.clone()).unwrap();
    writer.write_all(b"two").unwrap();
    drop(writer);
    rx.add(&[(BUFS, 16, true)]);
    rx.add(&[(BUFS + 0x100, 16, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("both chains", || rx.used_idx() == 2);
    assert_eq!(rx.used_all(), vec![(0, 3), (1, 0)]);
    assert_eq!(b.get(BUFS, 3), b"two");
}

#[test]
fn an_end_met_after_some_bytes_is_kept_for_the_next_chain() {
    let named = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(named.path(), pattern(3000, 1)).unwrap();
    let mut b = input_bench(File::open(named.path()).unwrap());
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    // The first buffer takes the whole file; the read into the second finds the end.
    rx.add(&[(BUFS, 3000, true), (BUFS + 0x1000, 5000, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the data", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (0, 3000));
    assert_eq!(b.get(BUFS, 3000), pattern(3000, 1));
    // An end is not read twice (a terminal's end of file is one read of 0,
    // and what comes after it is not this stream): bytes the file gains
    // now are not read.
    std::fs::OpenOptions::new().append(true).open(named.path()).unwrap().write_all(b"more").unwrap();
    rx.add(&[(BUFS + 0x3000, 16, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the end", || rx.used_idx() == 2);
    assert_eq!(rx.used_elem(1), (2, 0));
    assert_eq!(b.metric(|m| &m.bytes_in), 3000);
}

#[test]
fn a_chain_is_returned_with_what_has_come_without_waiting_to_fill_it() {
    let (writer, reader) = stream();
    let mut b = input_bench(reader);
    // Dropped before the device, even when the test fails: a read stuck
    // waiting for more then ends, and so does the device's drop.
    let mut writer = writer;
    let mem = b.mem.clone();
    let mut rx = Driver::new(&mem, RX_RING, 16);
    // Exactly the first buffer's worth: reading on into the second would wait.
    writer.write_all(&[7; 16]).unwrap();
    rx.add(&[(BUFS, 16, true), (BUFS + 0x100, 16, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the chain", || rx.used_idx() == 1);
    assert_eq!(rx.used_elem(0), (0, 16));
    // Less than the first buffer: returned at once too.
    writer.write_all(&[8; 10]).unwrap();
    rx.add(&[(BUFS + 0x200, 16, true), (BUFS + 0x300, 16, true)]);
    b.dev.queue_notify(RECEIVE_QUEUE);
    wait_for("the second chain", || rx.used_idx() == 2);
    assert_eq!(rx.used_elem(1), (2, 10));
    drop(writer);
}
