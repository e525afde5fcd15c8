/*
 * struct vm: memory, buses, devices, and one thread per vCPU.
 *
 * vCPU threads follow an explicit state machine (vm.h): a thread runs the
 * guest until the backend returns, then looks at the VM's requests under
 * vm->lock (stop, pause) and either re-enters, parks, or ends. Requests are
 * made by setting a flag under the lock and kicking every vCPU through the
 * backend, never by signals.
 */
#include "vmm/vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

int dev_buf_put(struct dev_buf *b, const void *data, uint64_t len)
{
	if (len > UINT64_MAX / 2 - b->len)
		return -EOVERFLOW;
	if (b->len + len > b->cap) {
		uint64_t cap = b->cap ? b->cap : 256;
		uint8_t *n;

		while (cap < b->len + len)
			cap *= 2;
		n = realloc(b->data, cap);
		if (!n)
			return -ENOMEM;
		b->data = n;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return 0;
}

void dev_buf_free(struct dev_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

const char *vm_stop_reason_str(enum vm_stop_reason why)
{
	switch (why) {
	case VM_RUNNING:
		return "running";
	case VM_STOP_POWEROFF:
		return "powered off";
	case VM_STOP_RESET:
		return "reboot requested";
	case VM_STOP_SHUTDOWN:
		return "triple fault (shutdown)";
	case VM_STOP_PANIC:
		return "guest kernel panic";
	case VM_STOP_ERROR:
		return "internal error";
	case VM_STOP_USER:
		return "stopped by user";
	}
	return "unknown";
}

static void vm_destroy_vcpus(struct vm *vm)
{
	if (!vm->vcpus)
		return;
	for (int i = 0; i < vm->ncpus; i++) {
		if (vm->vcpus[i].backend && vm->cpu->vcpu_destroy)
			vm->cpu->vcpu_destroy(&vm->vcpus[i]);
	}
	free(vm->vcpus);
	vm->vcpus = NULL;
}

static int vm_create_vcpus(struct vm *vm)
{
	vm->vcpus = calloc((size_t)vm->ncpus, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return -ENOMEM;
	for (int i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		int err;

		v->vm = vm;
		v->id = i;
		v->state = VCPU_CREATED;
		err = vm->cpu->vcpu_create(v);
		if (err) {
			pr_err("vCPU %d: backend %s could not create it: %s", i, vm->cpu->name,
			       strerror(-err));
			return err;
		}
	}
	return 0;
}

int vm_create(struct vm *vm, const struct vm_config *cfg)
{
	int err;

	memset(vm, 0, sizeof(*vm));
	vm->mem.fd = -1;
	vm->exit_status = -1;
	if (!cfg->cpu || cfg->ncpus < 1 || cfg->ncpus > 255)
		return -EINVAL;
	vm->cpu = cfg->cpu;
	vm->model = cfg->model;
	vm->ncpus = cfg->ncpus;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	err = bus_init(&vm->pio, "pio");
	if (!err)
		err = bus_init(&vm->mmio, "mmio");
	if (err)
		goto fail_bus;
	err = gm_init_backing(&vm->mem, cfg->mem_size, cfg->mem_backing);
	if (err) {
		pr_err("cannot allocate %llu MiB of guest memory: %s",
		       (unsigned long long)(cfg->mem_size >> 20), strerror(-err));
		goto fail_mem;
	}
	err = vm->cpu->vm_create(vm);
	if (err) {
		pr_err("CPU backend %s: %s", vm->cpu->name, strerror(-err));
		goto fail_backend;
	}
	err = vm_create_vcpus(vm);
	if (err)
		goto fail_vcpus;
	return 0;

fail_vcpus:
	vm_destroy_vcpus(vm);
	vm->cpu->vm_destroy(vm);
fail_backend:
	gm_destroy(&vm->mem);
fail_mem:
	bus_destroy(&vm->mmio);
fail_bus:
	bus_destroy(&vm->pio);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	vm->cpu = NULL; /* vm_destroy() on a failed vm is a no-op */
	return err;
}

int vm_add_device(struct vm *vm, const struct device_ops *ops, void *dev)
{
	struct device *d = calloc(1, sizeof(*d));

	if (!d)
		return -ENOMEM;
	d->ops = ops;
	d->dev = dev;
	pthread_mutex_lock(&vm->lock);
	/* Newest first: teardown then runs in reverse order of creation. */
	d->next = vm->devices;
	vm->devices = d;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static void vm_kick_all(struct vm *vm)
{
	for (int i = 0; i < vm->ncpus; i++)
		vm->cpu->kick(&vm->vcpus[i]);
}

/* Caller holds vm->lock. */
static void vm_set_stop_locked(struct vm *vm, enum vm_stop_reason why)
{
	if (vm->stop_reason == VM_RUNNING && why != VM_RUNNING)
		vm->stop_reason = why;
	pthread_cond_broadcast(&vm->cond);
}

void vm_request_stop(struct vm *vm, enum vm_stop_reason why)
{
	bool started;

	pthread_mutex_lock(&vm->lock);
	vm_set_stop_locked(vm, why);
	started = vm->started;
	pthread_mutex_unlock(&vm->lock);
	if (started)
		vm_kick_all(vm);
}

/* Account for one return from the backend; caller holds vm->lock. */
static void vcpu_handle_exit(struct vcpu *v, enum vcpu_exit ex)
{
	struct vm *vm = v->vm;

	switch (ex) {
	case VCPU_EXIT_KICK:
		break;
	case VCPU_EXIT_HLT:
		v->exits_hlt++;
		if (!v->dead_halt) {
			v->dead_halt = true;
			vm->ndead_halted++;
		}
		/* A lone halted vCPU may still be woken by INIT; all of them halted is the end. */
		if (vm->ndead_halted == vm->ncpus)
			vm_set_stop_locked(vm, VM_STOP_POWEROFF);
		break;
	case VCPU_EXIT_SHUTDOWN:
		v->exits_other++;
		pr_err("vCPU %d: the guest triple-faulted (CPU shutdown); stopping the VM", v->id);
		vm_set_stop_locked(vm, VM_STOP_SHUTDOWN);
		break;
	case VCPU_EXIT_ERROR:
	default:
		v->exits_other++;
		pr_err("vCPU %d: the CPU backend failed; stopping the VM", v->id);
		vm_set_stop_locked(vm, VM_STOP_ERROR);
		break;
	}
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;

	pthread_mutex_lock(&vm->lock);
	for (;;) {
		enum vcpu_exit ex;

		if (vm->stop_reason != VM_RUNNING)
			break;
		if (vm->pause_req || v->dead_halt) {
			/* Parked until resumed or stopped; a dead halt only ends with the VM. */
			if (v->state != VCPU_PAUSED) {
				v->state = VCPU_PAUSED;
				pthread_cond_broadcast(&vm->cond);
			}
			pthread_cond_wait(&vm->cond, &vm->lock);
			continue;
		}
		v->state = VCPU_RUNNING;
		pthread_mutex_unlock(&vm->lock);
		ex = vm->cpu->run(v);
		pthread_mutex_lock(&vm->lock);
		vcpu_handle_exit(v, ex);
	}
	v->state = VCPU_STOPPED;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int vm_start(struct vm *vm)
{
	int err = 0, n;

	pthread_mutex_lock(&vm->lock);
	if (vm->started) {
		pthread_mutex_unlock(&vm->lock);
		return -EALREADY;
	}
	vm->started = true;
	pthread_mutex_unlock(&vm->lock);
	for (n = 0; n < vm->ncpus; n++) {
		err = -pthread_create(&vm->vcpus[n].thread, NULL, vcpu_thread, &vm->vcpus[n]);
		if (err)
			break;
	}
	if (err) {
		pr_err("cannot start vCPU thread %d: %s", n, strerror(-err));
		/* Threads that did start are joined by vm_wait(); pretend the rest stopped. */
		vm_request_stop(vm, VM_STOP_ERROR);
		for (int i = n; i < vm->ncpus; i++)
			vm->vcpus[i].state = VCPU_STOPPED;
		pthread_mutex_lock(&vm->lock);
		vm->ncpus_started = n;
		pthread_mutex_unlock(&vm->lock);
		return err;
	}
	pthread_mutex_lock(&vm->lock);
	vm->ncpus_started = n;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static void vm_join(struct vm *vm)
{
	int n;

	pthread_mutex_lock(&vm->lock);
	if (!vm->started || vm->joined) {
		pthread_mutex_unlock(&vm->lock);
		return;
	}
	vm->joined = true;
	n = vm->ncpus_started;
	pthread_mutex_unlock(&vm->lock);
	for (int i = 0; i < n; i++)
		pthread_join(vm->vcpus[i].thread, NULL);
}

enum vm_stop_reason vm_wait(struct vm *vm)
{
	enum vm_stop_reason why;

	pthread_mutex_lock(&vm->lock);
	while (vm->stop_reason == VM_RUNNING)
		pthread_cond_wait(&vm->cond, &vm->lock);
	why = vm->stop_reason;
	pthread_mutex_unlock(&vm->lock);
	/* The stop was requested before: kick again for vCPUs that re-entered in between. */
	vm_kick_all(vm);
	vm_join(vm);
	return why;
}

static void vm_for_each_device(struct vm *vm, bool pause)
{
	for (struct device *d = vm->devices; d; d = d->next) {
		if (pause && d->ops->pause)
			d->ops->pause(d->dev);
		else if (!pause && d->ops->resume)
			d->ops->resume(d->dev);
	}
}

/* Caller holds vm->lock: wait until no pause or resume is half done. */
static void pause_wait_idle_locked(struct vm *vm)
{
	while (vm->pause_busy)
		pthread_cond_wait(&vm->cond, &vm->lock);
}

/* The first pause: park the vCPUs, then the devices. Caller set pause_busy. */
static void pause_park(struct vm *vm)
{
	if (vm->started)
		vm_kick_all(vm);
	pthread_mutex_lock(&vm->lock);
	for (;;) {
		bool all = true;

		for (int i = 0; i < vm->ncpus_started; i++) {
			enum vcpu_run_state s = vm->vcpus[i].state;

			if (s != VCPU_PAUSED && s != VCPU_STOPPED)
				all = false;
		}
		if (all)
			break;
		pthread_cond_wait(&vm->cond, &vm->lock);
	}
	pthread_mutex_unlock(&vm->lock);
	vm_for_each_device(vm, true);
}

int vm_pause(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	pause_wait_idle_locked(vm);
	if (vm->stop_reason != VM_RUNNING) {
		pthread_mutex_unlock(&vm->lock);
		return -ESRCH;
	}
	if (vm->pause_count++ > 0) {
		/* Already paused, and not half way (pause_busy is clear). */
		pthread_mutex_unlock(&vm->lock);
		return 0;
	}
	vm->pause_req = true;
	vm->pause_busy = true;
	pthread_mutex_unlock(&vm->lock);
	pause_park(vm);
	pthread_mutex_lock(&vm->lock);
	vm->pause_busy = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

void vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	pause_wait_idle_locked(vm);
	if (vm->pause_count == 0) {
		pthread_mutex_unlock(&vm->lock);
		pr_warn("vm_resume() without a matching vm_pause()");
		return;
	}
	if (--vm->pause_count > 0) {
		pthread_mutex_unlock(&vm->lock);
		return;
	}
	/* The last holder: devices first, then the vCPUs; new pausers wait meanwhile. */
	vm->pause_busy = true;
	pthread_mutex_unlock(&vm->lock);
	vm_for_each_device(vm, false);
	pthread_mutex_lock(&vm->lock);
	vm->pause_req = false;
	vm->pause_busy = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

void vm_destroy(struct vm *vm)
{
	struct device *d, *next;

	if (!vm->cpu)
		return;
	vm_request_stop(vm, VM_STOP_USER);
	vm_join(vm);
	for (d = vm->devices; d; d = next) {
		next = d->next;
		if (d->ops->destroy)
			d->ops->destroy(d->dev);
		free(d);
	}
	vm->devices = NULL;
	vm_destroy_vcpus(vm);
	vm->cpu->vm_destroy(vm);
	gm_destroy(&vm->mem);
	bus_destroy(&vm->mmio);
	bus_destroy(&vm->pio);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	vm->cpu = NULL;
}

void vm_pio(struct vcpu *vcpu, uint16_t port, void *data, unsigned size, int is_write)
{
	vcpu->exits_pio++;
	if (is_write)
		bus_write(&vcpu->vm->pio, port, data, size);
	else
		bus_read(&vcpu->vm->pio, port, data, size);
}

void vm_mmio(struct vcpu *vcpu, uint64_t gpa, void *data, unsigned size, int is_write)
{
	vcpu->exits_mmio++;
	if (is_write)
		bus_write(&vcpu->vm->mmio, gpa, data, size);
	else
		bus_read(&vcpu->vm->mmio, gpa, data, size);
}

int vm_irq_line(struct vm *vm, uint32_t gsi, int level)
{
	if (!vm->cpu->irq_line)
		return -EINVAL;
	return vm->cpu->irq_line(vm, gsi, level);
}

int vm_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	if (!vm->cpu->msi)
		return -ENOSYS;
	return vm->cpu->msi(vm, addr, data);
}
