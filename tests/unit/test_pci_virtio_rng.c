/*
 * virtio-rng through the virtio-pci transport, with the INTx + ISR interrupt
 * path (the driver does not enable MSI-X here).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hw/pci.h"
#include "test_pci_vm.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define QSZ 8
#define DESC 0x10000
#define AVAIL 0x11000
#define USED 0x12000
#define BUF 0x100000

struct fix {
	struct vm vm;
	unsigned slot;
	uint64_t bar0;
	uint16_t avail_idx;
};

static void mw(struct fix *f, uint64_t off, uint64_t v, unsigned size)
{
	bus_write(&f->vm.mmio, f->bar0 + off, &v, size);
}

static uint64_t mr(struct fix *f, uint64_t off, unsigned size)
{
	uint64_t v = 0;

	bus_read(&f->vm.mmio, f->bar0 + off, &v, size);
	return v;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	uint64_t c = VIRTIO_PCI_COMMON_OFF;

	if (!f || test_vm_create(&f->vm, 4 << 20) || pci_init(&f->vm) || virtio_rng_add(&f->vm))
		return -1;
	for (unsigned s = 0; s < PCI_MAX_DEVS; s++)
		if (pci_cfg_read(&f->vm, s << 3, 0, 4) == 0x10441af4u)
			f->slot = s;
	if (!f->slot)
		return -1;
	f->bar0 = pci_cfg_read(&f->vm, f->slot << 3, PCI_BAR0, 4) & ~0xfu;
	pci_cfg_write(&f->vm, f->slot << 3, PCI_COMMAND, 2,
		      PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	mw(f, c + VIRTIO_PCI_COMMON_STATUS, 3, 1);
	mw(f, c + VIRTIO_PCI_COMMON_GFSELECT, 1, 4);
	mw(f, c + VIRTIO_PCI_COMMON_GF, 1, 4); /* VERSION_1 only: no EVENT_IDX */
	mw(f, c + VIRTIO_PCI_COMMON_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK, 1);
	mw(f, c + VIRTIO_PCI_COMMON_Q_SELECT, 0, 2);
	mw(f, c + VIRTIO_PCI_COMMON_Q_SIZE, QSZ, 2);
	mw(f, c + VIRTIO_PCI_COMMON_Q_DESCLO, DESC, 8);
	mw(f, c + VIRTIO_PCI_COMMON_Q_AVAILLO, AVAIL, 8);
	mw(f, c + VIRTIO_PCI_COMMON_Q_USEDLO, USED, 8);
	mw(f, c + VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2);
	mw(f, c + VIRTIO_PCI_COMMON_STATUS,
	   3 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK, 1);
	if (mr(f, c + VIRTIO_PCI_COMMON_STATUS, 1) != (3 | 8 | 4))
		return -1;
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

static void set_desc(struct fix *f, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	struct virtq_desc d = {addr, len, flags, next};

	assert_int_equal(gm_write(&f->vm.mem, DESC + 16ull * i, &d, sizeof(d)), 0);
}

/* Offer head, ring the doorbell, wait for it to be used; returns the used length. */
static int run(struct fix *f, uint16_t head)
{
	struct timespec ts = {0, 1000000};
	uint16_t idx = 0;
	uint32_t len;

	assert_int_equal(gm_write(&f->vm.mem, AVAIL + 4 + 2 * (f->avail_idx % QSZ), &head, 2), 0);
	f->avail_idx++;
	assert_int_equal(gm_write(&f->vm.mem, AVAIL + 2, &f->avail_idx, 2), 0);
	mw(f, VIRTIO_PCI_NOTIFY_OFF, 0, 2);
	for (int i = 0; i < 5000; i++) {
		assert_int_equal(gm_read(&f->vm.mem, USED + 2, &idx, 2), 0);
		if (idx == f->avail_idx)
			break;
		nanosleep(&ts, NULL);
	}
	assert_int_equal(idx, f->avail_idx);
	assert_int_equal(gm_read(&f->vm.mem, USED + 4 + 8 * ((idx - 1) % QSZ) + 4, &len, 4), 0);
	return (int)len;
}

static bool all_zero(struct fix *f, uint64_t gpa, size_t n)
{
	const uint8_t *p = gm_ptr(&f->vm.mem, gpa, n);

	assert_non_null(p);
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static void test_fill(void **state)
{
	struct fix *f = *state;
	unsigned gsi = PCI_INTX_GSI(f->slot, 0);

	set_desc(f, 0, BUF, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, 1, BUF + 0x1000, 64, VIRTQ_DESC_F_WRITE, 0);
	assert_int_equal(run(f, 0), 128);
	assert_false(all_zero(f, BUF, 64));
	assert_false(all_zero(f, BUF + 0x1000, 64));
	assert_true(all_zero(f, BUF + 64, 64)); /* nothing past the buffer */
	/* No MSI-X: INTx is raised with ISR bit 0; reading the ISR lowers it. */
	for (int i = 0; i < 5000 && !fake_irqs(&f->vm)->level[gsi]; i++)
		usleep(1000);
	assert_int_equal(fake_irqs(&f->vm)->level[gsi], 1);
	assert_int_equal(mr(f, VIRTIO_PCI_ISR_OFF, 1), 1);
	assert_int_equal(fake_irqs(&f->vm)->level[gsi], 0);
	assert_int_equal(mr(f, VIRTIO_PCI_ISR_OFF, 1), 0);
	assert_int_equal(fake_nmsi(&f->vm), 0);
}

static void test_bounded(void **state)
{
	struct fix *f = *state;

	/* 128 KiB asked for: at most 64 KiB per request. */
	set_desc(f, 2, BUF, 128 << 10, VIRTQ_DESC_F_WRITE, 0);
	assert_int_equal(run(f, 2), 64 << 10);
	assert_true(all_zero(f, BUF + (64 << 10), 64 << 10));
	/* A readable-only chain gets nothing. */
	set_desc(f, 3, BUF + (200 << 10), 64, 0, 0);
	assert_int_equal(run(f, 3), 0);
	assert_true(all_zero(f, BUF + (200 << 10), 64));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_fill, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bounded, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
