/*
 * virtio-balloon without a CPU: the test plays the guest's driver. It finds
 * the device in PCI config space, negotiates, sets up the inflate, deflate,
 * stats and reporting queues in guest memory, rings doorbells through the
 * MMIO bus, and checks what tern did to guest memory (mincore: released
 * pages are no longer resident and read as zero) and what it reports:
 * inflate, deflate, hostile PFNs and ranges refused one by one, free page
 * reporting, the statistics buffer round trip, pinned pages kept, the sweep
 * before an inflation, reset, save/restore of the balloon's state; and a
 * hostile driver: huge PFN counts, PFN buffers and reports outside guest
 * RAM (the queue breaks, nothing is released, tern and the rest of guest
 * memory carry on, a reset brings the device back).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hw/pci.h"
#include "test_pci_vm.h"
#include "virtio/balloon.h"
#include "virtio/transport.h"

#define RAM (32u << 20)
#define QSZ 16
#define NQ 4
#define RING(q) (0x10000ull + (q)*0x4000ull) /* desc; avail +0x1000; used +0x2000 */
#define PFNBUF 0x30000ull
#define STATBUF 0x31000ull
#define DATA 0x400000ull   /* 4 MiB: pages the tests fill and give away */
#define BIGBUF 0x800000ull /* 8 MiB: a PFN array larger than any driver sends */

enum { QI = 0, QD = 1, QS = 2, QR = 3 };

struct fix {
	struct vm vm;
	struct balloon *b;
	unsigned slot;
	uint64_t common, notify, devcfg;
	uint32_t notify_mult;
	uint16_t avail_idx[NQ], used_seen[NQ];
};

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

static void find_and_map(struct fix *f)
{
	unsigned off, n = 0;
	uint64_t bar0;

	for (f->slot = 0; f->slot < PCI_MAX_DEVS; f->slot++)
		if (cr(f, 0, 4) == (0x1045u << 16 | 0x1af4))
			break;
	assert_true(f->slot < PCI_MAX_DEVS);
	pci_cfg_write(&f->vm, f->slot << 3, PCI_COMMAND, 2,
		      PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	bar0 = cr(f, PCI_BAR0, 4) & ~0xfull;
	off = cr(f, PCI_CAPABILITY_LIST, 1);
	while (off && n++ < 48) {
		if (cr(f, off, 1) == PCI_CAP_ID_VNDR) {
			unsigned type = cr(f, off + 3, 1);
			uint64_t a = bar0 + cr(f, off + 8, 4);

			if (type == VIRTIO_PCI_CAP_COMMON_CFG)
				f->common = a;
			else if (type == VIRTIO_PCI_CAP_NOTIFY_CFG) {
				f->notify = a;
				f->notify_mult = cr(f, off + 16, 4);
			} else if (type == VIRTIO_PCI_CAP_DEVICE_CFG)
				f->devcfg = a;
		}
		off = cr(f, off + 1, 1);
	}
	assert_true(f->common && f->notify && f->devcfg);
}

static void set_status(struct fix *f, uint8_t s)
{
	mw(f, f->common + VIRTIO_PCI_COMMON_STATUS, s, 1);
}

static uint64_t device_features(struct fix *f)
{
	uint64_t lo;

	mw(f, f->common + VIRTIO_PCI_COMMON_DFSELECT, 0, 4);
	lo = mr(f, f->common + VIRTIO_PCI_COMMON_DF, 4);
	mw(f, f->common + VIRTIO_PCI_COMMON_DFSELECT, 1, 4);
	return mr(f, f->common + VIRTIO_PCI_COMMON_DF, 4) << 32 | lo;
}

/* Driver init with every offered feature but event index; the four queues. */
static void driver_init(struct fix *f)
{
	uint64_t c = f->common, feat = device_features(f) & ~(1ull << VIRTIO_RING_F_EVENT_IDX);
	uint8_t s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

	set_status(f, 0);
	set_status(f, s);
	mw(f, c + VIRTIO_PCI_COMMON_GFSELECT, 0, 4);
	mw(f, c + VIRTIO_PCI_COMMON_GF, (uint32_t)feat, 4);
	mw(f, c + VIRTIO_PCI_COMMON_GFSELECT, 1, 4);
	mw(f, c + VIRTIO_PCI_COMMON_GF, feat >> 32, 4);
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK);
	for (unsigned q = 0; q < NQ; q++) {
		mw(f, c + VIRTIO_PCI_COMMON_Q_SELECT, q, 2);
		mw(f, c + VIRTIO_PCI_COMMON_Q_SIZE, QSZ, 2);
		mw(f, c + VIRTIO_PCI_COMMON_Q_DESCLO, RING(q), 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_DESCHI, 0, 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_AVAILLO, RING(q) + 0x1000, 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_AVAILHI, 0, 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_USEDLO, RING(q) + 0x2000, 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_USEDHI, 0, 4);
		mw(f, c + VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2);
	}
	set_status(f, s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
	assert_true(mr(f, c + VIRTIO_PCI_COMMON_STATUS, 1) & VIRTIO_CONFIG_S_DRIVER_OK);
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));

	if (!f || test_vm_create(&f->vm, RAM) || pci_init(&f->vm) || virtio_balloon_add(&f->vm, true))
		return -1;
	f->b = balloon_find(&f->vm);
	if (!f->b)
		return -1;
	find_and_map(f);
	driver_init(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	vm_destroy(&f->vm);
	free(f);
	return 0;
}

/* ---- the guest's side of a queue ---- */

static void set_desc(struct fix *f, unsigned q, uint16_t i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	struct virtq_desc d = {addr, len, flags, next};

	gw(f, RING(q) + 16ull * i, &d, sizeof(d));
}

static void offer(struct fix *f, unsigned q, uint16_t head)
{
	uint64_t avail = RING(q) + 0x1000;

	gw(f, avail + 4 + 2 * (f->avail_idx[q] % QSZ), &head, 2);
	f->avail_idx[q]++;
	gw(f, avail + 2, &f->avail_idx[q], 2);
	mw(f, f->notify + q * f->notify_mult, q, 2);
}

static uint16_t used_idx(struct fix *f, unsigned q)
{
	uint16_t v;

	assert_int_equal(gm_read(&f->vm.mem, RING(q) + 0x2000 + 2, &v, 2), 0);
	return v;
}

/* Wait until the device used one more chain on q; returns false on timeout. */
static bool wait_used(struct fix *f, unsigned q)
{
	struct timespec ts = {0, 1000000};

	for (int i = 0; i < 5000 && used_idx(f, q) == f->used_seen[q]; i++)
		nanosleep(&ts, NULL);
	if (used_idx(f, q) == f->used_seen[q])
		return false;
	f->used_seen[q]++;
	return true;
}

/* Send n PFNs on the inflate or deflate queue and wait for them to be used. */
static void send_pfns(struct fix *f, unsigned q, const uint32_t *pfns, unsigned n)
{
	gw(f, PFNBUF, pfns, n * 4ull);
	set_desc(f, q, 0, PFNBUF, n * 4, 0, 0);
	offer(f, q, 0);
	assert_true(wait_used(f, q));
}

/* The device says it needs a reset (a driver broke a queue); false on timeout. */
static bool wait_needs_reset(struct fix *f)
{
	struct timespec ts = {0, 1000000};

	for (int i = 0; i < 5000; i++) {
		if (mr(f, f->common + VIRTIO_PCI_COMMON_STATUS, 1) & VIRTIO_CONFIG_S_NEEDS_RESET)
			return true;
		nanosleep(&ts, NULL);
	}
	return false;
}

/* The driver resets the device and sets it up again on fresh rings. */
static void reinit(struct fix *f)
{
	static const uint8_t zero[0x3000];

	set_status(f, 0);
	for (unsigned q = 0; q < NQ; q++) {
		gw(f, RING(q), zero, sizeof(zero));
		f->avail_idx[q] = 0;
		f->used_seen[q] = 0;
	}
	driver_init(f);
	assert_false(mr(f, f->common + VIRTIO_PCI_COMMON_STATUS, 1) & VIRTIO_CONFIG_S_NEEDS_RESET);
}

/* ---- host-side checks ---- */

static bool resident(struct fix *f, uint64_t gpa)
{
	unsigned char v = 0;
	long pg = sysconf(_SC_PAGESIZE);
	uint8_t *p = gm_ptr(&f->vm.mem, gpa, 1);

	assert_non_null(p);
	assert_int_equal(mincore((void *)((uintptr_t)p & ~(uintptr_t)(pg - 1)), 1, &v), 0);
	return v & 1;
}

static uint8_t byte_at(struct fix *f, uint64_t gpa)
{
	uint8_t b;

	assert_int_equal(gm_read(&f->vm.mem, gpa, &b, 1), 0);
	return b;
}

/* Fill n pages from gpa with a non-zero pattern (resident afterwards). */
static void fill(struct fix *f, uint64_t gpa, unsigned n)
{
	static uint8_t page[4096];

	for (unsigned i = 0; i < n; i++) {
		memset(page, 0xa0 + (int)(i % 16), sizeof(page));
		gw(f, gpa + i * 4096ull, page, sizeof(page));
	}
}

static struct balloon_info info(struct fix *f)
{
	struct balloon_info i;

	assert_int_equal(balloon_get_info(f->b, 0, &i), 0);
	return i;
}

/* ---- tests ---- */

static void test_features_and_config(void **state)
{
	struct fix *f = *state;
	uint64_t feat = device_features(f);
	struct balloon_info i = info(f);

	assert_true(feat & 1ull << 1);	/* STATS_VQ */
	assert_true(feat & 1ull << 2);	/* DEFLATE_ON_OOM */
	assert_true(feat & 1ull << 5);	/* PAGE_REPORTING */
	assert_false(feat & 1ull << 3); /* no free page hinting */
	assert_int_equal(mr(f, f->common + VIRTIO_PCI_COMMON_NUMQ, 2), NQ);
	assert_true(i.driver_ok && i.stats_vq && i.deflate_on_oom && i.free_page_reporting);
	assert_int_equal(mr(f, f->devcfg + 0, 4), 0); /* num_pages */
	/* The driver writes actual; num_pages is the device's. */
	mw(f, f->devcfg + 4, 77, 4);
	mw(f, f->devcfg + 0, 1234, 4);
	assert_int_equal(mr(f, f->devcfg + 4, 4), 77);
	assert_int_equal(mr(f, f->devcfg + 0, 4), 0);
	assert_int_equal(info(f).actual_pages, 77);
}

static void test_inflate_releases(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[64];
	struct balloon_info i;

	fill(f, DATA, 66);
	for (unsigned k = 0; k < 64; k++)
		pfns[k] = (uint32_t)(DATA >> 12) + k;
	assert_true(resident(f, DATA));
	send_pfns(f, QI, pfns, 64);
	for (unsigned k = 0; k < 64; k++) {
		assert_false(resident(f, DATA + k * 4096ull));
		assert_int_equal(byte_at(f, DATA + k * 4096ull), 0);
	}
	/* The neighbours keep their data. */
	assert_int_equal(byte_at(f, DATA + 64 * 4096ull), 0xa0);
	assert_int_equal(byte_at(f, DATA + 65 * 4096ull), 0xa1);
	i = info(f);
	assert_int_equal(i.balloon_pages, 64);
	assert_int_equal(i.inflated, 64);
	assert_int_equal(i.refused_pfns, 0);
	assert_int_equal(i.released_balloon, 64 * 4096);
}

static void test_deflate(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[4] = {DATA >> 12, (DATA >> 12) + 1, (DATA >> 12) + 2, (DATA >> 12) + 3};
	uint8_t page[4096];
	struct balloon_info i;

	fill(f, DATA, 4);
	send_pfns(f, QI, pfns, 4);
	send_pfns(f, QD, pfns, 2);
	i = info(f);
	assert_int_equal(i.balloon_pages, 2);
	assert_int_equal(i.deflated, 2);
	/* The guest uses a deflated page again: it was zero and takes new data. */
	memset(page, 0x5a, sizeof(page));
	gw(f, DATA, page, sizeof(page));
	assert_int_equal(byte_at(f, DATA + 4095), 0x5a);
	/* Deflating what is not in the balloon is refused, and counted. */
	send_pfns(f, QD, pfns, 2);
	i = info(f);
	assert_int_equal(i.deflated, 2);
	assert_int_equal(i.refused_pfns, 2);
	assert_int_equal(i.balloon_pages, 2);
}

static void test_hostile_pfns(void **state)
{
	struct fix *f = *state;
	uint32_t good = (uint32_t)(DATA >> 12);
	uint32_t pfns[] = {
	    RAM >> 12,	     /* just past RAM */
	    0xffffffffu,     /* far past it */
	    0xc0000,	     /* the 3 GiB hole */
	    good,	     /* fine */
	    good,	     /* again: a duplicate */
	    (RING(0) >> 12), /* fine for tern, the guest's own ring: its problem */
	};
	struct balloon_info i;

	fill(f, DATA, 2);
	send_pfns(f, QI, pfns, 6);
	i = info(f);
	assert_int_equal(i.inflated, 2);
	assert_int_equal(i.refused_pfns, 4);
	assert_int_equal(byte_at(f, DATA + 4096), 0xa1); /* the neighbour is untouched */
	/* A trailing partial PFN and an empty buffer do nothing. */
	gw(f, PFNBUF, pfns, 4);
	set_desc(f, QI, 0, PFNBUF, 3, 0, 0);
	offer(f, QI, 0);
	assert_true(wait_used(f, QI));
	assert_int_equal(info(f).inflated, 2);
	/* The device still works. */
	pfns[0] = good + 1;
	send_pfns(f, QI, pfns, 1);
	assert_int_equal(info(f).inflated, 3);
	assert_false(resident(f, DATA + 4096));
}

/* Pages DATA.. DATA+n-1 still hold what fill() wrote, resident. */
static void assert_filled(struct fix *f, unsigned n)
{
	for (unsigned k = 0; k < n; k++) {
		assert_true(resident(f, DATA + k * 4096ull));
		assert_int_equal(byte_at(f, DATA + k * 4096ull + 4095), 0xa0 + (int)(k % 16));
	}
}

/*
 * More PFNs in one buffer than any driver sends (it sends 256): the first
 * 65536 are looked at, the rest are refused unread, even valid ones.
 */
static void test_huge_pfn_count(void **state)
{
	struct fix *f = *state;
	const unsigned cap = 65536, extra = 8, n = cap + extra;
	uint32_t *pfns = malloc(n * sizeof(*pfns));
	struct balloon_info i;

	assert_non_null(pfns);
	for (unsigned k = 0; k < cap; k++)
		pfns[k] = (uint32_t)(RAM >> 12) + k; /* past RAM: refused one by one */
	for (unsigned k = 0; k < extra; k++)
		pfns[cap + k] = (uint32_t)(DATA >> 12) + k; /* fine, but past the limit */
	fill(f, DATA, extra);
	gw(f, BIGBUF, pfns, n * sizeof(*pfns));
	set_desc(f, QI, 0, BIGBUF, n * (uint32_t)sizeof(*pfns), 0, 0);
	offer(f, QI, 0);
	assert_true(wait_used(f, QI));
	i = info(f);
	assert_int_equal(i.inflated, 0);
	assert_int_equal(i.refused_pfns, n);
	assert_int_equal(i.released_balloon, 0);
	assert_filled(f, extra);
	/* The device still works. */
	send_pfns(f, QI, pfns + cap, 1);
	assert_int_equal(info(f).inflated, 1);
	assert_false(resident(f, DATA));
	free(pfns);
}

/*
 * A PFN buffer is what its descriptor says: PFNs past its length are not
 * read. A buffer that runs past the end of RAM, or claims 4 GiB, breaks the
 * queue: the device needs a reset, nothing of the chain is inflated, the
 * rest of guest memory keeps its data, and after a reset the device works.
 */
static void test_pfn_buffer_outside_ram(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[4] = {DATA >> 12, (DATA >> 12) + 1, (DATA >> 12) + 2, (DATA >> 12) + 3};
	struct balloon_info i;

	fill(f, DATA, 4);
	gw(f, PFNBUF, pfns, sizeof(pfns));
	set_desc(f, QI, 0, PFNBUF, 2 * sizeof(uint32_t), 0, 0);
	offer(f, QI, 0);
	assert_true(wait_used(f, QI));
	assert_int_equal(info(f).inflated, 2);
	assert_true(resident(f, DATA + 2 * 4096));
	assert_int_equal(byte_at(f, DATA + 3 * 4096), 0xa3);

	gw(f, RAM - 8, pfns + 2, 8);
	set_desc(f, QI, 0, RAM - 8, 64, 0, 0);
	offer(f, QI, 0);
	assert_true(wait_needs_reset(f));
	i = info(f);
	assert_int_equal(i.inflated, 2);
	assert_int_equal(i.released_balloon, 2 * 4096);
	assert_int_equal(byte_at(f, DATA + 2 * 4096), 0xa2);
	assert_int_equal(byte_at(f, DATA + 3 * 4096), 0xa3);
	assert_int_equal(f->vm.mem.pins[gm_page_index(&f->vm.mem, RAM - 4096)], 0);

	reinit(f); /* the balloon is empty again: the driver deflated it before the reset */
	set_desc(f, QI, 0, PFNBUF, 0xffffffffu, 0, 0);
	offer(f, QI, 0);
	assert_true(wait_needs_reset(f));
	assert_int_equal(info(f).inflated, 2);
	assert_int_equal(byte_at(f, DATA + 3 * 4096), 0xa3);

	reinit(f);
	send_pfns(f, QI, pfns + 3, 1);
	assert_int_equal(info(f).inflated, 3);
	assert_false(resident(f, DATA + 3 * 4096));
	assert_true(resident(f, DATA + 2 * 4096));
}

/*
 * Free page reports outside RAM (past its end, in the 3 GiB hole, a length
 * that wraps): the queue breaks and the whole report is refused, even its
 * good ranges; nothing stays pinned; after a reset reports work again.
 */
static void test_report_outside_ram(void **state)
{
	struct fix *f = *state;
	const struct {
		uint64_t addr;
		uint32_t len;
	} bad[] = {
	    {RAM - 4096, 8192},	       /* runs past the end */
	    {RAM, 4096},	       /* starts there */
	    {0xc0000000ull, 2u << 20}, /* the 3 GiB hole */
	    {DATA, 0xfffff000u},       /* far too long */
	};
	struct balloon_info i;

	fill(f, DATA, 4);
	for (unsigned k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		set_desc(f, QR, 0, DATA, 4096, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
		set_desc(f, QR, 1, bad[k].addr, bad[k].len, VIRTQ_DESC_F_WRITE, 0);
		offer(f, QR, 0);
		assert_true(wait_needs_reset(f));
		i = info(f);
		assert_int_equal(i.reports, 0);
		assert_int_equal(i.released_free_report, 0);
		assert_filled(f, 4);
		assert_int_equal(f->vm.mem.pins[gm_page_index(&f->vm.mem, DATA)], 0);
		reinit(f);
	}
	set_desc(f, QR, 0, DATA, 2 * 4096, VIRTQ_DESC_F_WRITE, 0);
	offer(f, QR, 0);
	assert_true(wait_used(f, QR));
	assert_int_equal(info(f).released_free_report, 2 * 4096);
	assert_false(resident(f, DATA));
	assert_int_equal(byte_at(f, DATA + 2 * 4096 + 7), 0xa2);
}

static void test_free_page_reporting(void **state)
{
	struct fix *f = *state;
	uint64_t r1 = DATA, r2 = DATA + (2u << 20);
	struct balloon_info i;

	fill(f, r1, 512);
	fill(f, r2, 2);
	/* Reports come as device-writable buffers: each one is a free range. */
	set_desc(f, QR, 0, r1, 2u << 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, QR, 1, r2 + 0x10, 0x1000, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, QR, 2, r2 + 0x1000, 0, VIRTQ_DESC_F_WRITE, 0);
	offer(f, QR, 0);
	assert_true(wait_used(f, QR));
	for (unsigned k = 0; k < 512; k += 37)
		assert_false(resident(f, r1 + k * 4096ull));
	assert_int_equal(byte_at(f, r1 + 12345), 0);
	/* The unaligned and the empty range were refused; their pages keep their data. */
	assert_int_equal(byte_at(f, r2 + 0x10), 0xa0);
	assert_int_equal(byte_at(f, r2 + 0x1000), 0xa1);
	i = info(f);
	assert_int_equal(i.reports, 1);
	assert_int_equal(i.refused_ranges, 2);
	assert_int_equal(i.released_free_report, 2u << 20);
	assert_int_equal(i.released_balloon, 0);
	assert_int_equal(i.balloon_pages, 0); /* reported pages are not in the balloon */
	assert_int_equal(f->vm.mem.pins[gm_page_index(&f->vm.mem, r1)], 0);
}

/* A transfer in flight (a device pinned the pages): inflation keeps them. */
static void test_pinned_kept(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[8];
	struct balloon_info i;

	fill(f, DATA, 8);
	for (unsigned k = 0; k < 8; k++)
		pfns[k] = (uint32_t)(DATA >> 12) + k;
	assert_int_equal(gm_pin(&f->vm.mem, DATA + 2 * 4096 + 100, 4096), 0); /* pages 2 and 3 */
	send_pfns(f, QI, pfns, 8);
	i = info(f);
	assert_int_equal(i.inflated, 8);
	assert_int_equal(i.kept_pinned, 2);
	assert_int_equal(i.released_balloon, 6 * 4096);
	assert_true(resident(f, DATA + 2 * 4096));
	assert_int_equal(byte_at(f, DATA + 2 * 4096), 0xa2);
	assert_int_equal(byte_at(f, DATA + 3 * 4096), 0xa3);
	assert_false(resident(f, DATA + 1 * 4096));
	assert_false(resident(f, DATA + 4 * 4096));
	gm_unpin(&f->vm.mem, DATA + 2 * 4096 + 100, 4096);
	/* The PFN array itself is pinned while the device reads it: never released. */
	fill(f, PFNBUF, 1);
	pfns[0] = (uint32_t)(PFNBUF >> 12);
	send_pfns(f, QI, pfns, 1);
	assert_int_equal(info(f).kept_pinned, 3);
	assert_true(resident(f, PFNBUF));
}

/* ---- statistics ---- */

struct stat_entry {
	uint16_t tag;
	uint64_t val;
} __attribute__((packed));

static void post_stats(struct fix *f, uint64_t memfree, uint64_t memtot)
{
	struct stat_entry e[3] = {
	    {BALLOON_S_MEMFREE, memfree}, {BALLOON_S_MEMTOT, memtot}, {99, 1} /* unknown tag */};

	gw(f, STATBUF, e, sizeof(e));
	set_desc(f, QS, 0, STATBUF, sizeof(e), 0, 0);
	offer(f, QS, 0);
}

struct getter {
	struct fix *f;
	int rc;
	struct balloon_info i;
};

static void *get_thread(void *arg)
{
	struct getter *g = arg;

	g->rc = balloon_get_info(g->f->b, 3000, &g->i);
	return NULL;
}

static void test_stats_round_trip(void **state)
{
	struct fix *f = *state;
	struct balloon_info i;
	struct getter g = {.f = f};
	pthread_t t;
	int n = 0;

	/* The driver's first buffer: the device keeps it (not used). */
	post_stats(f, 100 << 20, 200 << 20);
	for (; n < 2000 && info(f).stats_updates == 0; n++)
		usleep(1000);
	i = info(f);
	assert_int_equal(i.stats_updates, 1);
	assert_int_equal(used_idx(f, QS), 0);
	assert_int_equal(i.stats[BALLOON_S_MEMFREE], 100 << 20);
	assert_int_equal(i.stats_valid, 1u << BALLOON_S_MEMFREE | 1u << BALLOON_S_MEMTOT);
	/* The host asks for fresh stats: the buffer comes back, the driver refills it. */
	assert_int_equal(pthread_create(&t, NULL, get_thread, &g), 0);
	assert_true(wait_used(f, QS));
	post_stats(f, 50 << 20, 200 << 20);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(g.rc, 0);
	assert_int_equal(g.i.stats_updates, 2);
	assert_int_equal(g.i.stats[BALLOON_S_MEMFREE], 50 << 20);
	assert_true(g.i.stats_age_ms < 3000);
	/* A driver that does not answer: the host gives up in time, keeps the old stats. */
	assert_int_equal(balloon_get_info(f->b, 200, &i), -ETIMEDOUT);
	assert_int_equal(i.stats[BALLOON_S_MEMFREE], 50 << 20);
}

/* Raising the target sweeps first; lowering does not; the config carries it. */
static void test_target_and_sweep(void **state)
{
	struct fix *f = *state;
	struct reclaim_stats st;
	uint8_t zero[4096] = {0};
	bool swept;

	fill(f, DATA, 4);
	gw(f, DATA + 4096, zero, sizeof(zero)); /* a zero page, resident */
	assert_true(resident(f, DATA + 4096));
	assert_int_equal(balloon_set_target(f->b, 1000, &swept, &st), 0);
	assert_true(swept);
	assert_true(st.released_4k + st.released_2m >= 4096);
	assert_false(resident(f, DATA + 4096));
	assert_int_equal(byte_at(f, DATA + 2 * 4096), 0xa2);
	assert_int_equal(mr(f, f->devcfg + 0, 4), 1000);
	assert_int_equal(info(f).sweeps, 1);
	assert_int_equal(balloon_set_target(f->b, 10, &swept, NULL), 0);
	assert_false(swept);
	assert_int_equal(mr(f, f->devcfg + 0, 4), 10);
	assert_int_equal(balloon_set_target(f->b, (RAM >> 12) + 1, &swept, NULL), -EINVAL);
	assert_int_equal(info(f).target_pages, 10);
}

/* A device reset empties the balloon and drops the held stats buffer's pins. */
static void test_reset(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[2] = {DATA >> 12, (DATA >> 12) + 1};

	send_pfns(f, QI, pfns, 2);
	post_stats(f, 1, 2);
	for (int n = 0; n < 2000 && info(f).stats_updates == 0; n++)
		usleep(1000);
	assert_true(gm_page_pinned(&f->vm.mem, gm_page_index(&f->vm.mem, STATBUF)));
	set_status(f, 0);
	assert_false(gm_page_pinned(&f->vm.mem, gm_page_index(&f->vm.mem, STATBUF)));
	assert_int_equal(info(f).balloon_pages, 0);
	assert_int_equal(mr(f, f->devcfg + 4, 4), 0);
}

/* The balloon's own state survives save and restore; a damaged one is refused. */
static void test_save_restore(void **state)
{
	struct fix *f = *state;
	uint32_t pfns[3] = {DATA >> 12, (DATA >> 12) + 1, (DATA >> 12) + 7};
	struct dev_buf vbuf = {0}, bbuf = {0};
	struct device *vd = NULL, *bd = NULL;
	bool swept;

	send_pfns(f, QI, pfns, 3);
	assert_int_equal(balloon_set_target(f->b, 300, &swept, NULL), 0);
	for (struct device *d = f->vm.devices; d; d = d->next) {
		if (!strcmp(d->ops->name, "balloon"))
			bd = d;
		else if (!vd && !strcmp(d->ops->name, "virtio"))
			vd = d;
	}
	assert_non_null(bd);
	assert_non_null(vd);
	assert_int_equal(vm_pause(&f->vm), 0);
	assert_int_equal(vd->ops->save(vd->dev, &vbuf), 0);
	assert_int_equal(bd->ops->save(bd->dev, &bbuf), 0);
	vm_resume(&f->vm);
	/* Lose the state, then bring it back in registry order: transport, then balloon. */
	set_status(f, 0);
	assert_int_equal(balloon_set_target(f->b, 0, &swept, NULL), 0);
	assert_int_equal(info(f).balloon_pages, 0);
	assert_int_equal(vd->ops->restore(vd->dev, vbuf.data, vbuf.len), 0);
	assert_int_equal(bd->ops->restore(bd->dev, bbuf.data, bbuf.len), 0);
	assert_int_equal(info(f).balloon_pages, 3);
	assert_int_equal(info(f).target_pages, 300);
	assert_int_equal(mr(f, f->devcfg + 0, 4), 300);
	/* Deflating a restored page works; a damaged state is refused. */
	send_pfns(f, QD, pfns + 2, 1);
	assert_int_equal(info(f).balloon_pages, 2);
	assert_int_equal(bd->ops->restore(bd->dev, bbuf.data, bbuf.len - 1), -EINVAL);
	bbuf.data[0] ^= 1;
	assert_int_equal(bd->ops->restore(bd->dev, bbuf.data, bbuf.len), -EINVAL);
	dev_buf_free(&vbuf);
	dev_buf_free(&bbuf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_features_and_config, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_inflate_releases, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_deflate, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hostile_pfns, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_huge_pfn_count, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pfn_buffer_outside_ram, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_report_outside_ram, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_free_page_reporting, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pinned_kept, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stats_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_target_and_sweep, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_save_restore, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
