/* Exit device, i8042 reset line, ACPI sleep/reset registers: each stops the VM for its reason. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "arch/x86/acpi.h"
#include "arch/x86/layout.h"
#include "hw/platform.h"
#include "vmm/vm.h"

#include "unit/fake_vm.h"

static int setup(void **state)
{
	*state = fake_vm_new(4 << 20, platform_devices_create);
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	fake_vm_free(*state);
	return 0;
}

static void out8(struct vm *vm, uint16_t port, uint8_t v)
{
	assert_true(bus_write(&vm->pio, port, &v, 1));
}

static void test_exit_status(void **state)
{
	struct vm *vm = *state;
	uint8_t v = 0xff;

	assert_true(bus_read(&vm->pio, TERN_EXIT_PORT, &v, 1));
	assert_int_equal(v, 0);
	assert_int_equal(vm->exit_status, -1);
	out8(vm, TERN_EXIT_PORT, 7);
	assert_int_equal(vm->exit_status, 7);
	assert_int_equal(vm->stop_reason, VM_STOP_POWEROFF);
	/* The first status wins. */
	out8(vm, TERN_EXIT_PORT, 9);
	assert_int_equal(vm->exit_status, 7);
}

static void test_exit_status_255(void **state)
{
	struct vm *vm = *state;
	uint32_t v = 0x12345fff;

	/* A wider write still reports its low byte. */
	assert_true(bus_write(&vm->pio, TERN_EXIT_PORT, &v, 1));
	assert_int_equal(vm->exit_status, 255);
}

static void test_i8042_reset(void **state)
{
	struct vm *vm = *state;
	uint8_t st = 0xff;

	/* Status: input buffer empty, so the kernel's reboot loop proceeds. */
	assert_true(bus_read(&vm->pio, I8042_CMD_PORT, &st, 1));
	assert_int_equal(st & 0x02, 0);
	out8(vm, I8042_CMD_PORT, 0xad); /* other commands do nothing */
	assert_int_equal(vm->stop_reason, VM_RUNNING);
	out8(vm, I8042_CMD_PORT, 0xfe);
	assert_int_equal(vm->stop_reason, VM_STOP_RESET);
}

static void test_i8042_output_port_reset(void **state)
{
	struct vm *vm = *state;

	out8(vm, I8042_CMD_PORT, 0xd1);
	out8(vm, I8042_DATA_PORT, 0x01); /* reset line high: nothing */
	assert_int_equal(vm->stop_reason, VM_RUNNING);
	out8(vm, I8042_CMD_PORT, 0xd1);
	out8(vm, I8042_DATA_PORT, 0x00);
	assert_int_equal(vm->stop_reason, VM_STOP_RESET);
	/* 0x61 (port B) is not the i8042's. */
	{
		uint8_t v = 0;

		assert_false(bus_read(&vm->pio, 0x61, &v, 1));
	}
}

static void test_acpi_s5(void **state)
{
	struct vm *vm = *state;

	/* SLP_EN without S5, and S5 without SLP_EN, are not power-off. */
	out8(vm, ACPI_SLEEP_CTL_PORT, (3 << 2) | ACPI_SLP_EN);
	out8(vm, ACPI_SLEEP_CTL_PORT, ACPI_S5_SLP_TYP << 2);
	assert_int_equal(vm->stop_reason, VM_RUNNING);
	out8(vm, ACPI_SLEEP_STS_PORT, 0xff);
	out8(vm, ACPI_SLEEP_CTL_PORT, (ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN);
	assert_int_equal(vm->stop_reason, VM_STOP_POWEROFF);
	assert_int_equal(vm->exit_status, -1);
}

static void test_acpi_reset(void **state)
{
	struct vm *vm = *state;

	out8(vm, ACPI_RESET_PORT, 0x02);
	assert_int_equal(vm->stop_reason, VM_RUNNING);
	out8(vm, ACPI_RESET_PORT, ACPI_RESET_VALUE);
	assert_int_equal(vm->stop_reason, VM_STOP_RESET);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_exit_status, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_exit_status_255, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_i8042_reset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_i8042_output_port_reset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_acpi_s5, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_acpi_reset, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
