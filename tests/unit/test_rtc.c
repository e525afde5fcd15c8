/* CMOS RTC: host UTC time in BCD and binary, status registers, NVRAM, save/restore. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "hw/rtc.h"
#include "vmm/vm.h"

#include "unit/fake_vm.h"

static int setup(void **state)
{
	*state = fake_vm_new(4 << 20, rtc_create);
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	fake_vm_free(*state);
	return 0;
}

static uint8_t cmos(struct vm *vm, uint8_t reg)
{
	uint8_t v = 0;

	assert_true(bus_write(&vm->pio, 0x70, &reg, 1));
	assert_true(bus_read(&vm->pio, 0x71, &v, 1));
	return v;
}

static void cmos_set(struct vm *vm, uint8_t reg, uint8_t v)
{
	assert_true(bus_write(&vm->pio, 0x70, &reg, 1));
	assert_true(bus_write(&vm->pio, 0x71, &v, 1));
}

static int bcd(uint8_t v)
{
	return (v >> 4) * 10 + (v & 0xf);
}

static time_t read_time(struct vm *vm, int binary)
{
	int (*dec)(uint8_t) = binary ? NULL : bcd;
	struct tm tm = {0};
	uint8_t r[6] = {cmos(vm, 0), cmos(vm, 2), cmos(vm, 4),
			cmos(vm, 7), cmos(vm, 8), cmos(vm, 9)};
	int century = dec ? dec(cmos(vm, 0x32)) : cmos(vm, 0x32);

	tm.tm_sec = dec ? dec(r[0]) : r[0];
	tm.tm_min = dec ? dec(r[1]) : r[1];
	tm.tm_hour = dec ? dec(r[2]) : r[2];
	tm.tm_mday = dec ? dec(r[3]) : r[3];
	tm.tm_mon = (dec ? dec(r[4]) : r[4]) - 1;
	tm.tm_year = century * 100 + (dec ? dec(r[5]) : r[5]) - 1900;
	return timegm(&tm);
}

static void test_time_bcd_and_binary(void **state)
{
	struct vm *vm = *state;
	time_t t;

	/* Status: no update in progress, valid RAM and time, 24-hour BCD. */
	assert_int_equal(cmos(vm, 0x0a) & 0x80, 0);
	assert_int_equal(cmos(vm, 0x0d) & 0x80, 0x80);
	assert_int_equal(cmos(vm, 0x0b) & 0x06, 0x02);
	t = read_time(vm, 0);
	assert_true(llabs((long long)(t - time(NULL))) <= 2);
	cmos_set(vm, 0x0b, 0x06);
	t = read_time(vm, 1);
	assert_true(llabs((long long)(t - time(NULL))) <= 2);
	/* The NMI-mask bit of the index port does not change which register is read. */
	assert_int_equal(cmos(vm, 0x8d) & 0x80, 0x80);
}

static void test_nvram_and_save_restore(void **state)
{
	struct vm *vm = *state;
	const struct device_ops *ops = NULL;
	void *dev = NULL;
	struct dev_buf b = {0};

	cmos_set(vm, 0x40, 0x5a);
	assert_int_equal(cmos(vm, 0x40), 0x5a);
	/* Guest writes to the clock do not stick: the host clock is the truth. */
	cmos_set(vm, 0x0d, 0x00);
	assert_int_equal(cmos(vm, 0x0d) & 0x80, 0x80);
	for (struct device *d = vm->devices; d; d = d->next)
		if (!strcmp(d->ops->name, "rtc")) {
			ops = d->ops;
			dev = d->dev;
		}
	assert_non_null(ops);
	assert_int_equal(ops->save(dev, &b), 0);
	ops->reset(dev);
	assert_int_equal(cmos(vm, 0x40), 0);
	assert_int_equal(ops->restore(dev, b.data, b.len), 0);
	assert_int_equal(cmos(vm, 0x40), 0x5a);
	assert_int_equal(ops->restore(dev, b.data, b.len - 1), -EINVAL);
	dev_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_time_bcd_and_binary, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nvram_and_save_restore, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
