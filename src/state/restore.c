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

#include "state/cpu_neutral.h"
#include "state/identity.h"
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

/*
 * The backend to restore on, and the CPU model to create it with. The
 * snapshot's backend restores from its own record (exact); the other one
 * from the neutral record, which must then be present and well-formed.
 */
static int pick_backend(const struct snap_image *img, const char *accel, struct vm_config *vc,
			struct cpu_neutral *n, bool *cross, char *why, size_t wl)
{
	const struct cpu_backend *saved = backend_by_name(img->hdr.backend), *want;
	bool has_n = img->neutral.data != NULL;
	int err;

	if (!saved)
		return why_set(why, wl, -EINVAL, "unknown CPU backend '%s'", img->hdr.backend);
	if (!accel || !strcmp(accel, "auto"))
		want = saved == &cpu_backend_kvm && !cpu_kvm_has_hw_virt() && has_n
			   ? &cpu_backend_emu
			   : saved;
	else if (!(want = backend_by_name(accel)))
		return why_set(why, wl, -EINVAL, "unknown CPU backend '%s'", accel);
	if (want == &cpu_backend_kvm && !cpu_kvm_has_hw_virt())
		return why_set(why, wl, -ENODEV,
			       saved == want
				   ? "taken on the kvm backend; this host cannot run it"
				   : "this host's KVM cannot run a guest kernel (no VMX/SVM)");
	*cross = want != saved;
	if (*cross && !has_n)
		return why_set(why, wl, -EXDEV,
			       "taken on the %s backend by a tern without backend-neutral state; "
			       "it restores only there",
			       saved->name);
	memset(&vc->model, 0, sizeof(vc->model));
	if (has_n) {
		err = cpu_neutral_decode(img->neutral.data, img->neutral.len, n);
		if (err || n->ncpus != img->hdr.ncpus)
			return why_set(why, wl, err ? err : -EINVAL,
				       "malformed backend-neutral state record");
		cpu_neutral_model(n, &vc->model);
	}
	vc->cpu = want;
	return 0;
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

static int check_model(struct vm *vm, const struct snap_image *img, const struct cpu_neutral *n,
		       bool cross, char *why, size_t wl)
{
	char model[SNAP_MODEL_MAX + 1];

	if (cross)
		return cpu_neutral_check(vm, n, why, wl);
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

/* A clone's own disks replace the saved ones; their sizes are not the saved files'. */
static int override_disks(struct machine_desc *sd, const struct snapshot_restore_cfg *cfg,
			  char *why, size_t wl)
{
	if (!cfg->disk_paths)
		return 0;
	if (cfg->ndisk_paths != sd->ndisks)
		return why_set(why, wl, -EINVAL, "the snapshot has %u disks, %u given", sd->ndisks,
			       cfg->ndisk_paths);
	for (unsigned i = 0; i < sd->ndisks; i++) {
		char *p = strdup(cfg->disk_paths[i]);

		if (!p)
			return -ENOMEM;
		free(sd->disks[i].path);
		sd->disks[i].path = p;
		sd->disks[i].size = 0;
	}
	return 0;
}

/* A new generation id; for a clone a new VM id and its index. Old snapshots have no device. */
static int renew_identity(struct vm *vm, const struct machine_desc *sd,
			  const struct snapshot_restore_cfg *cfg, char *why, size_t wl)
{
	int err;

	if (!sd->identity) {
		if (cfg->clone)
			pr_warn("this snapshot predates the identity device: clones cannot "
				"tell themselves apart");
		return 0;
	}
	err = identity_renew(vm, cfg->clone ? cfg->clone_index : IDENTITY_NOT_A_CLONE);
	return err ? why_set(why, wl, err, "cannot renew the VM's identity") : 0;
}

/* vm_create() done: everything else, in order. */
static int load_all(struct vm *vm, const struct snap_image *img, const struct machine_desc *sd,
		    const struct snapshot_restore_cfg *cfg, const char *mem_path,
		    const struct cpu_neutral *n, bool cross, char *why, size_t wl)
{
	int err = map_memory(vm, img, mem_path, why, wl);

	if (!err)
		err = check_model(vm, img, n, cross, why, wl);
	if (err)
		return err;
	err = machine_desc_build(vm, sd, cfg->console_fd, false);
	if (err)
		return why_set(why, wl, err, "cannot build the machine again: %s", strerror(-err));
	err = check_devices(vm, img, why, wl);
	if (!err)
		err = load_vcpus(vm, img, why, wl);
	if (!err) {
		/* From the other backend: its own record means nothing here. */
		err = cross ? vm->cpu->import_neutral(vm, n)
			    : vm->cpu->restore_extra(vm, img->backend.data, img->backend.len);
		if (err)
			why_set(why, wl, err, "bad interrupt controller/timer state");
	}
	if (!err)
		err = load_devices(vm, img, why, wl);
	if (!err)
		err = renew_identity(vm, sd, cfg, why, wl);
	return err;
}

/* Load and check the state file and decode its machine description. */
static int load_image(const char *state_path, struct snap_image *img, struct machine_desc *sd,
		      char *why, size_t wl)
{
	const char *msg = NULL;
	int err;

	memset(sd, 0, sizeof(*sd));
	err = snap_image_load(img, state_path, &msg);
	if (err) {
		snap_image_free(img);
		return why_set(why, wl, err, "%s: %s", state_path, msg);
	}
	err = snap_desc_decode(img->machine.data, img->machine.len, sd);
	if (!err && sd->cpus &&
	    ((uint32_t)sd->cpus != img->hdr.ncpus || sd->mem_mib << 20 != img->hdr.mem_size))
		err = -EINVAL;
	if (err) {
		snap_image_free(img);
		machine_desc_clear(sd);
		return why_set(why, wl, err, "%s: bad machine description", state_path);
	}
	return 0;
}

int snapshot_read_desc(const char *state_path, const char *mem_path, struct machine_desc *out,
		       char *why, size_t wl)
{
	struct snap_image img;
	const char *msg = NULL;
	int err = load_image(state_path, &img, out, why, wl), fd;

	if (err)
		return err;
	if (mem_path) {
		fd = snap_mem_open(mem_path, img.hdr.id, img.hdr.mem_size, &msg);
		if (fd < 0) {
			err = why_set(why, wl, fd, "%s: %s", mem_path, msg);
			machine_desc_clear(out);
		} else {
			close(fd);
		}
	}
	snap_image_free(&img);
	return err;
}

int snapshot_restore(struct vm *vm, const struct snapshot_restore_cfg *cfg, char *why, size_t wl)
{
	/* RAM is mapped from the snapshot's file at once: no memfd to create first. */
	struct vm_config vc = {.mem_backing = GM_BACKING_ANON};
	struct snap_image img;
	struct machine_desc sd;
	struct cpu_neutral *n = NULL;
	char *mem_path = NULL;
	bool cross = false;
	int err;

	memset(vm, 0, sizeof(*vm)); /* vm_destroy() of a never-created VM is a no-op */
	err = load_image(cfg->state_path, &img, &sd, why, wl);
	if (err)
		return err;
	err = override_disks(&sd, cfg, why, wl);
	if (err)
		goto out;
	vc.mem_size = img.hdr.mem_size;
	vc.ncpus = (int)img.hdr.ncpus;
	n = calloc(1, sizeof(*n));
	err = n ? pick_backend(&img, cfg->accel, &vc, n, &cross, why, wl) : -ENOMEM;
	if (err)
		goto out;
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
	err = load_all(vm, &img, &sd, cfg, mem_path, n, cross, why, wl);
	if (err)
		vm_destroy(vm);
out:
	free(n);
	free(mem_path);
	machine_desc_clear(&sd);
	snap_image_free(&img);
	return err;
}
