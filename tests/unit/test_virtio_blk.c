/*
 * virtio-blk end to end without a CPU: the test plays the guest driver. It
 * finds the device in PCI config space, walks the virtio capabilities,
 * negotiates features, sets up a queue in guest memory, rings the doorbell
 * through the MMIO bus and checks what the device did to a temporary raw
 * image: read, write, flush, discard, write-zeroes, GET_ID, read-only
 * refusal, out-of-range requests, a malicious chain (NEEDS_RESET), reset,
 * pause/resume and save/restore.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hw/pci.h"
#include "test_pci_vm.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define DISK_SIZE (1u << 20)
#define QSZ 16
#define DESC 0x10000
#define AVAIL 0x11000
#define USED 0x12000
#define HDR 0x20000
#define DATA 0x30000
#define STATUS 0x50000

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WZ 13

#define MSI_ADDR 0xfee00000u

struct fix {
	struct vm vm;
	char path[64];
	int fd;
	unsigned slot;
	uint64_t common, notify, isr, devcfg;
	uint32_t notify_mult;
	uint16_t avail_idx, used_seen;
};

/* ---- Guest-side accessors ---- */

static void mw(struct fix *f, uint64_t a, uint64_t v, unsigned size)
{
	bus_write(&f->vm.mmio, a, &v, size);
}

static uint64_t mr(struct fix *f, uint64_t a, unsigned size)
{
	uint64_t v = 0;

	bus_read(&f->vm.mmio, a, &v, size);
	return v;
}

static uint32_t cr(struct fix *f, unsigned off, unsigned size)
{
	return pci_cfg_read(&f->vm, f->slot << 3, off, size);
}

static void gw(struct fix *f, uint64_t gpa, const void *p, size_t n)
{
	assert_int_equal(gm_write(&f->vm.mem, gpa, p, n), 0);
}

static uint16_t used_idx(struct fix *f)
{
	uint16_t v;

	assert_int_equal(gm_read(&f->vm.mem, USED + 2, &v, 2), 0);
	return __atomic_load_n(&v, __ATOMIC_ACQUIRE);
}

/* ---- Discovery and driver init ---- */

static void find_device(struct fix *f, uint16_t device_id)
{
	for (unsigned s = 0; s < PCI_MAX_DEVS; s++) {
		if (pci_cfg_read(&f->vm, s << 3, 0, 4) == ((uint32_t)device_id << 16 | 0x1af4)) {
			f->slot = s;
			return;
		}
	}
	fail_msg("virtio device %#x not found", device_id);
}

static void walk_caps(struct fix *f)
{
	uint64_t bar0 = cr(f, PCI_BAR0, 4) & ~0xfull;
	unsigned off = cr(f, PCI_CAPABILITY_LIST, 1), n = 0;

	while (off && n++ < 48) {
		if (cr(f, off, 1) == PCI_CAP_ID_VNDR) {
			unsigned type = cr(f, off + 3, 1);
			uint64_t a = bar0 + cr(f, off + 8, 4);

			assert_int_equal(cr(f, off + 4, 1), 0); /* BAR 0 */
			if (type == VIRTIO_PCI_CAP_COMMON_CFG)
				f->common = a;
			else if (type == VIRTIO_PCI_CAP_NOTIFY_CFG) {
				f->notify = a;
				f->notify_mult = cr(f, off + 16, 4);
			} else if (type == VIRTIO_PCI_CAP_ISR_CFG)
				f->isr = a;
			else if (type == VIRTIO_PCI_CAP_DEVICE_CFG)
				f->devcfg = a;
		}
		off = cr(f, off + 1, 1);
	}
	assert_true(f->common && f->notify && f->isr && f->devcfg);
}

static void msix_setup(struct fix *f)
{
	uint64_t bar2 = cr(f, PCI_BAR0 + 8, 4) & ~0xfull;
	unsigned cap = cr(f, PCI_CAPABILITY_LIST, 1);

	while (cap && cr(f, cap, 1) != PCI_CAP_ID_MSIX)
		cap = cr(f, cap + 1, 1);
	assert_true(cap);
	for (unsigned v = 0; v < 2; v++) {
		mw(f, bar2 + 16 * v, MSI_ADDR, 4);
		mw(f, bar2 + 16 * v + 4, 0, 4);
		mw(f, bar2 + 16 * v + 8, 0x30 + v, 4);
		mw(f, bar2 + 16 * v + 12, 0, 4);
	}
	pci_cfg_write(&f->vm, f->slot << 3, cap + 2, 2, PCI_MSIX_FLAGS_ENABLE);
}

static uint64_t device_features(struct fix *f)
{
	mw(f, f->common + VIRTIO_PCI_COMMON_DFSELECT, 0, 4);
	uint64_t lo = mr(f, f->common + VIRTIO_PCI_COMMON_DF, 4);
	mw(f, f->common + VIRTIO_PCI_COMMON_DFSELECT, 1, 4);
	return mr(f, f->common + VIRTIO_PCI_COMMON_DF, 4) << 32 | lo;
}

static uint8_t status(struct fix *f)
{
	return (uint8_t)mr(f, f->common + VIRTIO_PCI_COMMON_STATUS, 1);
}

static void set_status(struct fix *f, uint8_t s)
{
	mw(f, f->common + VIRTIO_PCI_COMMON_STATUS, s, 1);
}

static void write_features(struct fix *f, uint64_t feat)
{
	mw(f, f->common + VIRTIO_PCI_COMMON_GFSELECT, 0, 4);
	mw(f, f->common + VIRTIO_PCI_COMMON_GF, (uint32_t)feat, 4);
	mw(f, f->common + VIRTIO_PCI_COMMON_GFSELECT, 1, 4);
	mw(f, f->common + VIRTIO_PCI_COMMON_GF, feat >> 32, 4);
}

/* The driver initialisation sequence of virtio 1.x section 3.1.1. */
static void driver_init(struct fix *f, uint64_t drop_features)
{
	uint64_t c = f->common;
	uint8_t s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
	uint8_t zero[0x3000] = {0};

	set_status(f, 0);
	assert_int_equal(status(f), 0);
	gw(f, DESC, zero, sizeof(zero)); /* fresh rings */
	f->avail_idx = f->used_seen = 0;
	set_status(f, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	set_status(f, s);
	write_features(f, device_features(f) & ~drop_features);
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK);
	assert_true(status(f) & VIRTIO_CONFIG_S_FEATURES_OK);
	mw(f, c + VIRTIO_PCI_COMMON_MSIX, 0, 2);
	assert_int_equal(mr(f, c + VIRTIO_PCI_COMMON_MSIX, 2), 0);
	mw(f, c + VIRTIO_PCI_COMMON_Q_SELECT, 0, 2);
	assert_int_equal(mr(f, c + VIRTIO_PCI_COMMON_Q_SIZE, 2), 256);
	mw(f, c + VIRTIO_PCI_COMMON_Q_SIZE, QSZ, 2);
	mw(f, c + VIRTIO_PCI_COMMON_Q_DESCLO, DESC, 4);
	mw(f, c + VIRTIO_PCI_COMMON_Q_DESCHI, 0, 4);
	mw(f, c + VIRTIO_PCI_COMMON_Q_AVAILLO, AVAIL, 4);
	mw(f, c + VIRTIO_PCI_COMMON_Q_AVAILHI, 0, 4);
	mw(f, c + VIRTIO_PCI_COMMON_Q_USEDLO, USED, 8);
	mw(f, c + VIRTIO_PCI_COMMON_Q_MSIX, 1, 2);
	assert_int_equal(mr(f, c + VIRTIO_PCI_COMMON_Q_MSIX, 2), 1);
	mw(f, c + VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2);
	assert_int_equal(mr(f, c + VIRTIO_PCI_COMMON_Q_ENABLE, 2), 1);
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
	assert_int_equal(status(f), s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
}

static int fix_setup(void **state, bool readonly)
{
	struct fix *f = calloc(1, sizeof(*f));
	uint8_t sec[512];

	if (!f)
		return -1;
	snprintf(f->path, sizeof(f->path), "/tmp/tern-vblk-XXXXXX");
	f->fd = mkstemp(f->path);
	if (f->fd < 0 || ftruncate(f->fd, DISK_SIZE))
		return -1;
	/* Sector n is filled with the byte n. */
	for (unsigned n = 0; n < DISK_SIZE / 512; n++) {
		memset(sec, (int)n, sizeof(sec));
		if (pwrite(f->fd, sec, sizeof(sec), n * 512) != sizeof(sec))
			return -1;
	}
	if (test_vm_create(&f->vm, 16 << 20) || pci_init(&f->vm) ||
	    virtio_blk_add(&f->vm, f->path, readonly))
		return -1;
	find_device(f, 0x1042);
	walk_caps(f);
	pci_cfg_write(&f->vm, f->slot << 3, PCI_COMMAND, 2,
		      PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	msix_setup(f);
	driver_init(f, 0);
	*state = f;
	return 0;
}

static int setup_rw(void **state)
{
	return fix_setup(state, false);
}

static int setup_ro(void **state)
{
	return fix_setup(state, true);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	vm_destroy(&f->vm);
	close(f->fd);
	unlink(f->path);
	free(f);
	return 0;
}

/* ---- Requests ---- */

static void set_desc(struct fix *f, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	struct virtq_desc d = {addr, len, flags, next};

	gw(f, DESC + 16ull * i, &d, sizeof(d));
}

static void offer_and_kick(struct fix *f, uint16_t head)
{
	gw(f, AVAIL + 4 + 2 * (f->avail_idx % QSZ), &head, 2);
	f->avail_idx++;
	gw(f, AVAIL + 2, &f->avail_idx, 2);
	mw(f, f->notify + 0 * f->notify_mult, 0, 2);
}

/* Wait until the device used one more chain; returns its used length, or -1. */
static int wait_used(struct fix *f)
{
	struct timespec ts = {0, 1000000};
	uint32_t len;

	for (int i = 0; i < 5000 && used_idx(f) == f->used_seen; i++)
		nanosleep(&ts, NULL);
	if (used_idx(f) == f->used_seen)
		return -1;
	assert_int_equal(gm_read(&f->vm.mem, USED + 4 + 8 * (f->used_seen % QSZ) + 4, &len, 4), 0);
	f->used_seen++;
	return (int)len;
}

/* One request: header, optional data (device-writable for reads), status. */
static uint8_t request(struct fix *f, uint32_t type, uint64_t sector, uint32_t len, bool data_in,
		       int *used)
{
	struct {
		uint32_t type, reserved;
		uint64_t sector;
	} h = {type, 0, sector};
	uint8_t st = 0xee;
	uint16_t i = 0;

	gw(f, HDR, &h, sizeof(h));
	gw(f, STATUS, &st, 1);
	set_desc(f, i, HDR, sizeof(h), VIRTQ_DESC_F_NEXT, (uint16_t)(i + 1));
	i++;
	if (len) {
		set_desc(f, i, DATA, len, VIRTQ_DESC_F_NEXT | (data_in ? VIRTQ_DESC_F_WRITE : 0),
			 (uint16_t)(i + 1));
		i++;
	}
	set_desc(f, i, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer_and_kick(f, 0);
	*used = wait_used(f);
	assert_int_equal(gm_read(&f->vm.mem, STATUS, &st, 1), 0);
	return st;
}

static uint8_t data_byte(struct fix *f, uint64_t off)
{
	uint8_t b;

	assert_int_equal(gm_read(&f->vm.mem, DATA + off, &b, 1), 0);
	return b;
}

static uint8_t file_byte(struct fix *f, uint64_t off)
{
	uint8_t b = 0;

	assert_int_equal(pread(f->fd, &b, 1, (off_t)off), 1);
	return b;
}

/* ---- Tests ---- */

static void test_config_and_features(void **state)
{
	struct fix *f = *state;
	uint64_t feat = device_features(f);

	assert_int_equal(cr(f, PCI_REVISION_ID, 1), 1);
	assert_int_equal(cr(f, PCI_SUBSYSTEM_VENDOR_ID, 2), 0x1af4);
	assert_true(feat & 1ull << VIRTIO_F_VERSION_1);
	assert_true(feat & 1ull << VIRTIO_RING_F_EVENT_IDX);
	assert_true(feat & 1ull << 9);	/* FLUSH */
	assert_true(feat & 1ull << 13); /* DISCARD */
	assert_true(feat & 1ull << 14); /* WRITE_ZEROES */
	assert_false(feat & 1ull << 5); /* RO */
	assert_int_equal(mr(f, f->devcfg + 0, 8), DISK_SIZE / 512);
	assert_int_equal(mr(f, f->devcfg + 12, 4), 254); /* seg_max */
	assert_int_equal(mr(f, f->devcfg + 20, 4), 512); /* blk_size */
	assert_int_equal(mr(f, f->devcfg + 40, 4), 1);	 /* max_discard_seg */
	assert_int_equal(mr(f, f->common + VIRTIO_PCI_COMMON_NUMQ, 2), 1);
	/* A queue that does not exist has size 0. */
	mw(f, f->common + VIRTIO_PCI_COMMON_Q_SELECT, 5, 2);
	assert_int_equal(mr(f, f->common + VIRTIO_PCI_COMMON_Q_SIZE, 2), 0);
	/* Vectors beyond the table read back as NO_VECTOR. */
	mw(f, f->common + VIRTIO_PCI_COMMON_MSIX, 9, 2);
	assert_int_equal(mr(f, f->common + VIRTIO_PCI_COMMON_MSIX, 2), VIRTIO_MSI_NO_VECTOR);
}

static void test_pci_cfg_window(void **state)
{
	struct fix *f = *state;
	unsigned dev = f->slot << 3, cap = cr(f, PCI_CAPABILITY_LIST, 1);

	while (cap && !(cr(f, cap, 1) == PCI_CAP_ID_VNDR && cr(f, cap + 3, 1) == 5))
		cap = cr(f, cap + 1, 1);
	assert_true(cap);
	/* Read the capacity's low half through config space. */
	pci_cfg_write(&f->vm, dev, cap + 4, 1, 0);
	pci_cfg_write(&f->vm, dev, cap + 8, 4, VIRTIO_PCI_DEVCFG_OFF);
	pci_cfg_write(&f->vm, dev, cap + 12, 4, 4);
	assert_int_equal(cr(f, cap + 16, 4), DISK_SIZE / 512);
	/* Write queue_select through it; MMIO sees the result. */
	pci_cfg_write(&f->vm, dev, cap + 8, 4, VIRTIO_PCI_COMMON_Q_SELECT);
	pci_cfg_write(&f->vm, dev, cap + 12, 4, 2);
	pci_cfg_write(&f->vm, dev, cap + 16, 2, 3);
	assert_int_equal(mr(f, f->common + VIRTIO_PCI_COMMON_Q_SELECT, 2), 3);
	/* Bad length or a BAR that does not exist: nothing happens, reads zero/ones. */
	pci_cfg_write(&f->vm, dev, cap + 12, 4, 3);
	assert_int_equal(cr(f, cap + 16, 4), 0);
	pci_cfg_write(&f->vm, dev, cap + 12, 4, 4);
	assert_int_equal(cr(f, cap + 16, 4), 0); /* offset 0x16 not aligned to 4 */
	pci_cfg_write(&f->vm, dev, cap + 8, 4, 0);
	pci_cfg_write(&f->vm, dev, cap + 4, 1, 5);
	assert_int_equal(cr(f, cap + 16, 4), 0xffffffffu);
	pci_cfg_write(&f->vm, dev, cap + 8, 4, 0x7ffffffc);
	pci_cfg_write(&f->vm, dev, cap + 4, 1, 0);
	assert_int_equal(cr(f, cap + 16, 4), 0xffffffffu);
}

static void test_feature_negotiation(void **state)
{
	struct fix *f = *state;
	uint8_t s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

	set_status(f, 0);
	set_status(f, s);
	/* A feature we never offered: FEATURES_OK does not stick. */
	write_features(f, 1ull << VIRTIO_F_VERSION_1 | 1ull << 50);
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK);
	assert_false(status(f) & VIRTIO_CONFIG_S_FEATURES_OK);
	/* A legacy driver (no VERSION_1) is refused too. */
	set_status(f, 0);
	set_status(f, s);
	write_features(f, 1ull << 9);
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK);
	assert_false(status(f) & VIRTIO_CONFIG_S_FEATURES_OK);
	/* Without FEATURES_OK the device does not go live. */
	set_status(f, s | VIRTIO_CONFIG_S_DRIVER_OK);
	assert_false(status(f) & VIRTIO_CONFIG_S_DRIVER_OK);
	/* A proper subset is accepted. */
	driver_init(f, 1ull << VIRTIO_RING_F_EVENT_IDX);
}

static void test_read_write(void **state)
{
	struct fix *f = *state;
	uint8_t buf[1024];
	int used, msi = fake_nmsi(&f->vm);

	/* Read sectors 3-4. */
	assert_int_equal(request(f, T_IN, 3, 1024, true, &used), 0);
	assert_int_equal(used, 1025);
	assert_int_equal(data_byte(f, 0), 3);
	assert_int_equal(data_byte(f, 511), 3);
	assert_int_equal(data_byte(f, 512), 4);
	/* The queue's MSI-X vector fired. */
	assert_true(fake_wait_msi(&f->vm, msi) > msi);
	assert_int_equal(fake_irqs(&f->vm)->msi_data, 0x31);
	/* Write sectors 10-11. */
	memset(buf, 0xa5, sizeof(buf));
	gw(f, DATA, buf, sizeof(buf));
	assert_int_equal(request(f, T_OUT, 10, 1024, false, &used), 0);
	assert_int_equal(used, 1);
	assert_int_equal(file_byte(f, 10 * 512), 0xa5);
	assert_int_equal(file_byte(f, 12 * 512 - 1), 0xa5);
	assert_int_equal(file_byte(f, 12 * 512), 12);
	/* The last sector is readable. */
	assert_int_equal(request(f, T_IN, DISK_SIZE / 512 - 1, 512, true, &used), 0);
	assert_int_equal(data_byte(f, 0), (DISK_SIZE / 512 - 1) & 0xff);
	/* Flush. */
	assert_int_equal(request(f, T_FLUSH, 0, 0, false, &used), 0);
}

static void test_bad_requests(void **state)
{
	struct fix *f = *state;
	int used;

	/* Past the end, straddling the end, sector*512 overflowing. */
	assert_int_equal(request(f, T_IN, DISK_SIZE / 512, 512, true, &used), 1);
	assert_int_equal(request(f, T_IN, DISK_SIZE / 512 - 1, 1024, true, &used), 1);
	assert_int_equal(request(f, T_OUT, UINT64_MAX / 256, 512, false, &used), 1);
	assert_int_equal(request(f, T_IN, (UINT64_MAX >> 9) + 1, 512, true, &used), 1);
	/* Not a whole number of sectors. */
	assert_int_equal(request(f, T_IN, 0, 100, true, &used), 1);
	/* Unknown request type. */
	assert_int_equal(request(f, 77, 0, 0, false, &used), 2);
	/* The device is still fine. */
	assert_int_equal(request(f, T_IN, 1, 512, true, &used), 0);
	assert_int_equal(data_byte(f, 0), 1);
	assert_false(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET);
}

static void test_get_id(void **state)
{
	struct fix *f = *state;
	const char *base = strrchr(f->path, '/') + 1;
	char id[21] = {0};
	int used;

	assert_int_equal(request(f, T_GET_ID, 0, 20, true, &used), 0);
	assert_int_equal(used, 21);
	assert_int_equal(gm_read(&f->vm.mem, DATA, id, 20), 0);
	assert_string_equal(id, base);
}

static void range_req(struct fix *f, uint64_t sector, uint32_t n, uint32_t flags)
{
	struct {
		uint64_t sector;
		uint32_t n, flags;
	} r = {sector, n, flags};

	gw(f, DATA, &r, sizeof(r));
}

static void test_discard_write_zeroes(void **state)
{
	struct fix *f = *state;
	int used;

	range_req(f, 20, 8, 1);
	assert_int_equal(request(f, T_WZ, 0, 16, false, &used), 0);
	assert_int_equal(file_byte(f, 20 * 512), 0);
	assert_int_equal(file_byte(f, 28 * 512 - 1), 0);
	assert_int_equal(file_byte(f, 28 * 512), 28);
	range_req(f, 40, 8, 0);
	assert_int_equal(request(f, T_DISCARD, 0, 16, false, &used), 0);
	/* Flags we do not know, ranges outside the disk. */
	range_req(f, 40, 8, 2);
	assert_int_equal(request(f, T_DISCARD, 0, 16, false, &used), 2);
	range_req(f, DISK_SIZE / 512 - 4, 8, 0);
	assert_int_equal(request(f, T_WZ, 0, 16, false, &used), 1);
	range_req(f, UINT64_MAX / 512, 1, 0);
	assert_int_equal(request(f, T_DISCARD, 0, 16, false, &used), 1);
	assert_int_equal(file_byte(f, (DISK_SIZE / 512 - 4) * 512), (DISK_SIZE / 512 - 4) & 0xff);
}

static void test_readonly(void **state)
{
	struct fix *f = *state;
	uint8_t buf[512];
	int used;

	assert_true(device_features(f) & 1ull << 5);
	assert_false(device_features(f) & 1ull << 13);
	memset(buf, 0x5a, sizeof(buf));
	gw(f, DATA, buf, sizeof(buf));
	assert_int_equal(request(f, T_OUT, 2, 512, false, &used), 1);
	assert_int_equal(file_byte(f, 2 * 512), 2);
	range_req(f, 2, 1, 0);
	assert_int_equal(request(f, T_WZ, 0, 16, false, &used), 1);
	assert_int_equal(file_byte(f, 2 * 512), 2);
	assert_int_equal(request(f, T_IN, 2, 512, true, &used), 0);
	assert_int_equal(data_byte(f, 0), 2);
}

static void test_malicious_chain(void **state)
{
	struct fix *f = *state;
	int msi = fake_nmsi(&f->vm), used;

	/* A two-descriptor loop. */
	set_desc(f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, 1, STATUS, 1, VIRTQ_DESC_F_NEXT, 0);
	offer_and_kick(f, 0);
	for (int i = 0; i < 5000 && !(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET); i++)
		usleep(1000);
	assert_true(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET);
	/* The driver heard about it on the config vector. */
	assert_true(fake_wait_msi(&f->vm, msi) > msi);
	assert_int_equal(fake_irqs(&f->vm)->msi_data, 0x30);
	/* Nothing more is processed until reset. */
	set_desc(f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, 1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer_and_kick(f, 0);
	usleep(20000);
	assert_int_equal(used_idx(f), 0);
	/* Reset and start over: works again. */
	driver_init(f, 0);
	assert_false(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET);
	assert_int_equal(request(f, T_IN, 5, 512, true, &used), 0);
	assert_int_equal(data_byte(f, 0), 5);
}

static void test_out_of_ram_chain(void **state)
{
	struct fix *f = *state;

	set_desc(f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, 1, (16u << 20) - 256, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer_and_kick(f, 0);
	for (int i = 0; i < 5000 && !(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET); i++)
		usleep(1000);
	assert_true(status(f) & VIRTIO_CONFIG_S_NEEDS_RESET);
	assert_int_equal(used_idx(f), 0);
}

static void test_bus_master_and_pause(void **state)
{
	struct fix *f = *state;
	int used;

	/* Bus mastering off: the device does no DMA; the doorbell waits. */
	pci_cfg_write(&f->vm, f->slot << 3, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
	range_req(f, 0, 0, 0);
	set_desc(f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	struct {
		uint32_t type, reserved;
		uint64_t sector;
	} h = {T_IN, 0, 6};
	gw(f, HDR, &h, sizeof(h));
	set_desc(f, 1, DATA, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer_and_kick(f, 0);
	usleep(20000);
	assert_int_equal(used_idx(f), 0);
	pci_cfg_write(&f->vm, f->slot << 3, PCI_COMMAND, 2,
		      PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	assert_int_equal(wait_used(f), 513);
	assert_int_equal(data_byte(f, 0), 6);

	/* Paused: nothing in flight, nothing processed; resumed: it runs. */
	assert_int_equal(vm_pause(&f->vm), 0);
	h.sector = 7;
	gw(f, HDR, &h, sizeof(h));
	offer_and_kick(f, 0);
	usleep(20000);
	assert_int_equal(used_idx(f), 1);
	vm_resume(&f->vm);
	assert_int_equal(wait_used(f), 513);
	assert_int_equal(data_byte(f, 0), 7);
	assert_int_equal(request(f, T_IN, 8, 512, true, &used), 0);
}

/* Five reads (15 descriptors of 16) offered at once, one doorbell: all served. */
static void test_batch(void **state)
{
	struct fix *f = *state;
	struct timespec ts = {0, 1000000};

	for (uint16_t r = 0; r < 5; r++) {
		struct {
			uint32_t type, reserved;
			uint64_t sector;
		} h = {T_IN, 0, 100u + r};
		uint16_t d = (uint16_t)(3 * r);

		gw(f, HDR + 16 * r, &h, sizeof(h));
		set_desc(f, d, HDR + 16 * r, 16, VIRTQ_DESC_F_NEXT, (uint16_t)(d + 1));
		set_desc(f, (uint16_t)(d + 1), DATA + 512 * r, 512,
			 VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, (uint16_t)(d + 2));
		set_desc(f, (uint16_t)(d + 2), STATUS + r, 1, VIRTQ_DESC_F_WRITE, 0);
		gw(f, AVAIL + 4 + 2 * (f->avail_idx % QSZ), &d, 2);
		f->avail_idx++;
	}
	gw(f, AVAIL + 2, &f->avail_idx, 2);
	mw(f, f->notify, 0, 2);
	for (int i = 0; i < 5000 && used_idx(f) != 5; i++)
		nanosleep(&ts, NULL);
	assert_int_equal(used_idx(f), 5);
	for (unsigned r = 0; r < 5; r++) {
		uint8_t st;

		assert_int_equal(gm_read(&f->vm.mem, STATUS + r, &st, 1), 0);
		assert_int_equal(st, 0);
		assert_int_equal(data_byte(f, 512 * r), 100 + r);
		assert_int_equal(data_byte(f, 512 * r + 511), 100 + r);
	}
}

static struct device *find_virtio(struct vm *vm)
{
	for (struct device *d = vm->devices; d; d = d->next)
		if (!strcmp(d->ops->name, "virtio"))
			return d;
	return NULL;
}

static void test_save_restore(void **state)
{
	struct fix *f = *state;
	struct device *d = find_virtio(&f->vm);
	struct dev_buf b = {0};
	int used;

	assert_non_null(d);
	assert_int_equal(request(f, T_IN, 9, 512, true, &used), 0);
	assert_int_equal(vm_pause(&f->vm), 0);
	assert_int_equal(d->ops->save(d->dev, &b), 0);
	/* Lose all device state, then bring it back from the buffer. */
	d->ops->reset(d->dev);
	assert_int_equal(status(f), 0xff); /* memory decode is off after reset */
	assert_int_equal(d->ops->restore(d->dev, b.data, b.len), 0);
	vm_resume(&f->vm);
	assert_int_equal(status(f) & VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_DRIVER_OK);
	/* The queue continues where it was. */
	assert_int_equal(request(f, T_IN, 11, 512, true, &used), 0);
	assert_int_equal(used, 513);
	assert_int_equal(used_idx(f), 2);
	/* Garbage is refused. */
	assert_int_not_equal(d->ops->restore(d->dev, b.data, b.len / 2), 0);
	free(b.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_config_and_features, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_feature_negotiation, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_pci_cfg_window, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_read_write, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_requests, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_batch, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_get_id, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_discard_write_zeroes, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_readonly, setup_ro, teardown),
	    cmocka_unit_test_setup_teardown(test_malicious_chain, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_out_of_ram_chain, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_bus_master_and_pause, setup_rw, teardown),
	    cmocka_unit_test_setup_teardown(test_save_restore, setup_rw, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
