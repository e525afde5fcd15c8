/* I/O bus: dispatch by range, faked answers for absent devices, overlap refusal. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "vmm/bus.h"

struct fake_dev {
	uint64_t last_off;
	unsigned last_size;
	uint32_t last_val;
	unsigned reads, writes;
	uint8_t fill;
};

static void fake_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	struct fake_dev *d = opaque;

	d->reads++;
	d->last_off = off;
	d->last_size = size;
	memset(data, d->fill, size);
}

static void fake_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct fake_dev *d = opaque;

	d->writes++;
	d->last_off = off;
	d->last_size = size;
	d->last_val = 0;
	memcpy(&d->last_val, data, size < 4 ? size : 4);
}

static const struct bus_ops fake_ops = {.read = fake_read, .write = fake_write};

static int setup(void **state)
{
	static struct io_bus bus;

	if (bus_init(&bus, "test"))
		return -1;
	*state = &bus;
	return 0;
}

static int teardown(void **state)
{
	bus_destroy(*state);
	return 0;
}

static void test_dispatch_offset(void **state)
{
	struct io_bus *bus = *state;
	struct fake_dev a = {.fill = 0x11}, b = {.fill = 0x22};
	uint32_t v = 0;

	assert_int_equal(bus_register(bus, 0x3f8, 8, &fake_ops, &a, "a"), 0);
	assert_int_equal(bus_register(bus, 0x60, 1, &fake_ops, &b, "b"), 0);

	assert_true(bus_read(bus, 0x3fd, &v, 1));
	assert_int_equal(a.reads, 1);
	assert_int_equal(a.last_off, 5);
	assert_int_equal(v & 0xff, 0x11);

	v = 0xabcd;
	assert_true(bus_write(bus, 0x3f8, &v, 2));
	assert_int_equal(a.writes, 1);
	assert_int_equal(a.last_off, 0);
	assert_int_equal(a.last_size, 2);
	assert_int_equal(a.last_val, 0xabcd);

	assert_true(bus_read(bus, 0x60, &v, 1));
	assert_int_equal(b.reads, 1);
	assert_int_equal(b.last_off, 0);
	assert_int_equal(a.reads, 1);
}

static void test_unclaimed_all_ones(void **state)
{
	struct io_bus *bus = *state;
	struct fake_dev a = {.fill = 0};
	uint64_t v = 0;

	assert_int_equal(bus_register(bus, 0x1000, 0x10, &fake_ops, &a, "a"), 0);
	assert_false(bus_read(bus, 0x2000, &v, 4));
	assert_int_equal(v, 0xffffffffull);
	v = 0;
	assert_false(bus_read(bus, 0xfff, &v, 8));
	assert_int_equal(v, UINT64_MAX);
	/* Straddling the end of a range is not the device's business. */
	v = 0;
	assert_false(bus_read(bus, 0x100e, &v, 4));
	assert_int_equal(v, 0xffffffffull);
	assert_false(bus_write(bus, 0x2000, &v, 4));
	assert_int_equal(a.reads + a.writes, 0);
	assert_int_equal(bus->unclaimed, 4);
	/* Many distinct pages: only counted once the log table is full. */
	for (uint64_t p = 0; p < 100; p++)
		bus_read(bus, 0x100000 + (p << 12), &v, 1);
	assert_int_equal(bus->unclaimed, 104);
	assert_true(bus->nlogged <= BUS_LOGGED_MAX);
}

static void test_overlap_refused(void **state)
{
	struct io_bus *bus = *state;
	struct fake_dev a = {0};

	assert_int_equal(bus_register(bus, 0x100, 0x10, &fake_ops, &a, "a"), 0);
	assert_int_equal(bus_register(bus, 0x10f, 1, &fake_ops, &a, "x"), -EBUSY);
	assert_int_equal(bus_register(bus, 0xf0, 0x11, &fake_ops, &a, "x"), -EBUSY);
	assert_int_equal(bus_register(bus, 0x0, 0x1000, &fake_ops, &a, "x"), -EBUSY);
	assert_int_equal(bus_register(bus, 0x104, 2, &fake_ops, &a, "x"), -EBUSY);
	/* Adjacent on both sides is fine. */
	assert_int_equal(bus_register(bus, 0xf0, 0x10, &fake_ops, &a, "lo"), 0);
	assert_int_equal(bus_register(bus, 0x110, 0x10, &fake_ops, &a, "hi"), 0);
	/* Empty and wrapping ranges are invalid. */
	assert_int_equal(bus_register(bus, 0x500, 0, &fake_ops, &a, "x"), -EINVAL);
	assert_int_equal(bus_register(bus, UINT64_MAX - 1, 4, &fake_ops, &a, "x"), -EINVAL);
	/* The very top of the address space can be claimed. */
	assert_int_equal(bus_register(bus, UINT64_MAX - 3, 4, &fake_ops, &a, "top"), 0);
	assert_int_equal(bus->count, 4);
	for (unsigned i = 1; i < bus->count; i++)
		assert_true(bus->ranges[i - 1].base < bus->ranges[i].base);
}

static void test_unregister_and_move(void **state)
{
	struct io_bus *bus = *state;
	struct fake_dev a = {.fill = 0x5a};
	uint8_t v;

	assert_int_equal(bus_register(bus, 0xc0000000, 0x1000, &fake_ops, &a, "bar"), 0);
	assert_true(bus_read(bus, 0xc0000010, &v, 1));
	assert_int_equal(bus_unregister(bus, 0xc0000000), 0);
	assert_int_equal(bus_unregister(bus, 0xc0000000), -ENOENT);
	assert_false(bus_read(bus, 0xc0000010, &v, 1));
	assert_int_equal(v, 0xff);
	assert_int_equal(bus_register(bus, 0xd0000000, 0x1000, &fake_ops, &a, "bar"), 0);
	assert_true(bus_read(bus, 0xd0000fff, &v, 1));
	assert_int_equal(v, 0x5a);
	assert_int_equal(a.last_off, 0xfff);
}

static void test_many_ranges(void **state)
{
	struct io_bus *bus = *state;
	struct fake_dev devs[64];
	uint8_t v;

	memset(devs, 0, sizeof(devs));
	/* Register in a scrambled order; lookups must still find each. */
	for (unsigned k = 0; k < 64; k++) {
		unsigned i = (k * 37) % 64;

		devs[i].fill = (uint8_t)i;
		assert_int_equal(
		    bus_register(bus, 0x10000 + i * 0x100, 0x80, &fake_ops, &devs[i], "d"), 0);
	}
	for (unsigned i = 0; i < 64; i++) {
		assert_true(bus_read(bus, 0x10000 + i * 0x100 + 0x7f, &v, 1));
		assert_int_equal(v, i);
		assert_false(bus_read(bus, 0x10000 + i * 0x100 + 0x80, &v, 1));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_dispatch_offset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unclaimed_all_ones, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlap_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unregister_and_move, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_ranges, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
