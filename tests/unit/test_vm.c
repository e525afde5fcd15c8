/* struct vm with a fake CPU backend: vCPU thread state machine, stop reasons, pause, teardown. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "vmm/vm.h"

/* What fake_run() does: spin until kicked, or report a halt/shutdown at once. */
enum fake_mode { FAKE_SPIN, FAKE_HLT, FAKE_SHUTDOWN };

struct fake_vcpu {
	int kicked;
	int runs;
};

static int fake_vm_mode;
static int fake_vms_alive, fake_vcpus_alive;

static int fake_vm_create(struct vm *vm)
{
	fake_vms_alive++;
	return 0;
}

static void fake_vm_destroy(struct vm *vm)
{
	fake_vms_alive--;
}

static int fake_vcpu_create(struct vcpu *v)
{
	v->backend = calloc(1, sizeof(struct fake_vcpu));
	if (!v->backend)
		return -ENOMEM;
	__atomic_fetch_add(&fake_vcpus_alive, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static void fake_vcpu_destroy(struct vcpu *v)
{
	free(v->backend);
	v->backend = NULL;
	__atomic_fetch_sub(&fake_vcpus_alive, 1, __ATOMIC_SEQ_CST);
}

static enum vcpu_exit fake_run(struct vcpu *v)
{
	struct fake_vcpu *f = v->backend;
	uint8_t b = 0x42;

	f->runs++;
	vm_pio(v, 0x80, &b, 1, 1);
	if (fake_vm_mode == FAKE_HLT)
		return VCPU_EXIT_HLT;
	if (fake_vm_mode == FAKE_SHUTDOWN && v->id == 0)
		return VCPU_EXIT_SHUTDOWN;
	while (!__atomic_exchange_n(&f->kicked, 0, __ATOMIC_SEQ_CST))
		usleep(100);
	return VCPU_EXIT_KICK;
}

static void fake_kick(struct vcpu *v)
{
	struct fake_vcpu *f = v->backend;

	__atomic_store_n(&f->kicked, 1, __ATOMIC_SEQ_CST);
}

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .vcpu_destroy = fake_vcpu_destroy,
    .run = fake_run,
    .kick = fake_kick,
};

struct port_dev {
	int writes;
	int destroyed, paused, resumed;
};

static void port_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct port_dev *d = opaque;

	__atomic_fetch_add(&d->writes, 1, __ATOMIC_SEQ_CST);
}

static const struct bus_ops port_ops = {.write = port_write};

static void dev_pause(void *p)
{
	((struct port_dev *)p)->paused++;
}

static void dev_resume(void *p)
{
	((struct port_dev *)p)->resumed++;
}

static void dev_destroy(void *p)
{
	((struct port_dev *)p)->destroyed++;
}

static const struct device_ops port_dev_ops = {
    .name = "port", .pause = dev_pause, .resume = dev_resume, .destroy = dev_destroy};

static void make_vm(struct vm *vm, int ncpus, struct port_dev *d)
{
	struct vm_config cfg = {.mem_size = 16 << 20, .ncpus = ncpus, .cpu = &fake_backend};

	assert_int_equal(vm_create(vm, &cfg), 0);
	assert_int_equal(bus_register(&vm->pio, 0x80, 1, &port_ops, d, "post"), 0);
	assert_int_equal(vm_add_device(vm, &port_dev_ops, d), 0);
}

static void check_torn_down(struct vm *vm, struct port_dev *d)
{
	vm_destroy(vm);
	assert_int_equal(d->destroyed, 1);
	assert_int_equal(fake_vms_alive, 0);
	assert_int_equal(fake_vcpus_alive, 0);
}

static void test_stop_first_reason_wins(void **state)
{
	struct vm vm;
	struct port_dev d = {0};

	fake_vm_mode = FAKE_SPIN;
	make_vm(&vm, 3, &d);
	assert_int_equal(vm_start(&vm), 0);
	while (__atomic_load_n(&d.writes, __ATOMIC_SEQ_CST) < 3)
		usleep(100);
	vm_request_stop(&vm, VM_STOP_RESET);
	vm_request_stop(&vm, VM_STOP_USER);
	assert_int_equal(vm_wait(&vm), VM_STOP_RESET);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(vm.vcpus[i].state, VCPU_STOPPED);
		assert_true(vm.vcpus[i].exits_pio >= 1);
	}
	check_torn_down(&vm, &d);
}

static void test_pause_resume(void **state)
{
	struct vm vm;
	struct port_dev d = {0};
	int before;

	fake_vm_mode = FAKE_SPIN;
	make_vm(&vm, 2, &d);
	assert_int_equal(vm_start(&vm), 0);
	assert_int_equal(vm_pause(&vm), 0);
	assert_int_equal(d.paused, 1);
	for (int i = 0; i < 2; i++)
		assert_int_equal(vm.vcpus[i].state, VCPU_PAUSED);
	before = __atomic_load_n(&d.writes, __ATOMIC_SEQ_CST);
	usleep(20000);
	/* Paused vCPUs do not run guest code. */
	assert_int_equal(__atomic_load_n(&d.writes, __ATOMIC_SEQ_CST), before);
	vm_resume(&vm);
	assert_int_equal(d.resumed, 1);
	while (__atomic_load_n(&d.writes, __ATOMIC_SEQ_CST) < before + 2)
		usleep(100);
	vm_request_stop(&vm, VM_STOP_USER);
	assert_int_equal(vm_wait(&vm), VM_STOP_USER);
	check_torn_down(&vm, &d);
}

static void test_all_halted_is_poweroff(void **state)
{
	struct vm vm;
	struct port_dev d = {0};

	fake_vm_mode = FAKE_HLT;
	make_vm(&vm, 2, &d);
	assert_int_equal(vm_start(&vm), 0);
	assert_int_equal(vm_wait(&vm), VM_STOP_POWEROFF);
	assert_int_equal(vm.ndead_halted, 2);
	check_torn_down(&vm, &d);
}

static void test_triple_fault(void **state)
{
	struct vm vm;
	struct port_dev d = {0};

	fake_vm_mode = FAKE_SHUTDOWN;
	make_vm(&vm, 2, &d);
	assert_int_equal(vm_start(&vm), 0);
	assert_int_equal(vm_wait(&vm), VM_STOP_SHUTDOWN);
	check_torn_down(&vm, &d);
}

static void test_destroy_without_start(void **state)
{
	struct vm vm;
	struct port_dev d = {0};
	struct vm_config bad = {.mem_size = 16 << 20, .ncpus = 0, .cpu = &fake_backend};

	assert_int_equal(vm_create(&vm, &bad), -EINVAL);
	vm_destroy(&vm);
	make_vm(&vm, 1, &d);
	check_torn_down(&vm, &d);
}

static void test_dev_buf(void **state)
{
	struct dev_buf b = {0};
	uint8_t chunk[300];

	for (unsigned i = 0; i < sizeof(chunk); i++)
		chunk[i] = (uint8_t)i;
	for (int i = 0; i < 10; i++)
		assert_int_equal(dev_buf_put(&b, chunk, sizeof(chunk)), 0);
	assert_int_equal(b.len, 3000);
	assert_memory_equal(b.data + 2700, chunk, sizeof(chunk));
	dev_buf_free(&b);
	assert_null(b.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stop_first_reason_wins), cmocka_unit_test(test_pause_resume),
	    cmocka_unit_test(test_all_halted_is_poweroff), cmocka_unit_test(test_triple_fault),
	    cmocka_unit_test(test_destroy_without_start),  cmocka_unit_test(test_dev_buf),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
