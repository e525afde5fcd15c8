/* 16550A: the probes Linux's 8250 driver makes, THRE/RX interrupts, loopback, save/restore. */
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

#include "hw/serial.h"
#include "vmm/vm.h"

/* A CPU backend that only records interrupt line changes. */
static int irq_level[32], irq_rises[32];

static int fake_vm_create(struct vm *vm)
{
	return 0;
}

static void fake_vm_destroy(struct vm *vm)
{
}

static int fake_vcpu_create(struct vcpu *v)
{
	return 0;
}

static void fake_kick(struct vcpu *v)
{
}

static int fake_irq_line(struct vm *vm, uint32_t gsi, int level)
{
	if (gsi >= 32)
		return -EINVAL;
	if (level && !irq_level[gsi])
		irq_rises[gsi]++;
	irq_level[gsi] = level;
	return 0;
}

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .kick = fake_kick,
    .irq_line = fake_irq_line,
};

struct ctx {
	struct vm vm;
	struct serial *s;
	int out[2];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));
	struct vm_config cfg = {.mem_size = 4 << 20, .ncpus = 1, .cpu = &fake_backend};

	if (!c || pipe2(c->out, O_NONBLOCK) || vm_create(&c->vm, &cfg))
		return -1;
	if (serial_create(&c->vm, 0x3f8, 4, c->out[1], &c->s))
		return -1;
	memset(irq_level, 0, sizeof(irq_level));
	memset(irq_rises, 0, sizeof(irq_rises));
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	vm_destroy(&c->vm);
	close(c->out[0]);
	close(c->out[1]);
	free(c);
	return 0;
}

static size_t drain(struct ctx *c, char *buf, size_t cap)
{
	ssize_t n = read(c->out[0], buf, cap - 1);

	if (n < 0)
		n = 0;
	buf[n] = 0;
	return (size_t)n;
}

static uint8_t pio_in(struct ctx *c, uint16_t port)
{
	uint8_t v = 0;

	bus_read(&c->vm.pio, port, &v, 1);
	return v;
}

static void pio_out(struct ctx *c, uint16_t port, uint8_t v)
{
	bus_write(&c->vm.pio, port, &v, 1);
}

static void test_linux_probe(void **state)
{
	struct ctx *c = *state;

	/* Scratch register. */
	pio_out(c, 0x3ff, 0xa5);
	assert_int_equal(pio_in(c, 0x3ff), 0xa5);
	/* IER keeps its low nibble only. */
	pio_out(c, 0x3f9, 0xff);
	assert_int_equal(pio_in(c, 0x3f9), 0x0f);
	pio_out(c, 0x3f9, 0);
	/* Loopback: modem inputs follow outputs. */
	pio_out(c, 0x3fc, 0x10);
	assert_int_equal(pio_in(c, 0x3fe) & 0xf0, 0);
	pio_out(c, 0x3fc, 0x1f);
	assert_int_equal(pio_in(c, 0x3fe) & 0xf0, 0xf0);
	pio_out(c, 0x3fc, 0);
	/* FIFO enabled: IIR bits 7:6 set, no interrupt pending. */
	pio_out(c, 0x3fa, 0x07);
	assert_int_equal(pio_in(c, 0x3fa), 0xc1);
	/* Divisor latch. */
	pio_out(c, 0x3fb, 0x83);
	pio_out(c, 0x3f8, 0x01);
	pio_out(c, 0x3f9, 0x00);
	assert_int_equal(pio_in(c, 0x3f8), 0x01);
	pio_out(c, 0x3fb, 0x03);
	assert_int_equal(pio_in(c, 0x3fb), 0x03);
	/* Transmitter empty. */
	assert_int_equal(pio_in(c, 0x3fd) & 0x60, 0x60);
}

static void test_output_and_thre_irq(void **state)
{
	struct ctx *c = *state;
	char buf[64];
	int rises;

	pio_out(c, 0x3f9, 0x02); /* THRI */
	assert_int_equal(irq_level[4], 1);
	assert_int_equal(pio_in(c, 0x3fa) & 0x0f, 0x02);
	/* Reading IIR acknowledged it. */
	assert_int_equal(irq_level[4], 0);
	assert_int_equal(pio_in(c, 0x3fa) & 0x0f, 0x01);
	rises = irq_rises[4];
	pio_out(c, 0x3f8, 'h');
	pio_out(c, 0x3f8, 'i');
	/* Each transmitted byte gives a new edge. */
	assert_int_equal(irq_rises[4], rises + 2);
	/* Buffered until a newline or a flush. */
	assert_int_equal(drain(c, buf, sizeof(buf)), 0);
	pio_out(c, 0x3f8, '\n');
	assert_int_equal(drain(c, buf, sizeof(buf)), 3);
	assert_string_equal(buf, "hi\n");
	pio_out(c, 0x3f8, '$');
	serial_flush(c->s);
	drain(c, buf, sizeof(buf));
	assert_string_equal(buf, "$");
}

static void test_receive(void **state)
{
	struct ctx *c = *state;
	uint8_t big[2000];

	assert_int_equal(serial_inject(c->s, (const uint8_t *)"ab", 2), 2);
	assert_int_equal(pio_in(c, 0x3fd) & 1, 1);
	assert_int_equal(irq_level[4], 0); /* RDI not enabled yet */
	pio_out(c, 0x3f9, 0x01);
	assert_int_equal(irq_level[4], 1);
	assert_int_equal(pio_in(c, 0x3fa) & 0x0f, 0x04);
	assert_int_equal(pio_in(c, 0x3f8), 'a');
	assert_int_equal(irq_level[4], 1);
	assert_int_equal(pio_in(c, 0x3f8), 'b');
	assert_int_equal(irq_level[4], 0);
	assert_int_equal(pio_in(c, 0x3fd) & 1, 0);
	/* The queue is bounded: injection stops when it is full. */
	memset(big, 'x', sizeof(big));
	assert_true(serial_inject(c->s, big, sizeof(big)) < sizeof(big));
	/* FCR can clear it. */
	pio_out(c, 0x3fa, 0x03);
	assert_int_equal(pio_in(c, 0x3fd) & 1, 0);
}

static void test_loopback_data(void **state)
{
	struct ctx *c = *state;
	char buf[16];

	pio_out(c, 0x3fc, 0x10);
	pio_out(c, 0x3f8, 'Z');
	pio_out(c, 0x3f8, '\n');
	assert_int_equal(pio_in(c, 0x3fd) & 1, 1);
	assert_int_equal(pio_in(c, 0x3f8), 'Z');
	serial_flush(c->s);
	assert_int_equal(drain(c, buf, sizeof(buf)), 0);
	/* Host input does not reach a UART in loopback. */
	assert_int_equal(serial_inject(c->s, (const uint8_t *)"q", 1), 0);
}

static const struct device_ops *serial_ops(struct ctx *c)
{
	for (struct device *d = c->vm.devices; d; d = d->next)
		if (!strcmp(d->ops->name, "serial"))
			return d->ops;
	return NULL;
}

static void test_save_restore(void **state)
{
	struct ctx *c = *state;
	const struct device_ops *ops = serial_ops(c);
	struct dev_buf b = {0};

	assert_non_null(ops);
	pio_out(c, 0x3ff, 0x77);
	pio_out(c, 0x3f9, 0x01);
	serial_inject(c->s, (const uint8_t *)"xyz", 3);
	assert_int_equal(ops->save(c->s, &b), 0);
	ops->reset(c->s);
	assert_int_equal(pio_in(c, 0x3ff), 0);
	assert_int_equal(pio_in(c, 0x3fd) & 1, 0);
	assert_int_equal(irq_level[4], 0);
	assert_int_equal(ops->restore(c->s, b.data, b.len), 0);
	assert_int_equal(pio_in(c, 0x3ff), 0x77);
	assert_int_equal(irq_level[4], 1);
	assert_int_equal(pio_in(c, 0x3f8), 'x');
	assert_int_equal(pio_in(c, 0x3f8), 'y');
	assert_int_equal(pio_in(c, 0x3f8), 'z');
	/* Malformed state is refused. */
	assert_int_equal(ops->restore(c->s, b.data, b.len - 1), -EINVAL);
	b.data[0] = 99;
	assert_int_equal(ops->restore(c->s, b.data, b.len), -EINVAL);
	b.data[0] = 1;
	b.data[12] = 0xff;
	b.data[13] = 0xff;
	assert_int_equal(ops->restore(c->s, b.data, b.len), -EINVAL);
	dev_buf_free(&b);
}

static void test_panic_marker(void **state)
{
	struct ctx *c = *state;
	const char *msg = "Kernel panic - not syncing: boom\n---[ end Kernel panic - not "
			  "syncing: boom ]---\n";
	char buf[256];

	for (const char *p = msg; *p; p++) {
		if (p == strstr(msg, "]---"))
			assert_int_equal(c->vm.stop_reason, VM_RUNNING);
		pio_out(c, 0x3f8, (uint8_t)*p);
	}
	assert_int_equal(c->vm.stop_reason, VM_STOP_PANIC);
	drain(c, buf, sizeof(buf));
	assert_string_equal(buf, msg);
}

static void test_no_false_panic(void **state)
{
	struct ctx *c = *state;
	const char *msg = "[ end Kernel pani\n[[ end Kernel xpanic\n";

	for (const char *p = msg; *p; p++)
		pio_out(c, 0x3f8, (uint8_t)*p);
	assert_int_equal(c->vm.stop_reason, VM_RUNNING);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_linux_probe, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_output_and_thre_irq, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_receive, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loopback_data, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_save_restore, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_panic_marker, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_false_panic, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
