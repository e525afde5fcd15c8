/*
 * What clones rely on, without a guest kernel: the identity device as the
 * guest reads it through PCI configuration space (read-only to the guest,
 * renewed as restore and clone ask), its save/restore, and the machine
 * description's MACHINE record (round trip; truncated or hostile records
 * refused).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hw/pci.h"
#include "state/identity.h"
#include "state/machine_desc.h"
#include "state/state_int.h"
#include "vmm/vm.h"

#define MEM_SIZE (32ull << 20)

struct fx {
	struct vm vm;
	int null_fd;
	unsigned devfn;
	unsigned cap;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct vm_config cfg = {.mem_size = MEM_SIZE, .ncpus = 1, .cpu = &cpu_backend_emu};
	struct machine_desc d = {.cpus = 1, .mem_mib = MEM_SIZE >> 20, .identity = true};

	assert_non_null(f);
	f->null_fd = open("/dev/null", O_WRONLY);
	assert_int_equal(vm_create(&f->vm, &cfg), 0);
	assert_int_equal(machine_desc_build(&f->vm, &d, f->null_fd, false), 0);
	/* Find the device the way a guest does: by vendor and device id. */
	f->devfn = ~0u;
	for (unsigned slot = 0; slot < PCI_MAX_DEVS; slot++)
		if (pci_cfg_read(&f->vm, slot << 3, PCI_VENDOR_ID, 4) ==
		    (IDENTITY_VENDOR | (uint32_t)IDENTITY_DEVICE << 16))
			f->devfn = slot << 3;
	assert_int_not_equal(f->devfn, ~0u);
	f->cap = pci_cfg_read(&f->vm, f->devfn, PCI_CAPABILITY_LIST, 1);
	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap, 1), PCI_CAP_ID_VNDR);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	vm_destroy(&f->vm);
	close(f->null_fd);
	free(f);
	return 0;
}

static void guest_read(struct fx *f, unsigned off, void *buf, unsigned len)
{
	uint8_t *b = buf;

	for (unsigned i = 0; i < len; i++)
		b[i] = (uint8_t)pci_cfg_read(&f->vm, f->devfn, f->cap + off + i, 1);
}

static uint32_t guest_index(struct fx *f)
{
	return pci_cfg_read(&f->vm, f->devfn, f->cap + 4, 4);
}

static void test_fresh_identity(void **state)
{
	struct fx *f = *state;
	uint8_t gen[16], uuid[16], zero[16] = {0};

	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap + 2, 1), 44);
	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap + 3, 1), 1);
	assert_int_equal(guest_index(f), IDENTITY_NOT_A_CLONE);
	guest_read(f, 8, gen, 16);
	guest_read(f, 24, uuid, 16);
	assert_memory_not_equal(gen, zero, 16);
	assert_memory_not_equal(uuid, zero, 16);
	assert_memory_not_equal(gen, uuid, 16);
	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap + 40, 4), 0);
}

static void test_guest_cannot_write(void **state)
{
	struct fx *f = *state;
	uint8_t before[44], after[44];

	guest_read(f, 0, before, sizeof(before));
	for (unsigned off = 0; off < 44; off += 4)
		pci_cfg_write(&f->vm, f->devfn, f->cap + off, 4, 0x5a5a5a5a);
	guest_read(f, 0, after, sizeof(after));
	assert_memory_equal(before, after, sizeof(before));
}

static void test_renew(void **state)
{
	struct fx *f = *state;
	uint8_t g0[16], u0[16], g1[16], u1[16], g2[16], u2[16];

	guest_read(f, 8, g0, 16);
	guest_read(f, 24, u0, 16);
	/* A restore: new generation, same VM id, not a clone. */
	assert_int_equal(identity_renew(&f->vm, IDENTITY_NOT_A_CLONE), 0);
	guest_read(f, 8, g1, 16);
	guest_read(f, 24, u1, 16);
	assert_memory_not_equal(g0, g1, 16);
	assert_memory_equal(u0, u1, 16);
	assert_int_equal(guest_index(f), IDENTITY_NOT_A_CLONE);
	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap + 40, 4), 1);
	/* A clone: new generation, new VM id, its index. */
	assert_int_equal(identity_renew(&f->vm, 7), 0);
	guest_read(f, 8, g2, 16);
	guest_read(f, 24, u2, 16);
	assert_memory_not_equal(g1, g2, 16);
	assert_memory_not_equal(u1, u2, 16);
	assert_int_equal(guest_index(f), 7);
	assert_int_equal(pci_cfg_read(&f->vm, f->devfn, f->cap + 40, 4), 2);
}

/* The device's saved state brings its identity back; a damaged blob is refused. */
static void test_save_restore(void **state)
{
	struct fx *f = *state;
	struct device *dev = NULL;
	struct dev_buf b = {0};
	uint8_t saved[44], now[44];

	for (struct device *d = f->vm.devices; d; d = d->next)
		if (!strcmp(d->ops->name, "identity"))
			dev = d;
	assert_non_null(dev);
	assert_int_equal(identity_renew(&f->vm, 3), 0);
	guest_read(f, 0, saved, sizeof(saved));
	assert_int_equal(dev->ops->save(dev->dev, &b), 0);
	assert_int_equal(identity_renew(&f->vm, 9), 0);
	assert_int_equal(dev->ops->restore(dev->dev, b.data, b.len), 0);
	guest_read(f, 0, now, sizeof(now));
	assert_memory_equal(saved, now, sizeof(saved));
	for (uint64_t n = 0; n < b.len; n++)
		assert_int_not_equal(dev->ops->restore(dev->dev, b.data, n), 0);
	dev_buf_free(&b);
}

static void fill_desc(struct machine_desc *d)
{
	memset(d, 0, sizeof(*d));
	d->kernel = strdup("/boot/vmlinuz");
	d->cmdline = strdup("console=ttyS0 tern.cmd=AAAA");
	d->accel = strdup("emu");
	d->cpus = 2;
	d->mem_mib = 512;
	d->balloon = true;
	d->balloon_no_reporting = true;
	d->identity = true;
	assert_int_equal(machine_desc_add_disk(d, "/var/disk.img", false), 0);
	assert_int_equal(machine_desc_add_disk(d, "/var/ro.qcow2", true), 0);
	d->disks[0].size = 1 << 20;
}

static void test_record_round_trip(void **state)
{
	struct machine_desc d, back;
	struct dev_buf b = {0};

	fill_desc(&d);
	assert_int_equal(snap_desc_encode(&d, &b), 0);
	assert_int_equal(snap_desc_decode(b.data, b.len, &back), 0);
	assert_string_equal(back.kernel, "/boot/vmlinuz");
	assert_null(back.initrd);
	assert_string_equal(back.cmdline, d.cmdline);
	assert_string_equal(back.accel, "emu");
	assert_int_equal(back.cpus, 2);
	assert_int_equal(back.mem_mib, 512);
	assert_true(back.balloon && back.identity && back.balloon_no_reporting);
	assert_int_equal(back.ndisks, 2);
	assert_string_equal(back.disks[1].path, "/var/ro.qcow2");
	assert_true(back.disks[1].readonly && !back.disks[0].readonly);
	assert_int_equal(back.disks[0].size, 1 << 20);
	machine_desc_clear(&back);
	/* Every truncation, and one byte too many, is refused. */
	for (uint64_t n = 0; n < b.len; n++)
		assert_int_not_equal(snap_desc_decode(b.data, n, &back), 0);
	assert_int_equal(dev_buf_put(&b, "x", 1), 0);
	assert_int_not_equal(snap_desc_decode(b.data, b.len, &back), 0);
	dev_buf_free(&b);
	machine_desc_clear(&d);
}

/* Overwrite the u32 at off of a fresh record and decode it. */
static int decode_patched(unsigned off, uint32_t v)
{
	struct machine_desc d, back;
	struct dev_buf b = {0};
	int err;

	fill_desc(&d);
	assert_int_equal(snap_desc_encode(&d, &b), 0);
	memcpy(b.data + off, &v, 4);
	err = snap_desc_decode(b.data, b.len, &back);
	if (!err)
		machine_desc_clear(&back);
	dev_buf_free(&b);
	machine_desc_clear(&d);
	return err;
}

static void test_hostile_records(void **state)
{
	/* Layout: version 0, flags 4, cpus 8, mem 12, kernel length 20. */
	assert_int_equal(decode_patched(0, 3), -EPROTONOSUPPORT);
	assert_int_equal(decode_patched(4, 8), -EINVAL);	   /* unknown flag */
	assert_int_equal(decode_patched(4, 4), -EINVAL);	   /* no-reporting without a balloon */
	assert_int_equal(decode_patched(8, 256), -EINVAL);	   /* more than a state file holds */
	assert_int_equal(decode_patched(16, 0x10000), -EINVAL);  /* RAM MiB, high half: beyond 1 TiB */
	assert_int_equal(decode_patched(20, 0xffffffff), -EINVAL); /* kernel length */
	assert_int_equal(decode_patched(20, 4096), -EINVAL);
	/* Version 1: disk count above 16, a path with a NUL, readonly not 0/1. */
	{
		uint8_t v1[] = {1, 0, 0, 0, 17, 0, 0, 0};
		uint8_t nul[] = {1, 0, 0, 0,   1, 0, 0, 0, 0, 0, 0, 0, 2,
				 0, 0, 0, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0};
		uint8_t ro[] = {1, 0, 0, 0,   1, 0, 0, 0, 2, 0, 0, 0, 1,
				0, 0, 0, 'a', 0, 0, 0, 0, 0, 0, 0, 0};
		struct machine_desc back;

		assert_int_equal(snap_desc_decode(v1, sizeof(v1), &back), -EINVAL);
		assert_int_equal(snap_desc_decode(nul, sizeof(nul), &back), -EINVAL);
		assert_int_equal(snap_desc_decode(ro, sizeof(ro), &back), -EINVAL);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_fresh_identity, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_guest_cannot_write, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_renew, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_save_restore, setup, teardown),
	    cmocka_unit_test(test_record_round_trip),
	    cmocka_unit_test(test_hostile_records),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
