/*
 * A real struct vm (vm_create: buses, guest memory, device registry) on a
 * fake CPU backend that records the interrupts devices raise. For the PCI
 * and virtio unit tests; needs no KVM.
 */
#ifndef TERN_TEST_PCI_VM_H
#define TERN_TEST_PCI_VM_H

#include <errno.h>
#include <stdlib.h>

#include "vmm/vm.h"

struct fake_irqs {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int nmsi;
	uint64_t msi_addr;
	uint32_t msi_data;
	int level[32]; /* last level per GSI */
	int nirq;
};

static int fake_vm_create(struct vm *vm)
{
	struct fake_irqs *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	vm->backend = f;
	return 0;
}

static void fake_vm_destroy(struct vm *vm)
{
	free(vm->backend);
}

static int fake_vcpu_create(struct vcpu *v)
{
	(void)v;
	return 0;
}

static void fake_kick(struct vcpu *v)
{
	(void)v;
}

static int fake_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	struct fake_irqs *f = vm->backend;

	pthread_mutex_lock(&f->lock);
	f->nmsi++;
	f->msi_addr = addr;
	f->msi_data = data;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_irq_line(struct vm *vm, uint32_t gsi, int level)
{
	struct fake_irqs *f = vm->backend;

	if (gsi >= 32)
		return -EINVAL;
	pthread_mutex_lock(&f->lock);
	f->level[gsi] = level;
	f->nirq++;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .kick = fake_kick,
    .irq_line = fake_irq_line,
    .msi = fake_msi,
};

static inline struct fake_irqs *fake_irqs(struct vm *vm)
{
	return vm->backend;
}

static inline int fake_nmsi(struct vm *vm)
{
	struct fake_irqs *f = vm->backend;
	int n;

	pthread_mutex_lock(&f->lock);
	n = f->nmsi;
	pthread_mutex_unlock(&f->lock);
	return n;
}

/* Wait (up to 5 s) until more than n MSIs were sent; returns the count. */
static inline int fake_wait_msi(struct vm *vm, int n)
{
	struct fake_irqs *f = vm->backend;
	struct timespec ts;
	int got;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 5;
	pthread_mutex_lock(&f->lock);
	while (f->nmsi <= n)
		if (pthread_cond_timedwait(&f->cond, &f->lock, &ts))
			break;
	got = f->nmsi;
	pthread_mutex_unlock(&f->lock);
	return got;
}

static inline int test_vm_create(struct vm *vm, uint64_t mem)
{
	/*
	 * memfd: device tests check residency right after a release, and on
	 * an anonymous huge-page mapping a loaded host was seen reporting a
	 * just-released page resident again (test_balloon). Both backings'
	 * release paths are tested in test_reclaim.
	 */
	struct vm_config cfg = {
	    .mem_size = mem, .ncpus = 1, .cpu = &fake_backend, .mem_backing = GM_BACKING_MEMFD};

	return vm_create(vm, &cfg);
}

#endif
