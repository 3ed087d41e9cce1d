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
    t.write(CONFIG + 6, &[8]);
    assert_eq!(*events.lock().unwrap(), vec![Event::WriteConfig(1, vec![9, 9]), Event::WriteConfig(6, vec![8])]);
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
fn a_correct_driver_causes_no_guest_errors() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    w(&mut t, QUEUE_NOTIFY, 0);
    w(&mut t, INTERRUPT_ACK, INT_USED_BUFFER);
    w(&mut t, STATUS, 0);
    assert!(t.metrics().activations.load(Ordering::Relaxed) == 1);
    assert_eq!(t.metrics().guest_errors.load(Ordering::Relaxed), 0);
    // A notification before DRIVER_OK is one.
    w(&mut t, QUEUE_NOTIFY, 0);
    assert_eq!(t.metrics().guest_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn queue_addresses_take_both_halves() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, QUEUE_SEL, 1);
    for (low, value) in [(QUEUE_DESC_LOW, 0x1000), (QUEUE_DRIVER_LOW, 0x2000), (QUEUE_DEVICE_LOW, 0x3000)] {
        w(&mut t, low, value);
        w(&mut t, low + 4, value >> 12);
    }
    // A later low half keeps the high half, and the other way round.
    w(&mut t, QUEUE_DESC_LOW, 0x4000);
    w(&mut t, QUEUE_DRIVER_HIGH, 7);
    let q = &t.queues[1];
    assert_eq!(q.desc_table(), 0x1_0000_4000);
    assert_eq!(q.avail_ring(), 0x7_0000_2000);
    assert_eq!(q.used_ring(), 0x3_0000_3000);
    assert_eq!(t.queues[0].desc_table(), 0, "queue 0 untouched");
}

#[test]
fn rings_that_end_at_the_end_of_guest_memory_are_usable() {
    let mem = memory();
    let Setup { mut t, events, .. } = setup(&mem);
    let end = crate::virtio::test_utils::MEM_SIZE;
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    // Queue 0 (16 entries): the available ring's last byte is the last of RAM.
    // Queue 1 (8 entries): the used ring ends 2 bytes before (it must be 4-aligned).
    for (sel, size, desc, avail, used) in
        [(0, 16, 0x1000, end - (6 + 2 * 16), 0x2000), (1, 8, end - 16 * 8, 0x3000, end - (6 + 8 * 8) - 2)]
    {
        w(&mut t, QUEUE_SEL, sel);
        w(&mut t, QUEUE_NUM, size);
        w(&mut t, QUEUE_DESC_LOW, desc as u32);
        w(&mut t, QUEUE_DRIVER_LOW, avail as u32);
        w(&mut t, QUEUE_DEVICE_LOW, used as u32);
        w(&mut t, QUEUE_READY, 1);
    }
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_active(), "status {:#x}", r(&mut t, STATUS));
    assert_eq!(events.lock().unwrap().len(), 1);
}

#[test]
fn queue_ready_zero_on_an_unready_queue_is_quietly_accepted() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    let errors = |t: &MmioTransport| t.metrics().guest_errors.load(Ordering::Relaxed);
    // Linux writes 0 to QueueReady of every queue it tears down after a reset.
    w(&mut t, QUEUE_SEL, 1);
    w(&mut t, QUEUE_READY, 0);
    assert_eq!(errors(&t), 0);
    w(&mut t, QUEUE_READY, 1);
    assert_eq!(errors(&t), 1, "before FEATURES_OK a queue cannot be made ready");
    assert_eq!(r(&mut t, QUEUE_READY), 0);
    // A ready queue's setup is frozen: taking it back is refused too.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 1, &Driver::new(&mem, 0x2000, 8));
    assert_eq!(r(&mut t, QUEUE_READY), 1);
    assert_eq!(errors(&t), 1);
    w(&mut t, QUEUE_READY, 0);
    assert_eq!(r(&mut t, QUEUE_READY), 1);
    assert_eq!(errors(&t), 2);
}

#[test]
fn needs_reset_shows_in_status_whatever_the_driver_wrote() {
    let mem = memory();
    let Setup { mut t, .. } = setup(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    // A driver that writes the NEEDS_RESET bit itself, then fails DRIVER_OK.
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | NEEDS_RESET);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER | FEATURES_OK | NEEDS_RESET);
    w(&mut t, STATUS, ACK | DRIVER | FEATURES_OK | NEEDS_RESET | DRIVER_OK);
    assert!(t.interrupt.needs_reset());
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER | FEATURES_OK | NEEDS_RESET | DRIVER_OK);
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

/// What a driver or the device can observe of the transport, and what
/// decides what they will observe next.
#[derive(Debug, Clone, PartialEq)]
struct State {
    status: u32,
    needs_reset: bool,
    interrupt: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    driver_features_beyond_64: bool,
    queue_sel: u32,
    active: bool,
    queue_refused: Vec<bool>,
    queues: Vec<QueueState>,
}

#[derive(Debug, Clone, PartialEq)]
struct QueueState {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
}

fn state(t: &MmioTransport) -> State {
    State {
        status: t.status,
        needs_reset: t.interrupt.needs_reset(),
        interrupt: t.interrupt.status(),
        device_features_sel: t.device_features_sel,
        driver_features_sel: t.driver_features_sel,
        driver_features: t.driver_features,
        driver_features_beyond_64: t.driver_features_beyond_64,
        queue_sel: t.queue_sel,
        active: t.is_active(),
        queue_refused: t.queue_refused.clone(),
        queues: t
            .queues
            .iter()
            .map(|q| QueueState {
                max_size: q.max_size(),
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                event_idx: q.event_idx_enabled(),
            })
            .collect(),
    }
}

const OFFERED: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | FEATURE_X;
const FAKE_CONFIG: [u8; 8] = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17];
const QUEUE_REGISTERS: [u64; 8] = [
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
];

/// What a register read must return in state `s`, worked out from the spec
/// rather than from the transport's code.
fn expected_register(s: &State, offset: u64) -> u32 {
    let queue = s.queues.get(s.queue_sel as usize);
    match offset {
        MAGIC => 0x7472_6976,
        VERSION => 2,
        DEVICE_ID => TYPE_BLOCK,
        VENDOR => VENDOR_ID,
        DEVICE_FEATURES if s.device_features_sel == 0 => OFFERED as u32,
        DEVICE_FEATURES if s.device_features_sel == 1 => (OFFERED >> 32) as u32,
        QUEUE_NUM_MAX => [16, 8].get(s.queue_sel as usize).copied().unwrap_or(0),
        QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
        INTERRUPT_STATUS => s.interrupt,
        STATUS if s.needs_reset => s.status | NEEDS_RESET,
        STATUS => s.status,
        // Write-only, reserved or unknown registers, CONFIG_GENERATION and
        // feature words past 63 read as zero.
        _ => 0,
    }
}

/// The rules every state must follow, whatever the driver did.
fn check_state(s: &State, what: &str) {
    if s.status & FEATURES_OK != 0 {
        assert_eq!(s.status & (ACK | DRIVER), ACK | DRIVER, "{what}: FEATURES_OK without ACKNOWLEDGE|DRIVER: {s:?}");
        assert_eq!(s.driver_features & !OFFERED, 0, "{what}: FEATURES_OK with unoffered features: {s:?}");
        assert!(!s.driver_features_beyond_64, "{what}: FEATURES_OK with features past bit 63: {s:?}");
        assert_ne!(s.driver_features & VIRTIO_F_VERSION_1, 0, "{what}: FEATURES_OK without VERSION_1: {s:?}");
    }
    if s.status & DRIVER_OK != 0 {
        assert_ne!(s.status & FEATURES_OK, 0, "{what}: DRIVER_OK without FEATURES_OK: {s:?}");
    }
    if s.active {
        assert_ne!(s.status & DRIVER_OK, 0, "{what}: active without DRIVER_OK: {s:?}");
        assert!(!s.needs_reset, "{what}: active and needing a reset: {s:?}");
        assert!(s.queues.iter().all(|q| q.ready), "{what}: active with a queue not ready: {s:?}");
    }
    assert_eq!(s.interrupt & !(INT_USED_BUFFER | INT_CONFIG_CHANGE), 0, "{what}: unknown interrupt bits: {s:?}");
}

/// Checks what one write did: `before` and `after` the write of `data` at
/// `offset`, `initial` a fresh transport's state, `notified` the queues the
/// device was told about.
fn check_write(before: &State, after: &State, initial: &State, offset: u64, data: &[u8], notified: &[u16]) {
    let what = format!("write {data:02x?} at {offset:#x}");
    check_state(after, &what);
    let register = offset < CONFIG && offset & 3 == 0 && data.len() == 4;
    let value = if register { u32::from_le_bytes(data.try_into().unwrap()) } else { 0 };
    let writable = [DEVICE_FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL, QUEUE_SEL, QUEUE_NOTIFY, INTERRUPT_ACK];
    if !register || !(writable.contains(&offset) || QUEUE_REGISTERS.contains(&offset) || offset == STATUS) {
        // Config space, odd widths, read-only and unknown registers: nothing moves.
        assert_eq!(after, before, "{what}");
        assert!(notified.is_empty(), "{what}");
        return;
    }
    // Registers that only store what the driver wrote.
    let mut expected = before.clone();
    match offset {
        DEVICE_FEATURES_SEL => expected.device_features_sel = value,
        DRIVER_FEATURES_SEL => expected.driver_features_sel = value,
        QUEUE_SEL => expected.queue_sel = value,
        INTERRUPT_ACK => expected.interrupt &= !value,
        DRIVER_FEATURES if before.status & (DRIVER | FEATURES_OK) == DRIVER => match before.driver_features_sel {
            0 => expected.driver_features = (before.driver_features & !0xffff_ffff) | u64::from(value),
            1 => expected.driver_features = (before.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => expected.driver_features_beyond_64 |= value != 0,
        },
        _ => {}
    }
    if writable.contains(&offset) {
        assert_eq!(after, &expected, "{what}");
    } else if offset != STATUS {
        // Queue registers touch the queues and nothing else.
        expected.queues = after.queues.clone();
        expected.queue_refused = after.queue_refused.clone();
        assert_eq!(after, &expected, "{what}");
        for (b, a) in before.queue_refused.iter().zip(&after.queue_refused) {
            assert!(a | !b, "{what}: a refused queue setup was forgotten before a reset");
        }
    }
    if offset == STATUS && value == 0 {
        assert_eq!(after, initial, "{what}: a reset returns every register to its initial value");
        return;
    }
    if offset == STATUS {
        if before.status & !value != 0 {
            assert_eq!(after, before, "{what}: only a reset may clear Status bits");
        } else {
            assert_eq!(after.status & !value, 0, "{what}: Status gained bits the driver did not write: {after:?}");
            assert_eq!(after.status & before.status, before.status, "{what}: Status lost bits: {after:?}");
        }
    } else {
        assert_eq!(after.status, before.status, "{what}: only a Status write moves Status");
        assert_eq!(after.active, before.active, "{what}");
    }
    if before.status & FEATURES_OK != 0 || offset != DRIVER_FEATURES {
        assert_eq!(after.driver_features, before.driver_features, "{what}: driver features changed");
    }
    if before.active {
        assert_eq!(after.queues, before.queues, "{what}: queue registers changed while the device runs");
        assert_eq!(after.queue_refused, before.queue_refused, "{what}");
    }
    let activated = !before.active && after.active;
    if after.queues != before.queues && !activated {
        let sel = before.queue_sel as usize;
        assert!(QUEUE_REGISTERS.contains(&offset), "{what}: queues changed: {before:?} -> {after:?}");
        assert_eq!(before.status & (FEATURES_OK | DRIVER_OK), FEATURES_OK, "{what}: queue set up outside FEATURES_OK");
        assert!(!before.queues[sel].ready || offset == QUEUE_READY, "{what}: a ready queue was changed");
        for (i, (b, a)) in before.queues.iter().zip(&after.queues).enumerate() {
            assert!(i == sel || a == b, "{what}: queue {i} changed, queue {sel} selected");
        }
    }
    if offset == QUEUE_NOTIFY && before.active && !before.needs_reset && value < 2 {
        assert_eq!(notified, [value as u16], "{what}");
    } else {
        assert!(notified.is_empty(), "{what}: notified {notified:?} in {before:?}");
    }
}

fn check_read(s: &State, offset: u64, data: &[u8]) {
    let expected: Vec<u8> = if offset >= CONFIG {
        (0..data.len() as u64).map(|i| FAKE_CONFIG.get((offset - CONFIG + i) as usize).copied().unwrap_or(0)).collect()
    } else if offset & 3 != 0 || data.len() != 4 {
        vec![0; data.len()]
    } else {
        expected_register(s, offset).to_le_bytes().to_vec()
    };
    assert_eq!(data, expected, "read of {} bytes at {offset:#x} in {s:?}", data.len());
}

/// A value a driver might write to `offset`, good or bad, so that random
/// traffic also walks through negotiation and queue setup.
fn plausible_value(s: &State, offset: u64, x: u64, rings: &[Driver; 2]) -> u32 {
    let random = (x >> 20) as u32;
    let ring = &rings[s.queue_sel as usize % 2];
    let choices: Vec<u32> = match offset {
        STATUS => {
            let next = [ACK, DRIVER, FEATURES_OK, DRIVER_OK, NEEDS_RESET, 128][(x >> 33) as usize % 6];
            vec![0, s.status | next, s.status | next, s.status & !next]
        }
        DRIVER_FEATURES => vec![1, 1 << 29, FEATURE_X as u32, (1 << 29) | FEATURE_X as u32],
        DEVICE_FEATURES_SEL | DRIVER_FEATURES_SEL | QUEUE_SEL | QUEUE_NOTIFY => vec![0, 1, 2],
        QUEUE_NUM => vec![u32::from(ring.size), 4, 3],
        QUEUE_READY => vec![0, 1, 2],
        QUEUE_DESC_LOW => vec![ring.desc.0 as u32, 0x0f_fff0],
        QUEUE_DRIVER_LOW => vec![ring.avail.0 as u32, 0x3001],
        QUEUE_DEVICE_LOW => vec![ring.used.0 as u32, 0x0f_fff0],
        QUEUE_DESC_HIGH | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_HIGH => vec![0, 0, 1],
        INTERRUPT_ACK => vec![INT_USED_BUFFER, INT_CONFIG_CHANGE],
        _ => vec![],
    };
    if choices.is_empty() || x & 0x30 == 0 {
        random
    } else {
        choices[(x >> 40) as usize % choices.len()]
    }
}

#[test]
fn arbitrary_register_traffic_keeps_the_transports_invariants() {
    let mem = memory();
    let Setup { mut t, events, dev_irq, .. } = setup(&mem);
    let initial = state(&t);
    check_state(&initial, "initial");
    let rings = [Driver::new(&mem, 0x1000, 16), Driver::new(&mem, 0x2000, 8)];
    let mut seen = std::collections::HashSet::new();
    // A cheap deterministic generator: every register, assorted values and widths.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for step in 0..40_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Now and then a driver that does everything right up to some point,
        // so that the traffic meets the device in every stage of its life.
        if step % 1000 == 0 {
            w(&mut t, STATUS, 0);
            match step / 1000 % 4 {
                0 => {}
                1 => w(&mut t, STATUS, ACK | DRIVER),
                2 => assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1), ACK | DRIVER | FEATURES_OK),
                _ => {
                    bring_up(&mut t, &mem, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
                    assert!(t.is_active());
                }
            }
        }
        // The device may signal at any time, from its own thread.
        if (x >> 50) & 0x3f == 0 {
            if let Some(irq) = dev_irq.lock().unwrap().as_ref() {
                irq.signal_used();
            }
        }
        let offset = match x % 4 {
            0 => (x >> 8) % MMIO_LEN,
            1 => CONFIG + (x >> 8) % 16,
            _ => ((x >> 8) % CONFIG) & !3,
        };
        let width = if x % 4 == 2 { 4 } else { [1usize, 2, 4, 8][(x >> 44) as usize % 4] };
        let before = state(&t);
        let events_before = events.lock().unwrap().len();
        if x & 0x100 == 0 {
            let value = plausible_value(&before, offset, x, &rings);
            let mut data = (x >> 20).to_le_bytes();
            data[..4].copy_from_slice(&value.to_le_bytes());
            t.write(offset, &data[..width]);
            let after = state(&t);
            let notified: Vec<u16> = events.lock().unwrap()[events_before..]
                .iter()
                .filter_map(|e| match e {
                    Event::Notify(i) => Some(*i),
                    _ => None,
                })
                .collect();
            check_write(&before, &after, &initial, offset, &data[..width], &notified);
            seen.insert((after.status & !NEEDS_RESET, after.active));
        } else {
            let mut data = [0xa5u8; 8];
            t.read(offset, &mut data[..width]);
            check_read(&before, offset, &data[..width]);
            assert_eq!(state(&t), before, "a read of {offset:#x} changed the transport");
        }
    }
    // The traffic reached the states whose rules are checked above.
    for wanted in [(0, false), (ACK | DRIVER, false), (ACK | DRIVER | FEATURES_OK, false)] {
        assert!(seen.contains(&wanted), "never in {wanted:?}: {seen:?}");
    }
    assert!(seen.contains(&(ACK | DRIVER | FEATURES_OK | DRIVER_OK, true)));
}
