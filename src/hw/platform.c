/* Exit device, i8042 reset line, ACPI sleep and reset registers. */
#include "hw/platform.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "arch/x86/acpi.h"
#include "arch/x86/layout.h"
#include "util/log.h"
#include "vmm/vm.h"

#define I8042_CMD_WRITE_OUTPUT 0xd1
#define I8042_CMD_PULSE_RESET 0xfe

struct platform {
	struct vm *vm;
	pthread_mutex_t lock;
	uint8_t i8042_cmd; /* last command awaiting a data byte */
	uint8_t sleep_sts;
};

static void exit_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct platform *p = opaque;
	struct vm *vm = p->vm;
	uint8_t status = *(const uint8_t *)data;

	pthread_mutex_lock(&vm->lock);
	/* The first status wins, like the first stop reason. */
	if (vm->exit_status < 0)
		vm->exit_status = status;
	pthread_mutex_unlock(&vm->lock);
	vm_request_stop(vm, VM_STOP_POWEROFF);
}

static void exit_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	/* Reads 0 (not all ones): lets the guest see that the device exists. */
	memset(data, 0, size);
}

static const struct bus_ops exit_ops = {.read = exit_read, .write = exit_write};

static void i8042_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	/* Status: output buffer empty, input buffer empty; data: nothing. */
	memset(data, 0, size);
}

static void i8042_access(struct platform *p, bool cmd_port, uint8_t v)
{
	bool reset = false;

	pthread_mutex_lock(&p->lock);
	if (cmd_port) {
		p->i8042_cmd = v;
		reset = v == I8042_CMD_PULSE_RESET;
	} else if (p->i8042_cmd == I8042_CMD_WRITE_OUTPUT) {
		/* Output port bit 0 is the CPU reset line, active low. */
		reset = !(v & 1);
		p->i8042_cmd = 0;
	}
	pthread_mutex_unlock(&p->lock);
	if (reset)
		vm_request_stop(p->vm, VM_STOP_RESET);
}

static void i8042_data_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	i8042_access(opaque, false, *(const uint8_t *)data);
}

static void i8042_cmd_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	i8042_access(opaque, true, *(const uint8_t *)data);
}

static const struct bus_ops i8042_data_ops = {.read = i8042_read, .write = i8042_data_write};
static const struct bus_ops i8042_cmd_ops = {.read = i8042_read, .write = i8042_cmd_write};

static void acpi_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	struct platform *p = opaque;

	memset(data, 0, size);
	if (off == ACPI_SLEEP_STS_PORT - ACPI_SLEEP_CTL_PORT) {
		pthread_mutex_lock(&p->lock);
		*(uint8_t *)data = p->sleep_sts;
		pthread_mutex_unlock(&p->lock);
	}
}

static void acpi_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct platform *p = opaque;
	uint8_t v = *(const uint8_t *)data;

	switch (off + ACPI_SLEEP_CTL_PORT) {
	case ACPI_SLEEP_CTL_PORT:
		if ((v & ACPI_SLP_EN) && ((v >> 2) & 7) == ACPI_S5_SLP_TYP)
			vm_request_stop(p->vm, VM_STOP_POWEROFF);
		else if (v & ACPI_SLP_EN)
			pr_warn_once("guest asked for ACPI sleep type %u; only S5 (off) exists",
				     (v >> 2) & 7);
		break;
	case ACPI_SLEEP_STS_PORT:
		/* Write-1-to-clear status bits. */
		pthread_mutex_lock(&p->lock);
		p->sleep_sts &= (uint8_t)~v;
		pthread_mutex_unlock(&p->lock);
		break;
	case ACPI_RESET_PORT:
		if (v == ACPI_RESET_VALUE)
			vm_request_stop(p->vm, VM_STOP_RESET);
		break;
	}
}

static const struct bus_ops acpi_ops = {.read = acpi_read, .write = acpi_write};

static int platform_save(void *opaque, struct dev_buf *out)
{
	struct platform *p = opaque;
	uint8_t st[3];

	pthread_mutex_lock(&p->lock);
	st[0] = 1; /* version */
	st[1] = p->i8042_cmd;
	st[2] = p->sleep_sts;
	pthread_mutex_unlock(&p->lock);
	return dev_buf_put(out, st, sizeof(st));
}

static int platform_restore(void *opaque, const void *data, uint64_t len)
{
	struct platform *p = opaque;
	const uint8_t *st = data;

	if (len != 3 || st[0] != 1)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	p->i8042_cmd = st[1];
	p->sleep_sts = st[2];
	pthread_mutex_unlock(&p->lock);
	return 0;
}

static void platform_reset(void *opaque)
{
	struct platform *p = opaque;

	pthread_mutex_lock(&p->lock);
	p->i8042_cmd = 0;
	p->sleep_sts = 0;
	pthread_mutex_unlock(&p->lock);
}

static void platform_destroy(void *opaque)
{
	struct platform *p = opaque;

	pthread_mutex_destroy(&p->lock);
	free(p);
}

static const struct device_ops platform_dev_ops = {
    .name = "platform",
    .save = platform_save,
    .restore = platform_restore,
    .reset = platform_reset,
    .destroy = platform_destroy,
};

int platform_devices_create(struct vm *vm)
{
	struct platform *p = calloc(1, sizeof(*p));
	int err;

	if (!p)
		return -ENOMEM;
	p->vm = vm;
	pthread_mutex_init(&p->lock, NULL);
	err = vm_add_device(vm, &platform_dev_ops, p);
	if (err) {
		platform_destroy(p);
		return err;
	}
	err = bus_register(&vm->pio, TERN_EXIT_PORT, 1, &exit_ops, p, "exit");
	if (!err)
		err = bus_register(&vm->pio, I8042_DATA_PORT, 1, &i8042_data_ops, p, "i8042");
	if (!err)
		err = bus_register(&vm->pio, I8042_CMD_PORT, 1, &i8042_cmd_ops, p, "i8042");
	if (!err)
		err = bus_register(&vm->pio, ACPI_SLEEP_CTL_PORT, 3, &acpi_ops, p, "acpi-pm");
	return err;
}
