use std::sync::Mutex;

use super::*;
use crate::virtio::test_utils::{memory, CountingInterrupt, Driver};
use crate::virtio::{INT_CONFIG_CHANGE, INT_USED_BUFFER, TYPE_BLOCK};

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FEATURE_X: u64 = 1 << 5;

#[derive(Debug, PartialEq)]
enum Event {
    Activate { acked: u64, queues: usize, sizes: Vec<u16>, event_idx: Vec<bool> },
    Notify(u16),
    Reset,
    WriteConfig(u64, Vec<u8>),
}

struct FakeDevice {
    events: Arc<Mutex<Vec<Event>>>,
    interrupt: Arc<Mutex<Option<Arc<Interrupt>>>>,
    fail_activate: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | FEATURE_X
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.events.lock().unwrap().push(Event::WriteConfig(offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VirtioError> {
        if self.fail_activate {
            return Err(VirtioError::QueueCount { expected: 3, got: queues.len() });
        }
        *self.interrupt.lock().unwrap() = Some(interrupt);
        self.events.lock().unwrap().push(Event::Activate {
            acked,
            queues: queues.len(),
            sizes: queues.iter().map(|q| q.size()).collect(),
            event_idx: queues.iter().map(|q| q.event_idx_enabled()).collect(),
        });
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.events.lock().unwrap().push(Event::Notify(index));
    }
    fn reset(&mut self) {
        self.events.lock().unwrap().push(Event::Reset);
    }
}

struct Setup {
    t: MmioTransport,
    events: Arc<Mutex<Vec<Event>>>,
    dev_irq: Arc<Mutex<Option<Arc<Interrupt>>>>,
    vmm: Arc<CountingInterrupt>,
}

fn setup_with(mem: &GuestMemoryMmap, fail_activate: bool) -> Setup {
    let events = Arc::new(Mutex::new(Vec::new()));
    let dev_irq = Arc::new(Mutex::new(None));
    let device = FakeDevice { events: events.clone(), interrupt: dev_irq.clone(), fail_activate };
    let vmm = Arc::new(CountingInterrupt::default());
    let t = MmioTransport::new(Box::new(device), mem.clone(), vmm.clone()).unwrap();
    Setup { t, events, dev_irq, vmm }
}

fn setup(mem: &GuestMemoryMmap) -> Setup {
    setup_with(mem, false)
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0xaau8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn w(t: &mut MmioTransport, offset: u64, value: u32) {
    assert_eq!(t.write(offset, &value.to_le_bytes()), None);
}

fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w(t, STATUS, ACK);
    w(t, STATUS, ACK | DRIVER);
    w(t, DRIVER_FEATURES_SEL, 0);
    w(t, DRIVER_FEATURES, features as u32);
    w(t, DRIVER_FEATURES_SEL, 1);
    w(t, DRIVER_FEATURES, (features >> 32) as u32);
    w(t, STATUS, ACK | DRIVER | FEATURES_OK);
    r(t, STATUS)
}

fn set_up_queue(t: &mut MmioTransport, index: u32, d: &Driver) {
    w(t, QUEUE_SEL, index);
    w(t, QUEUE_NUM, u32::from(d.size));
    for (low, addr) in [(QUEUE_DESC_LOW, d.desc), (QUEUE_DRIVER_LOW, d.avail), (QUEUE_DEVICE_LOW, d.used)] {
        w(t, low, addr.0 as u32);
        w(t, low + 4, (addr.0 >> 32) as u32);
    }
    w(t, QUEUE_READY, 1);
}

/// Negotiates `features`, sets up both queues and sets DRIVER_OK.
fn bring_up(t: &mut MmioTransport, mem: &GuestMemoryMmap, features: u64) {
    assert_eq!(negotiate(t, features), ACK | DRIVER | FEATURES_OK);
    set_up_queue(t, 0, &Driver::new(mem, 0x1000, 16));
    set_up_queue(t, 1, &Driver::new(mem, 0x2000, 8));
    w(t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

#[test]
fn identification_registers() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    assert_eq!(r(&mut t, MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, VERSION), 2);
    assert_eq!(r(&mut t, DEVICE_ID), TYPE_BLOCK);
    assert_eq!(r(&mut t, VENDOR), VENDOR_ID);
    let features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | FEATURE_X;
    w(&mut t, DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, DEVICE_FEATURES), features as u32);
    w(&mut t, DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, DEVICE_FEATURES), (features >> 32) as u32);
    w(&mut t, DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, DEVICE_FEATURES), 0);
    w(&mut t, QUEUE_SEL, 1);
    assert_eq!(r(&mut t, QUEUE_NUM_MAX), 8);
    w(&mut t, QUEUE_SEL, 2);
    assert_eq!(r(&mut t, QUEUE_NUM_MAX), 0, "no such queue");
    assert_eq!(r(&mut t, CONFIG_GENERATION), 0);
    assert_eq!(r(&mut t, STATUS), 0);
}

#[test]
fn register_accesses_must_be_32_bit_and_aligned() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    let mut two = [0xaau8; 2];
    t.read(MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0xaau8; 4];
    t.read(MAGIC + 2, &mut four);
    assert_eq!(four, [0; 4]);
    t.write(STATUS, &[ACK as u8]);
    assert_eq!(r(&mut t, STATUS), 0, "a byte write to Status is ignored");
    t.write(STATUS + 1, &ACK.to_le_bytes());
    assert_eq!(r(&mut t, STATUS), 0);
    assert!(t.metrics().guest_errors.load(Ordering::Relaxed) >= 4);
}

#[test]
fn config_space_takes_any_width() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    let mut byte = [0u8; 1];
    t.read(CONFIG + 3, &mut byte);
    assert_eq!(byte, [0x13]);
    let mut eight = [0u8; 8];
    t.read(CONFIG + 4, &mut eight);
    assert_eq!(eight, [0x14, 0x15, 0x16, 0x17, 0, 0, 0, 0]);
    t.read(MMIO_LEN - 4, &mut eight[..4]);
    assert_eq!(eight[..4], [0; 4]);
    t.write(CONFIG + 1, &[9, 9]);
    assert_eq!(*events.lock().unwrap(), vec![Event::WriteConfig(1, vec![9, 9])]);
}

#[test]
fn negotiation_activates_with_the_acked_features_and_queues() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    let acked = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    assert_eq!(negotiate(&mut t, acked), ACK | DRIVER | FEATURES_OK);
    set_up_queue(&mut t, 0, &Driver::new(&mem, 0x1000, 16));
    set_up_queue(&mut t, 1, &Driver::new(&mem, 0x2000, 4));
    w(&mut t, QUEUE_SEL, 1);
    assert_eq!(r(&mut t, QUEUE_READY), 1);
    assert!(events.lock().unwrap().is_empty());
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_active());
    assert_eq!(
        *events.lock().unwrap(),
        vec![Event::Activate { acked, queues: 2, sizes: vec![16, 4], event_idx: vec![true, true] }]
    );
    // Queue setup is frozen once running.
    w(&mut t, QUEUE_SEL, 0);
    w(&mut t, QUEUE_NUM, 2);
    w(&mut t, QUEUE_READY, 0);
    assert_eq!(r(&mut t, QUEUE_READY), 1);
    assert_eq!(t.metrics().activations.load(Ordering::Relaxed), 1);
}

#[test]
fn unoffered_features_are_refused() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 7));
    assert_eq!(status & FEATURES_OK, 0, "bit 7 was never offered");
    w(&mut t, STATUS, status | FEATURES_OK | DRIVER_OK);
    assert_eq!(r(&mut t, STATUS) & (FEATURES_OK | DRIVER_OK), 0);
    assert!(events.lock().unwrap().is_empty());
    // Features past bit 63 are not offered either.
    w(&mut t, STATUS, 0);
    w(&mut t, STATUS, ACK | DRIVER);
    w(&mut t, DRIVER_FEATURES_SEL, 1);
    w(&mut t, DRIVER_FEATURES, 1);
    w(&mut t, DRIVER_FEATURES_SEL, 2);
    w(&mut t, DRIVER_FEATURES, 1);
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t, STATUS) & FEATURES_OK, 0);
}

#[test]
fn version_1_is_required() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    assert_eq!(negotiate(&mut t, FEATURE_X) & FEATURES_OK, 0);
    // A driver that skips ACKNOWLEDGE/DRIVER does not get FEATURES_OK either.
    w(&mut t, STATUS, 0);
    w(&mut t, STATUS, FEATURES_OK);
    assert_eq!(r(&mut t, STATUS) & FEATURES_OK, 0);
}

#[test]
fn feature_writes_after_features_ok_are_ignored() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, DRIVER_FEATURES_SEL, 0);
    w(&mut t, DRIVER_FEATURES, FEATURE_X as u32);
    set_up_queue(&mut t, 0, &Driver::new(&mem, 0x1000, 16));
    set_up_queue(&mut t, 1, &Driver::new(&mem, 0x2000, 8));
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    let acked = match &events.lock().unwrap()[0] {
        Event::Activate { acked, .. } => *acked,
        other => panic!("{other:?}"),
    };
    assert_eq!(acked, VIRTIO_F_VERSION_1);
}

#[test]
fn status_bits_cannot_be_cleared_except_by_reset() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    w(&mut t, STATUS, ACK | DRIVER);
    w(&mut t, STATUS, ACK);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER);
    w(&mut t, STATUS, ACK | DRIVER | DRIVER_OK);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER, "DRIVER_OK needs FEATURES_OK");
}

#[test]
fn queue_setup_needs_features_ok_and_valid_sizes() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    w(&mut t, QUEUE_SEL, 0);
    w(&mut t, QUEUE_READY, 1);
    assert_eq!(r(&mut t, QUEUE_READY), 0, "before FEATURES_OK");
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, QUEUE_SEL, 0);
    for bad in [0, 3, 32, 0x1_0000] {
        w(&mut t, QUEUE_NUM, bad);
    }
    w(&mut t, QUEUE_SEL, 7);
    w(&mut t, QUEUE_READY, 1);
    w(&mut t, QUEUE_NUM, 4);
    assert_eq!(r(&mut t, QUEUE_READY), 0);
    assert!(t.metrics().guest_errors.load(Ordering::Relaxed) >= 6);
}

#[test]
fn invalid_queue_at_driver_ok_sets_needs_reset() {
    let mem = memory();
    let Setup { mut t, events, vmm, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 0, &Driver::new(&mem, 0x1000, 16));
    // Queue 1 has its used ring past the end of guest memory.
    w(&mut t, QUEUE_SEL, 1);
    w(&mut t, QUEUE_DESC_LOW, 0x2000);
    w(&mut t, QUEUE_DRIVER_LOW, 0x3000);
    w(&mut t, QUEUE_DEVICE_LOW, 0xf_fff0);
    w(&mut t, QUEUE_READY, 1);
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r(&mut t, STATUS) & NEEDS_RESET, NEEDS_RESET);
    assert!(!t.is_active());
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(r(&mut t, INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(vmm.count(), 1);
    w(&mut t, QUEUE_NOTIFY, 0);
    assert!(events.lock().unwrap().is_empty());
    // A reset clears it.
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, STATUS), 0);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
}

#[test]
fn refused_queue_setup_fails_driver_ok_until_reset() {
    let mem = memory();
    for (reg, bad) in [(QUEUE_DESC_LOW, 0x1008), (QUEUE_DRIVER_LOW, 0x2001), (QUEUE_DEVICE_LOW, 0x3002), (QUEUE_NUM, 3)]
    {
        let Setup { mut t, events, .. } = setup(&mem);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, reg, bad);
        // Good values afterwards do not make up for it.
        set_up_queue(&mut t, 0, &Driver::new(&mem, 0x1000, 16));
        set_up_queue(&mut t, 1, &Driver::new(&mem, 0x2000, 8));
        w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0, "register {reg:#x} value {bad:#x}");
        assert!(events.lock().unwrap().is_empty());
        w(&mut t, STATUS, 0);
        bring_up(&mut t, &mem, VIRTIO_F_VERSION_1);
        assert!(t.is_active());
    }
}

#[test]
fn unready_queue_at_driver_ok_sets_needs_reset() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 0, &Driver::new(&mem, 0x1000, 16));
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
}

#[test]
fn activation_failure_sets_needs_reset() {
    let mem = memory();
    let Setup { mut t, .. } = setup_with(&mem, true);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1);
    assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
    assert!(!t.is_active());
}

#[test]
fn notifications_reach_the_device_only_when_running() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    w(&mut t, QUEUE_NOTIFY, 0);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1);
    w(&mut t, QUEUE_NOTIFY, 1);
    w(&mut t, QUEUE_NOTIFY, 2);
    w(&mut t, QUEUE_NOTIFY, 0x1_0000);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], Event::Notify(1));
    assert_eq!(t.metrics().notifications.load(Ordering::Relaxed), 1);
}

#[test]
fn interrupt_status_and_ack() {
    let mem = memory();
    let Setup { mut t, dev_irq, vmm, .. } = setup(&mem);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1);
    let irq = dev_irq.lock().unwrap().clone().unwrap();
    irq.signal_used();
    assert_eq!(vmm.count(), 1);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), INT_USED_BUFFER);
    w(&mut t, INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
    // The device may also ask for a reset from its own thread.
    irq.signal_needs_reset();
    assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), INT_CONFIG_CHANGE);
}

#[test]
fn reset_stops_the_device_and_allows_a_new_negotiation() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, STATUS), 0);
    assert!(!t.is_active());
    w(&mut t, QUEUE_SEL, 0);
    assert_eq!(r(&mut t, QUEUE_READY), 0);
    w(&mut t, QUEUE_NOTIFY, 0);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[1], Event::Reset);
    assert_eq!(
        events[2],
        Event::Activate { acked: VIRTIO_F_VERSION_1, queues: 2, sizes: vec![16, 8], event_idx: vec![false, false] }
    );
}

#[test]
fn reset_before_activation_does_not_reset_the_device() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, STATUS, 0);
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(r(&mut t, STATUS), 0);
}

#[test]
fn arbitrary_register_traffic_never_panics() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    // A cheap deterministic generator: every register, assorted values and widths.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x >> 8) % MMIO_LEN;
        let offset = if x & 1 == 0 { offset & !3 & 0xff } else { offset };
        let width = [1usize, 2, 4, 8][(x >> 40) as usize % 4];
        let value = (x >> 20).to_le_bytes();
        if x & 2 == 0 {
            t.write(offset, &value[..width]);
        } else {
            let mut data = [0u8; 8];
            t.read(offset, &mut data[..width]);
        }
    }
}
