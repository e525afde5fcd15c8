/*
 * A struct vm on a CPU backend that runs nothing, for device tests that drive
 * the buses directly. fake_vm_new() builds one with mem bytes of RAM and lets
 * add() create the devices under test.
 */
#ifndef TERN_TESTS_FAKE_VM_H
#define TERN_TESTS_FAKE_VM_H

#include <stdint.h>
#include <stdlib.h>

#include "vmm/vm.h"

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

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .kick = fake_kick,
};

/* NULL on failure; free with fake_vm_free(). */
static inline struct vm *fake_vm_new(uint64_t mem, int (*add)(struct vm *vm))
{
	struct vm *vm = calloc(1, sizeof(*vm));
	struct vm_config cfg = {.mem_size = mem, .ncpus = 1, .cpu = &fake_backend};

	if (!vm)
		return NULL;
	if (vm_create(vm, &cfg)) {
		free(vm);
		return NULL;
	}
	if (add && add(vm)) {
		vm_destroy(vm);
		free(vm);
		return NULL;
	}
	return vm;
}

static inline void fake_vm_free(struct vm *vm)
{
	vm_destroy(vm);
	free(vm);
}

#endif
