/* snapshot_save(): pause, collect the state, arm copy-before-write, resume, finish the files. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <time.h>

#include "state/cpu_neutral.h"
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
		err = cpu_neutral_save(vm, &b);
	if (!err)
		snap_w_section(w, SNAP_SEC_NEUTRAL, 0, b.data, b.len);
	else if (err == -ENOTSUP) /* a backend without one: same-backend restore only */
		err = 0;
	dev_buf_free(&b);
	if (!err)
		err = save_devices(vm, w);
	return err ? err : snap_w_finish(w);
}

/* What a save needs from start to end. */
struct save_job {
	struct vm *vm;
	const struct machine_desc *desc;
	const char *state_path;
	struct snap_writer w;
	struct snap_mem_out mem;
	struct livemem *live; /* NULL: the memory is copied with the VM paused */
	uint8_t id[SNAP_ID_LEN];
};

/* Before the pause: the memory file exists (a bad path fails here) and copy-before-write is ready.
 */
static int save_prepare(struct save_job *j, const char *mem_path)
{
	int err;

	if (getrandom(j->id, sizeof(j->id), 0) != (ssize_t)sizeof(j->id))
		return -errno;
	err = snap_mem_create(&j->mem, mem_path, j->vm->mem.size, j->id);
	if (err) {
		pr_err("snapshot: cannot create memory file %s: %s", mem_path, strerror(-err));
		return err;
	}
	err = livemem_prepare(&j->live, &j->vm->mem, j->mem.fd);
	if (err)
		pr_info("snapshot: no live memory copy here (userfaultfd write protection: %s); "
			"the VM stays paused while its memory is written",
			strerror(-err));
	return 0;
}

/* The VM is paused: this is the snapshot's instant. */
static int save_paused(struct save_job *j)
{
	int err = build_state(j->vm, j->desc, &j->w, j->id);

	if (err) {
		pr_err("snapshot: cannot collect the VM's state: %s", strerror(-err));
		return err;
	}
	if (j->live && livemem_arm(j->live)) {
		pr_info("snapshot: cannot write-protect guest memory; copying it paused");
		livemem_free(j->live);
		j->live = NULL;
	}
	if (!j->live) {
		err = snap_mem_write_pages(j->mem.fd, &j->vm->mem);
		if (err)
			pr_err("snapshot: cannot write memory file %s: %s", j->mem.path,
			       strerror(-err));
	}
	return err;
}

/* After the resume: finish the memory file, then the state file that names it (last). */
static int save_finish(struct save_job *j, int err, struct snapshot_stats *st)
{
	if (!err && j->live) {
		err = livemem_copy(j->live);
		if (err)
			pr_err("snapshot: cannot write memory file %s: %s", j->mem.path,
			       strerror(-err));
	}
	if (j->live)
		st->cbw_pages = livemem_cbw_pages(j->live);
	livemem_free(j->live);
	j->live = NULL;
	if (err) {
		snap_mem_abort(&j->mem);
		return err;
	}
	err = snap_mem_commit(&j->mem);
	if (err) {
		pr_err("snapshot: cannot write memory file %s: %s", j->mem.path, strerror(-err));
		return err;
	}
	err = snap_w_to_file(&j->w, j->state_path);
	if (!err)
		err = snap_fsync_dir(j->state_path);
	if (err) {
		pr_err("snapshot: cannot write state file %s: %s", j->state_path, strerror(-err));
		/* A memory file without its state file is no snapshot. */
		unlink(j->mem.path);
	}
	return err;
}

int snapshot_save_stats(struct vm *vm, const char *state_path, const char *mem_path,
			struct snapshot_stats *st)
{
	struct save_job j = {
	    .vm = vm, .desc = snap_desc_find(vm), .state_path = state_path, .mem = {.fd = -1}};
	uint64_t t0 = now_ns(), t1, t2;
	int err;

	memset(st, 0, sizeof(*st));
	if (!j.desc) {
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
	err = save_prepare(&j, mem_path);
	if (err)
		return err;
	/* Pauses nest: a VM someone else paused stays paused after our resume. */
	err = vm_pause(vm);
	if (err) {
		pr_err("snapshot: cannot pause the VM: %s", strerror(-err));
		livemem_free(j.live);
		snap_mem_abort(&j.mem);
		return err;
	}
	t1 = now_ns();
	err = save_paused(&j);
	st->live = j.live != NULL;
	t2 = now_ns();
	vm_resume(vm);
	err = save_finish(&j, err, st);
	snap_w_free(&j.w);
	st->pause_ns = t2 - t1;
	st->total_ns = now_ns() - t0;
	pr_info("snapshot: %s (%s) in %llu ms, paused %llu us (%s copy, %llu pages copied before "
		"write)",
		err ? "failed" : "saved", state_path, (unsigned long long)(st->total_ns / 1000000),
		(unsigned long long)(st->pause_ns / 1000), st->live ? "live" : "paused",
		(unsigned long long)st->cbw_pages);
	return err;
}

int snapshot_save(struct vm *vm, const char *state_path, const char *mem_path)
{
	struct snapshot_stats st;

	return snapshot_save_stats(vm, state_path, mem_path, &st);
}
