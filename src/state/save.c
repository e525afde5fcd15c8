/* snapshot_save(): pause, write the state and memory files, resume. */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "state/state_int.h"
#include "util/log.h"
#include "vmm/vm.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int save_vcpus(struct vm *vm, struct snap_writer *w)
{
	struct cpu_state st;

	for (int i = 0; i < vm->ncpus && !w->err; i++) {
		struct dev_buf b = {0};
		int err = vm->cpu->get_state(&vm->vcpus[i], &st);

		if (!err)
			err = snap_cpu_encode(&st, &b);
		if (err) {
			pr_err("snapshot: vCPU %d: %s", i, strerror(-err));
			dev_buf_free(&b);
			return err;
		}
		snap_w_section(w, SNAP_SEC_VCPU, (uint32_t)i, b.data, b.len);
		dev_buf_free(&b);
	}
	return w->err;
}

/* Every registered device in registry order; the description is the MACHINE record instead. */
static int save_devices(struct vm *vm, struct snap_writer *w)
{
	uint32_t index = 0;

	for (struct device *d = vm->devices; d && !w->err; d = d->next) {
		struct dev_buf b = {0};
		int err = 0;

		if (snap_desc_is(d))
			continue;
		if (d->ops->save)
			err = d->ops->save(d->dev, &b);
		if (err) {
			pr_err("snapshot: device %s: %s", d->ops->name, strerror(-err));
			dev_buf_free(&b);
			return err;
		}
		snap_w_device(w, index++, d->ops->name, b.data, b.len);
		dev_buf_free(&b);
	}
	return w->err;
}

static int build_state(struct vm *vm, const struct machine_desc *desc, struct snap_writer *w,
		       const uint8_t id[SNAP_ID_LEN])
{
	struct snap_header h = {
	    .arch = SNAP_ARCH_X86_64, .ncpus = (uint32_t)vm->ncpus, .mem_size = vm->mem.size};
	char model[SNAP_MODEL_MAX + 1];
	struct dev_buf b = {0};
	int err;

	memcpy(h.backend, vm->cpu->name, strnlen(vm->cpu->name, SNAP_BACKEND_LEN));
	memcpy(h.id, id, SNAP_ID_LEN);
	snap_w_begin(w, &h);
	err = vm->cpu->cpu_model(vm, model, sizeof(model));
	if (err)
		return err;
	snap_w_section(w, SNAP_SEC_CPU_MODEL, 0, model, strlen(model));
	err = snap_desc_encode(desc, &b);
	if (!err)
		snap_w_section(w, SNAP_SEC_MACHINE, 0, b.data, b.len);
	dev_buf_free(&b);
	if (!err)
		err = save_vcpus(vm, w);
	if (!err)
		err = vm->cpu->save_extra(vm, &b);
	if (!err)
		snap_w_section(w, SNAP_SEC_BACKEND, 0, b.data, b.len);
	dev_buf_free(&b);
	if (!err)
		err = save_devices(vm, w);
	return err ? err : snap_w_finish(w);
}

/* The VM is paused: write memory first, the state file (which names it by id) last. */
static int save_paused(struct vm *vm, const struct machine_desc *desc, const char *state_path,
		       const char *mem_path)
{
	struct snap_writer w;
	uint8_t id[SNAP_ID_LEN];
	int err;

	if (getrandom(id, sizeof(id), 0) != (ssize_t)sizeof(id))
		return -errno;
	err = build_state(vm, desc, &w, id);
	if (err)
		pr_err("snapshot: cannot collect the VM's state: %s", strerror(-err));
	if (!err) {
		err = snap_mem_write(&vm->mem, mem_path, id);
		if (err)
			pr_err("snapshot: cannot write memory file %s: %s", mem_path,
			       strerror(-err));
	}
	if (!err) {
		err = snap_w_to_file(&w, state_path);
		if (err)
			pr_err("snapshot: cannot write state file %s: %s", state_path,
			       strerror(-err));
	}
	snap_w_free(&w);
	return err;
}

int snapshot_save(struct vm *vm, const char *state_path, const char *mem_path)
{
	const struct machine_desc *desc = snap_desc_find(vm);
	uint64_t t0 = now_ns(), t1;
	int err;

	if (!desc) {
		pr_err("snapshot: this VM was built without a machine description "
		       "(snapshot_describe); it cannot be restored, so it is not saved");
		return -ENOTSUP;
	}
	if (!vm->cpu->save_extra || !vm->cpu->cpu_model) {
		pr_err("snapshot: the %s CPU backend cannot save its interrupt controller and "
		       "timers yet",
		       vm->cpu->name);
		return -ENOTSUP;
	}
	/* Pauses nest: a VM someone else paused stays paused after our resume. */
	err = vm_pause(vm);
	if (err) {
		pr_err("snapshot: cannot pause the VM: %s", strerror(-err));
		return err;
	}
	t1 = now_ns();
	err = save_paused(vm, desc, state_path, mem_path);
	vm_resume(vm);
	pr_info("snapshot: %s (%s) in %llu ms, paused %llu ms", err ? "failed" : "saved",
		state_path, (unsigned long long)((now_ns() - t0) / 1000000),
		(unsigned long long)((now_ns() - t1) / 1000000));
	return err;
}
