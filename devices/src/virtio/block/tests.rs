use std::io::Write;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::QueueT;

use super::*;
use crate::virtio::test_utils::{interrupt, memory, CountingInterrupt, Driver, MEM_SIZE};

const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x8000;
const SECTORS: u64 = 16;

struct Bench {
    mem: GuestMemoryMmap,
    dev: VirtioBlock,
    vmm: Arc<CountingInterrupt>,
    irq: Arc<Interrupt>,
    image: tempfile::NamedTempFile,
}

/// A disk of SECTORS sectors whose byte i is (i % 251), active on a 16-entry queue at 0.
fn bench_with(read_only: bool, event_idx: bool) -> Bench {
    let mut image = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..SECTORS * SECTOR_SIZE).map(|i| (i % 251) as u8).collect();
    image.write_all(&bytes).unwrap();
    let mut dev = VirtioBlock::new(image.path(), read_only, Some("mvm-disk-1".into())).unwrap();
    let mem = memory();
    let (vmm, irq) = interrupt();
    let mut queue = Driver::new(&mem, 0, 16).queue();
    queue.set_event_idx(event_idx);
    dev.activate(mem.clone(), dev.features(), vec![queue], irq.clone()).unwrap();
    Bench { mem, dev, vmm, irq, image }
}

fn bench() -> Bench {
    bench_with(false, false)
}

impl Bench {
    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.image.as_file().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    fn errors(&self) -> u64 {
        self.dev.metrics().errors.load(Ordering::Relaxed)
    }
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(|i| (i % 251) as u8).collect()
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn new_checks_the_image_and_serial() {
    let mut odd = tempfile::NamedTempFile::new().unwrap();
    odd.write_all(&[0u8; 700]).unwrap();
    let err = VirtioBlock::new(odd.path(), false, None).err().unwrap();
    assert!(matches!(err, BlockError::NotSectorMultiple { size: 700, .. }), "{err}");
    assert!(err.to_string().contains("not a multiple of 512"));
    let err = VirtioBlock::new(Path::new("/nonexistent/disk.img"), true, None).err().unwrap();
    assert!(matches!(err, BlockError::Open { .. }));
    let ok = tempfile::NamedTempFile::new().unwrap();
    let err = VirtioBlock::new(ok.path(), false, Some("x".repeat(21))).err().unwrap();
    assert!(matches!(err, BlockError::SerialTooLong { len: 21, .. }));
}

#[test]
fn config_and_features() {
    let b = bench_with(true, false);
    assert_eq!(b.dev.capacity(), SECTORS);
    let mut cap = [0u8; 8];
    b.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut word = [0u8; 4];
    b.dev.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), 254, "seg_max");
    b.dev.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512, "blk_size");
    assert_eq!(b.dev.device_type(), 2);
    assert_eq!(b.dev.queue_max_sizes(), &[256]);
    let f = b.dev.features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(bench().dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn read_spans_buffers() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_IN, 1);
    let head = d.add(&[(HDR, 16, false), (DATA, 512, true), (DATA + 0x1000, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    assert_eq!(d.used_all(), vec![(u32::from(head), 1025)]);
    let mut got = vec![0u8; 512];
    b.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern(512, 512));
    b.mem.read_slice(&mut got, GuestAddress(DATA + 0x1000)).unwrap();
    assert_eq!(got, pattern(1024, 512));
    assert_eq!(b.vmm.count(), 1);
    assert_eq!(b.irq.status(), crate::virtio::INT_USED_BUFFER);
    assert_eq!(b.dev.metrics().read_bytes.load(Ordering::Relaxed), 1024);
}

#[test]
fn header_may_be_split_across_descriptors() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_IN, 3);
    d.add(&[(HDR, 5, false), (HDR + 5, 11, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    let mut got = vec![0u8; 512];
    b.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern(3 * 512, 512));
}

#[test]
fn write_reaches_the_image() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_OUT, 2);
    b.mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    assert_eq!(d.used_all()[0].1, 1);
    assert_eq!(b.file_bytes(2 * 512, 1024), vec![0xab; 1024]);
    assert_eq!(b.file_bytes(512, 512), pattern(512, 512), "neighbours untouched");
    assert_eq!(b.file_bytes(4 * 512, 512), pattern(4 * 512, 512));
    assert_eq!(b.dev.metrics().write_bytes.load(Ordering::Relaxed), 1024);
}

#[test]
fn write_spans_buffers() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_OUT, 2);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    b.mem.write_slice(&[0xcd; 1024], GuestAddress(DATA + 0x1000)).unwrap();
    // The header's descriptor also carries the first 100 data bytes.
    b.mem.write_slice(&[0xef; 100], GuestAddress(HDR + 16)).unwrap();
    d.add(&[(HDR, 116, false), (DATA, 512, false), (DATA + 0x1000, 412, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    let mut expected = vec![0xef; 100];
    expected.extend([0xab; 512]);
    expected.extend([0xcd; 412]);
    assert_eq!(b.file_bytes(2 * 512, 1024), expected);
    assert_eq!(b.file_bytes(4 * 512, 512), pattern(4 * 512, 512), "nothing past the request");
}

#[test]
fn empty_descriptors_after_the_status_byte_are_skipped() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true), (DATA + 0x1000, 0, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    assert_eq!(d.used_all(), vec![(0, 513)]);
    let mut got = vec![0u8; 512];
    b.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern(0, 512));
}

#[test]
fn host_io_errors_keep_their_kind() {
    let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    assert_eq!(to_io(vm_memory::GuestMemoryError::IOError(denied)).kind(), std::io::ErrorKind::PermissionDenied);
    let other = to_io(vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(7)));
    assert_eq!(other.kind(), std::io::ErrorKind::Other);
}

#[test]
fn flush_and_get_id() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    assert_eq!(b.dev.metrics().flushes.load(Ordering::Relaxed), 1);

    b.header(VIRTIO_BLK_T_GET_ID, 0);
    b.mem.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    let mut id = [0u8; 20];
    b.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..10], b"mvm-disk-1");
    assert_eq!(id[10..], [0u8; 10]);
    assert_eq!(d.used_elem(1).1, 21);

    // A short buffer gets what fits.
    b.header(VIRTIO_BLK_T_GET_ID, 0);
    b.mem.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 4, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
    b.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..5], b"mvm-\xee");
    assert_eq!(d.used_elem(2).1, 5);
}

#[test]
fn write_to_read_only_disk_is_ioerr() {
    let mut b = bench_with(true, false);
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_OUT, 0);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_all()[0].1, 1);
    assert_eq!(b.file_bytes(0, 512), pattern(0, 512));
    // Reads still work.
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), OK);
}

#[test]
fn requests_past_the_end_are_ioerr() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.mem.write_slice(&[0xcd; 1024], GuestAddress(DATA)).unwrap();
    for (kind, sector, len) in [
        (VIRTIO_BLK_T_IN, SECTORS, 512),
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024),
        (VIRTIO_BLK_T_OUT, SECTORS - 1, 1024),
        (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, 512),
        (VIRTIO_BLK_T_OUT, u64::MAX, 512),
    ] {
        b.header(kind, sector);
        d.add(&[(HDR, 16, false), (DATA, len, kind == VIRTIO_BLK_T_IN), (STATUS, 1, true)]);
        b.dev.queue_notify(0);
        assert_eq!(b.status(), IOERR, "type {kind} sector {sector} len {len}");
    }
    assert_eq!(b.file_bytes((SECTORS - 1) * 512, 512), pattern((SECTORS - 1) * 512, 512));
    assert_eq!(d.used_idx(), 5);
    assert_eq!(b.errors(), 5);
}

#[test]
fn unsupported_and_misaligned_requests() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_DISCARD_, 0);
    d.add(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), UNSUPP);
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR, "length not a multiple of 512");
}

const VIRTIO_BLK_T_DISCARD_: u32 = 11;

#[test]
fn chain_without_status_is_returned_with_no_io() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_OUT, 0);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let head = d.add(&[(HDR, 16, false), (DATA, 512, false)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_all(), vec![(u32::from(head), 0)]);
    assert_eq!(b.file_bytes(0, 512), pattern(0, 512));
    assert_eq!(b.errors(), 1);
}

#[test]
fn malformed_chains_are_ioerr() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    // Header too short.
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)]);
    // Header in a device-writable buffer.
    d.add(&[(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_all(), vec![(0, 1), (3, 1)]);
    assert_eq!(b.status(), IOERR);
    assert_eq!(b.errors(), 2);
    // A write whose data follows the status byte (readable after writable).
    b.header(VIRTIO_BLK_T_OUT, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true), (DATA, 512, false)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    // A write whose data is device-writable.
    b.header(VIRTIO_BLK_T_OUT, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    // A read with device-readable data.
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(b.errors(), 5);
    assert_eq!(b.file_bytes(0, 512), pattern(0, 512), "no write reached the disk");
    let mut data = [0u8; 512];
    b.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, [0xab; 512], "no read reached guest memory");
}

#[test]
fn buffers_outside_guest_memory_are_ioerr() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_IN, 0);
    // Straddles the end of guest memory.
    d.add(&[(HDR, 16, false), (MEM_SIZE - 256, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    for addr in [0xdead_0000_0000, u64::MAX - 100] {
        b.header(VIRTIO_BLK_T_OUT, 0);
        d.add(&[(HDR, 16, false), (addr, 512, false), (STATUS, 1, true)]);
        b.dev.queue_notify(0);
        assert_eq!(b.status(), IOERR);
    }
    // The header itself outside.
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(MEM_SIZE, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    // The status byte outside: returned with length 0, and no I/O done.
    b.header(VIRTIO_BLK_T_OUT, 0);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 512, false), (MEM_SIZE + 7, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 5);
    assert_eq!(d.used_elem(4).1, 0);
    assert_eq!(b.errors(), 5);
    assert_eq!(b.file_bytes(0, 512), pattern(0, 512));
}

/// Fills the last 512 bytes of guest RAM with a marker the device must not disturb.
fn mark_end_of_ram(b: &Bench) {
    b.mem.write_slice(&[0x5a; 512], GuestAddress(MEM_SIZE - 512)).unwrap();
}

fn end_of_ram(b: &Bench) -> Vec<u8> {
    let mut got = vec![0u8; 512];
    b.mem.read_slice(&mut got, GuestAddress(MEM_SIZE - 512)).unwrap();
    got
}

#[test]
fn write_straddling_the_end_of_guest_memory_leaves_the_image_untouched() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    mark_end_of_ram(&b);
    // Half in guest RAM, half past its end: a device that wrote what it could
    // read would put those 256 bytes into the image.
    b.header(VIRTIO_BLK_T_OUT, 1);
    d.add(&[(HDR, 16, false), (MEM_SIZE - 256, 512, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_all(), vec![(0, 1)]);
    // A good first buffer followed by a straddling one: nothing of either.
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    b.header(VIRTIO_BLK_T_OUT, 1);
    d.add(&[(HDR, 16, false), (DATA, 512, false), (MEM_SIZE - 256, 512, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_elem(1), (3, 1));
    let image = b.file_bytes(0, (SECTORS * SECTOR_SIZE) as usize);
    let changed = image.iter().zip(pattern(0, image.len())).position(|(a, b)| *a != b);
    assert_eq!(changed, None, "the first byte of the image that changed");
    assert_eq!(b.dev.metrics().write_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(b.errors(), 2);
}

#[test]
fn read_straddling_the_end_of_guest_memory_leaves_guest_memory_untouched() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    mark_end_of_ram(&b);
    b.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (MEM_SIZE - 256, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_all(), vec![(0, 1)], "no data bytes written");
    b.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, true), (MEM_SIZE - 256, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_elem(1), (3, 1));
    assert_eq!(end_of_ram(&b), vec![0x5a; 512], "the part inside guest RAM was not filled");
    let mut data = vec![0u8; 512];
    b.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, vec![0xab; 512], "nor the good buffer before it");
    assert_eq!(b.dev.metrics().read_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn get_id_straddling_the_end_of_guest_memory_writes_nothing() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    mark_end_of_ram(&b);
    b.header(VIRTIO_BLK_T_GET_ID, 0);
    d.add(&[(HDR, 16, false), (MEM_SIZE - 8, 20, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.status(), IOERR);
    assert_eq!(d.used_all(), vec![(0, 1)]);
    assert_eq!(end_of_ram(&b), vec![0x5a; 512]);
}

#[test]
fn looping_chain_breaks_the_queue_without_hanging() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_IN, 0);
    let next = VRING_DESC_F_NEXT as u16;
    d.write_desc(0, HDR, 16, next, 1);
    d.write_desc(1, DATA, 512, next | 2, 0);
    d.publish(0);
    b.dev.queue_notify(0);
    assert!(b.irq.needs_reset());
    assert_eq!(b.dev.metrics().broken_queue.load(Ordering::Relaxed), 1);
    // Later requests are not looked at until a reset.
    d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 0);
    assert_eq!(b.status(), 0xff);
}

#[test]
fn next_index_past_the_table_breaks_the_queue() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    d.write_desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 16);
    d.publish(0);
    b.dev.queue_notify(0);
    assert!(b.irq.needs_reset());
}

#[test]
fn avail_index_running_ahead_breaks_the_queue() {
    let mut b = bench();
    let mem = b.mem.clone();
    let d = Driver::new(&mem, 0, 16);
    d.set_avail_idx(100);
    b.dev.queue_notify(0);
    assert!(b.irq.needs_reset());
    assert_eq!(d.used_idx(), 0);
}

#[test]
fn a_batch_takes_one_notification() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    for _ in 0..10 {
        d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 10);
    assert_eq!(b.vmm.count(), 1);
    assert_eq!(b.dev.metrics().requests.load(Ordering::Relaxed), 10);
    // The ring wraps: 30 more in batches of 10.
    for _ in 0..3 {
        for _ in 0..10 {
            d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
        }
        b.dev.queue_notify(0);
    }
    assert_eq!(d.used_idx(), 40);
    assert_eq!(b.vmm.count(), 4);
    assert!(!b.irq.needs_reset());
}

#[test]
fn event_idx_suppresses_notifications_and_publishes_avail_event() {
    let mut b = bench_with(false, true);
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    // The driver wants a notification only once used_idx passes 3.
    d.set_used_event(3);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(b.vmm.count(), 0);
    let avail_event: u16 = b.mem.read_obj(GuestAddress(d.used.0 + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 1, "the device asks to be notified of the next request");
    for _ in 0..3 {
        d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 4);
    assert_eq!(b.vmm.count(), 1);
}

#[test]
fn without_event_idx_notifications_are_reenabled() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_flags(), 0, "VRING_USED_F_NO_NOTIFY cleared after processing");
}

#[test]
fn no_interrupt_flag_suppresses_notifications() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    d.set_avail_flags(virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(b.vmm.count(), 0, "a polling driver is not woken");
    d.set_avail_flags(0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(b.vmm.count(), 1);
}

#[test]
fn reset_stops_processing() {
    let mut b = bench();
    let mem = b.mem.clone();
    let mut d = Driver::new(&mem, 0, 16);
    b.dev.reset();
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    b.dev.queue_notify(0);
    assert_eq!(d.used_idx(), 0);
    assert_eq!(b.status(), 0xff);
}
