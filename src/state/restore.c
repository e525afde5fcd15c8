/*
 * snapshot_restore(): check the state file whole, build the same machine,
 * map the memory file copy-on-write, then load vCPUs, the backend's
 * irqchip and timers, and every device, in that order (a device restored
 * last may raise an interrupt at once: the irqchip must already be there).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "state/state_int.h"
#include "util/log.h"
#include "vmm/vm.h"

static int why_set(char *why, size_t len, int err, const char *fmt, ...)
{
	va_list ap;

	if (why && len) {
		va_start(ap, fmt);
		vsnprintf(why, len, fmt, ap);
		va_end(ap);
	}
	return err;
}

char *snapshot_default_mem_path(const char *state_path)
{
	const char *slash = strrchr(state_path, '/'), *dot = strrchr(state_path, '.');
	size_t base =
	    dot && (!slash || dot > slash) ? (size_t)(dot - state_path) : strlen(state_path);
	char *p = NULL;

	if (asprintf(&p, "%.*s.mem", (int)base, state_path) < 0)
		return NULL;
	return p;
}

static const struct cpu_backend *backend_by_name(const char *name)
{
	if (!strcmp(name, cpu_backend_emu.name))
		return &cpu_backend_emu;
	if (!strcmp(name, cpu_backend_kvm.name))
		return &cpu_backend_kvm;
	return NULL;
}

/* The devices just built must be the ones saved, in the same order. */
static int check_devices(struct vm *vm, const struct snap_image *img, char *why, size_t wl)
{
	unsigned n = 0;

	for (struct device *d = vm->devices; d; d = d->next) {
		if (snap_desc_is(d))
			continue;
		if (n >= img->ndevs || strcmp(img->devs[n].name, d->ops->name))
			return why_set(why, wl, -EINVAL,
				       "the snapshot's devices do not match this tern's machine "
				       "(device %u: saved %s, built %s)",
				       n, n < img->ndevs ? img->devs[n].name : "none",
				       d->ops->name);
		n++;
	}
	if (n != img->ndevs)
		return why_set(why, wl, -EINVAL, "the snapshot has %u devices, this machine %u",
			       img->ndevs, n);
	return 0;
}

static int load_vcpus(struct vm *vm, const struct snap_image *img, char *why, size_t wl)
{
	struct cpu_state st;
	int err = 0;

	for (int i = 0; !err && i < vm->ncpus; i++) {
		err = snap_cpu_decode(img->vcpu[i].data, img->vcpu[i].len, &st);
		if (err)
			return why_set(why, wl, err, "vCPU %d: malformed state record", i);
		err = vm->cpu->set_state(&vm->vcpus[i], &st);
		if (err)
			why_set(why, wl, err, "vCPU %d: the backend refused its state: %s", i,
				strerror(-err));
	}
	return err;
}

static int load_devices(struct vm *vm, const struct snap_image *img, char *why, size_t wl)
{
	unsigned n = 0;

	for (struct device *d = vm->devices; d; d = d->next) {
		const struct snap_blob *b;
		int err = 0;

		if (snap_desc_is(d))
			continue;
		b = &img->devs[n++].blob;
		if (d->ops->restore)
			err = d->ops->restore(d->dev, b->data, b->len);
		else if (b->len)
			err = -EINVAL;
		if (err)
			return why_set(why, wl, err, "device %s (%u): bad saved state: %s",
				       d->ops->name, n - 1, strerror(-err));
	}
	return 0;
}

/* Describe the restored VM like the original, so it can be saved again. */
static int redescribe(struct vm *vm, const struct snap_desc *sd)
{
	struct snap_machine_desc md = {.ndisks = sd->ndisks};

	for (unsigned i = 0; i < sd->ndisks; i++) {
		md.disks[i].path = sd->disks[i].path;
		md.disks[i].readonly = sd->disks[i].readonly;
	}
	return snapshot_describe(vm, &md);
}

static int map_memory(struct vm *vm, const struct snap_image *img, const char *mem_path, char *why,
		      size_t wl)
{
	const char *msg = NULL;
	int fd = snap_mem_open(mem_path, img->hdr.id, img->hdr.mem_size, &msg), err;

	if (fd < 0)
		return why_set(why, wl, fd, "%s: %s", mem_path, msg);
	err = gm_map_file_private(&vm->mem, fd, SNAP_MEM_DATA_OFF);
	close(fd); /* the mapping keeps the file */
	if (err)
		return why_set(why, wl, err, "%s: cannot map: %s", mem_path, strerror(-err));
	return 0;
}

static int check_model(struct vm *vm, const struct snap_image *img, char *why, size_t wl)
{
	char model[SNAP_MODEL_MAX + 1];

	if (!vm->cpu->cpu_model || !vm->cpu->restore_extra)
		return why_set(why, wl, -ENOTSUP, "the %s backend cannot restore snapshots yet",
			       vm->cpu->name);
	if (vm->cpu->cpu_model(vm, model, sizeof(model)))
		return why_set(why, wl, -EINVAL, "cannot name this host's CPU model");
	if (strcmp(model, img->cpu_model))
		return why_set(why, wl, -EXDEV,
			       "the snapshot was taken on another CPU model (%s; here: %s)",
			       img->cpu_model, model);
	return 0;
}

/* vm_create() done: everything else, in order. */
static int load_all(struct vm *vm, const struct snap_image *img, const struct snap_desc *sd,
		    const struct snapshot_restore_cfg *cfg, const char *mem_path, char *why,
		    size_t wl)
{
	int err = map_memory(vm, img, mem_path, why, wl);

	if (!err)
		err = check_model(vm, img, why, wl);
	if (err)
		return err;
	err = snap_build_machine(vm, sd, cfg->console_fd);
	if (err)
		return why_set(why, wl, err, "cannot build the machine again: %s", strerror(-err));
	err = redescribe(vm, sd);
	if (!err)
		err = check_devices(vm, img, why, wl);
	if (!err)
		err = load_vcpus(vm, img, why, wl);
	if (!err) {
		err = vm->cpu->restore_extra(vm, img->backend.data, img->backend.len);
		if (err)
			why_set(why, wl, err, "bad interrupt controller/timer state");
	}
	if (!err)
		err = load_devices(vm, img, why, wl);
	return err;
}

int snapshot_restore(struct vm *vm, const struct snapshot_restore_cfg *cfg, char *why, size_t wl)
{
	struct vm_config vc;
	struct snap_image img;
	struct snap_desc sd;
	const char *msg = NULL;
	char *mem_path = NULL;
	int err;

	memset(vm, 0, sizeof(*vm)); /* vm_destroy() of a never-created VM is a no-op */
	err = snap_image_load(&img, cfg->state_path, &msg);
	if (err) {
		snap_image_free(&img);
		return why_set(why, wl, err, "%s: %s", cfg->state_path, msg);
	}
	err = snap_desc_decode(img.machine.data, img.machine.len, &sd);
	if (err) {
		snap_image_free(&img);
		return why_set(why, wl, err, "%s: bad machine description", cfg->state_path);
	}
	vc.mem_size = img.hdr.mem_size;
	vc.ncpus = (int)img.hdr.ncpus;
	vc.cpu = backend_by_name(img.hdr.backend);
	if (!vc.cpu) {
		err = why_set(why, wl, -EINVAL, "unknown CPU backend '%s'", img.hdr.backend);
		goto out;
	}
	if (vc.cpu == &cpu_backend_kvm && !cpu_kvm_has_hw_virt()) {
		err =
		    why_set(why, wl, -ENODEV, "taken on the kvm backend; this host cannot run it");
		goto out;
	}
	mem_path =
	    cfg->mem_path ? strdup(cfg->mem_path) : snapshot_default_mem_path(cfg->state_path);
	if (!mem_path) {
		err = -ENOMEM;
		goto out;
	}
	err = vm_create(vm, &vc);
	if (err) {
		why_set(why, wl, err, "cannot create the VM: %s", strerror(-err));
		goto out;
	}
	err = load_all(vm, &img, &sd, cfg, mem_path, why, wl);
	if (err)
		vm_destroy(vm);
out:
	free(mem_path);
	snap_desc_clear(&sd);
	snap_image_free(&img);
	return err;
}
