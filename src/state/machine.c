/*
 * The machine description (state/machine_desc.h): building the machine from
 * it, and its record in the state file. The description sits in the VM's
 * device registry (so it lives and dies with the VM) but is saved as the
 * state file's MACHINE record, not as a device.
 *
 * Record (little-endian), version 2: u32 version, u32 flags (1 balloon,
 * 2 identity device, 4 balloon without free page reporting), u32 vCPUs, u64 RAM MiB, four strings
 * (kernel, initrd, command line, accel: u32 length then bytes, no NUL; length 0 for none), u32
 * ndisks, then per disk: u32 readonly, u32 path length, the path, u64 the disk's size in bytes when
 * the VM was described. Version 1 (read, not written) is u32 version, u32 ndisks and the disks: no
 * balloon, no identity device.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "arch/x86/machine.h"
#include "block/nbd.h"
#include "hw/pci.h"
#include "state/identity.h"
#include "state/state_int.h"
#include "util/log.h"
#include "virtio/balloon.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define DESC_VERSION 2u
#define DESC_F_BALLOON 1u
#define DESC_F_IDENTITY 2u
#define DESC_F_BALLOON_NOREPORT 4u

void machine_desc_clear(struct machine_desc *d)
{
	free(d->kernel);
	free(d->initrd);
	free(d->cmdline);
	free(d->accel);
	free(d->api_socket);
	for (unsigned i = 0; i < d->ndisks && i < MACHINE_MAX_DISKS; i++)
		free(d->disks[i].path);
	memset(d, 0, sizeof(*d));
}

static int dup_str(char **dst, const char *src)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -ENOMEM;
}

int machine_desc_copy(struct machine_desc *dst, const struct machine_desc *src)
{
	int err;

	*dst = *src;
	dst->kernel = dst->initrd = dst->cmdline = dst->accel = dst->api_socket = NULL;
	dst->ndisks = 0;
	err = dup_str(&dst->kernel, src->kernel);
	if (!err)
		err = dup_str(&dst->initrd, src->initrd);
	if (!err)
		err = dup_str(&dst->cmdline, src->cmdline);
	if (!err)
		err = dup_str(&dst->accel, src->accel);
	if (!err)
		err = dup_str(&dst->api_socket, src->api_socket);
	for (unsigned i = 0; !err && i < src->ndisks; i++) {
		err = dup_str(&dst->disks[i].path, src->disks[i].path);
		dst->ndisks = i + 1;
	}
	if (err)
		machine_desc_clear(dst);
	return err;
}

static uint64_t disk_size(const char *path)
{
	struct stat st;

	return !nbd_is_uri(path) && stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

int machine_desc_add_disk(struct machine_desc *d, const char *path, bool readonly)
{
	struct machine_disk *disk;

	if (d->ndisks >= MACHINE_MAX_DISKS)
		return -ENOSPC;
	if (strlen(path) >= MACHINE_PATH_MAX)
		return -ENAMETOOLONG;
	disk = &d->disks[d->ndisks];
	disk->path = strdup(path);
	if (!disk->path)
		return -ENOMEM;
	disk->readonly = readonly;
	disk->size = 0;
	d->ndisks++;
	return 0;
}

const struct cpu_backend *machine_desc_backend(const struct machine_desc *d)
{
	const char *a = d->accel ? d->accel : "auto";
	bool kvm = !strcmp(a, "kvm") || (!strcmp(a, "auto") && cpu_kvm_has_hw_virt());

	return kvm ? &cpu_backend_kvm : &cpu_backend_emu;
}

/* ---- the description as a registry entry of the VM ---- */

static void desc_destroy(void *opaque)
{
	machine_desc_clear(opaque);
	free(opaque);
}

static const struct device_ops desc_ops = {.name = "machine-description", .destroy = desc_destroy};

bool snap_desc_is(const struct device *d)
{
	return d->ops == &desc_ops;
}

const struct machine_desc *snap_desc_find(struct vm *vm)
{
	const struct machine_desc *found = NULL;

	pthread_mutex_lock(&vm->lock);
	for (struct device *d = vm->devices; d; d = d->next)
		if (snap_desc_is(d))
			found = d->dev;
	pthread_mutex_unlock(&vm->lock);
	return found;
}

const struct machine_desc *snapshot_description(struct vm *vm)
{
	return snap_desc_find(vm);
}

int snapshot_describe(struct vm *vm, const struct machine_desc *desc)
{
	struct machine_desc *d;
	int err;

	if (desc->ndisks > MACHINE_MAX_DISKS || snap_desc_find(vm))
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	err = machine_desc_copy(d, desc);
	if (err) {
		free(d);
		return err;
	}
	for (unsigned i = 0; i < d->ndisks; i++) {
		if (strlen(d->disks[i].path) >= MACHINE_PATH_MAX) {
			desc_destroy(d);
			return -ENAMETOOLONG;
		}
		d->disks[i].size = disk_size(d->disks[i].path);
	}
	err = vm_add_device(vm, &desc_ops, d);
	if (err)
		desc_destroy(d);
	return err;
}

/* ---- the MACHINE record ---- */

static int put_str(struct dev_buf *out, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	int err = snap_put_u32(out, (uint32_t)n);

	return err || !n ? err : dev_buf_put(out, s, n);
}

int snap_desc_encode(const struct machine_desc *d, struct dev_buf *out)
{
	uint32_t flags = (d->balloon ? DESC_F_BALLOON : 0) | (d->identity ? DESC_F_IDENTITY : 0) |
			 (d->balloon_no_reporting ? DESC_F_BALLOON_NOREPORT : 0);
	int err = snap_put_u32(out, DESC_VERSION);

	if (!err)
		err = snap_put_u32(out, flags);
	if (!err)
		err = snap_put_u32(out, (uint32_t)d->cpus);
	if (!err)
		err = snap_put_u64(out, d->mem_mib);
	if (!err)
		err = put_str(out, d->kernel);
	if (!err)
		err = put_str(out, d->initrd);
	if (!err)
		err = put_str(out, d->cmdline);
	if (!err)
		err = put_str(out, d->accel);
	if (!err)
		err = snap_put_u32(out, d->ndisks);
	for (unsigned i = 0; !err && i < d->ndisks; i++) {
		err = snap_put_u32(out, d->disks[i].readonly);
		if (!err)
			err = put_str(out, d->disks[i].path);
		if (!err)
			err = snap_put_u64(out, d->disks[i].size);
	}
	return err;
}

/* An untrusted string: at most max bytes, no NUL; empty is NULL unless required. */
static int rd_str(struct snap_rd *r, uint32_t max, bool required, char **out)
{
	uint32_t n = snap_rd_u32(r);
	const uint8_t *p = n <= max ? snap_rd_ptr(r, n) : NULL;

	*out = NULL;
	if (r->err || (n && !p) || (required && !n) || n > max || (n && memchr(p, 0, n)))
		return -EINVAL;
	if (!n)
		return 0;
	*out = strndup((const char *)p, n);
	return *out ? 0 : -ENOMEM;
}

static int rd_disks(struct snap_rd *r, struct machine_desc *d)
{
	uint32_t n = snap_rd_u32(r);
	int err = 0;

	if (r->err || n > MACHINE_MAX_DISKS)
		return -EINVAL;
	for (uint32_t i = 0; !err && i < n; i++) {
		uint32_t ro = snap_rd_u32(r);

		err = rd_str(r, MACHINE_PATH_MAX - 1, true, &d->disks[i].path);
		d->ndisks = i + 1;
		if (!err && ro > 1)
			err = -EINVAL;
		d->disks[i].readonly = ro;
		d->disks[i].size = snap_rd_u64(r);
	}
	return err;
}

static int rd_v2(struct snap_rd *r, struct machine_desc *d)
{
	uint32_t flags = snap_rd_u32(r);
	int err;

	d->cpus = (int)snap_rd_u32(r);
	d->mem_mib = snap_rd_u64(r);
	if (r->err || flags & ~(DESC_F_BALLOON | DESC_F_IDENTITY | DESC_F_BALLOON_NOREPORT))
		return -EINVAL;
	/* The same limits as the state file's header, so nothing overflows later. */
	if ((uint32_t)d->cpus > SNAP_MAX_CPUS || d->mem_mib > SNAP_MEM_MAX >> 20)
		return -EINVAL;
	/* "Without reporting" qualifies a balloon; alone it is a damaged record. */
	if ((flags & (DESC_F_BALLOON | DESC_F_BALLOON_NOREPORT)) == DESC_F_BALLOON_NOREPORT)
		return -EINVAL;
	d->balloon = flags & DESC_F_BALLOON;
	d->identity = flags & DESC_F_IDENTITY;
	d->balloon_no_reporting = flags & DESC_F_BALLOON_NOREPORT;
	err = rd_str(r, MACHINE_PATH_MAX - 1, false, &d->kernel);
	if (!err)
		err = rd_str(r, MACHINE_PATH_MAX - 1, false, &d->initrd);
	if (!err)
		err = rd_str(r, MACHINE_CMDLINE_MAX - 1, false, &d->cmdline);
	if (!err)
		err = rd_str(r, 8, false, &d->accel);
	return err ? err : rd_disks(r, d);
}

int snap_desc_decode(const void *data, uint64_t len, struct machine_desc *d)
{
	struct snap_rd r = {.p = data, .len = len};
	uint32_t version = snap_rd_u32(&r);
	int err;

	memset(d, 0, sizeof(*d));
	if (version == 1)
		err = rd_disks(&r, d);
	else if (version == DESC_VERSION)
		err = rd_v2(&r, d);
	else
		return -EPROTONOSUPPORT;
	if (!err && (r.err || r.off != len))
		err = -EINVAL;
	if (err)
		machine_desc_clear(d);
	return err;
}

/* ---- building the machine ---- */

static int add_disks(struct vm *vm, const struct machine_desc *d, bool boot)
{
	for (unsigned i = 0; i < d->ndisks; i++) {
		const struct machine_disk *k = &d->disks[i];
		int err;

		/* Size 0: a clone's overlay, or a network disk: nothing to compare. */
		if (!boot && k->size && disk_size(k->path) != k->size) {
			pr_err("disk %s: not the size it had when the snapshot was taken", k->path);
			return -ESTALE;
		}
		err = virtio_blk_add(vm, k->path, k->readonly);
		if (err) {
			pr_err("disk %s: %s", k->path, strerror(-err));
			return err;
		}
	}
	return 0;
}

int machine_desc_build(struct vm *vm, const struct machine_desc *d, int console_fd, bool boot)
{
	struct machine_config mc = {.kernel_path = d->kernel,
				    .initrd_path = d->initrd,
				    .cmdline = d->cmdline,
				    .console_fd = console_fd,
				    .devices_only = !boot};
	int err = pci_init(vm);

	if (err)
		pr_err("PCI: %s", strerror(-err));
	if (!err)
		err = virtio_rng_add(vm);
	if (!err)
		err = add_disks(vm, d, boot);
	if (!err && d->balloon) {
		err = virtio_balloon_add(vm, !d->balloon_no_reporting);
		if (err)
			pr_err("virtio-balloon: %s", strerror(-err));
	}
	if (!err && d->identity) {
		err = identity_add(vm);
		if (err)
			pr_err("identity device: %s", strerror(-err));
	}
	if (!err)
		err = x86_machine_setup(vm, &mc);
	if (!err)
		err = snapshot_describe(vm, d);
	return err;
}

int machine_create(struct vm *vm, const struct machine_desc *d, int console_fd)
{
	struct vm_config cfg = {.mem_size = d->mem_mib << 20,
				.mem_backing = d->mem_backing,
				.ncpus = d->cpus,
				.cpu = machine_desc_backend(d),
				.model = {.baseline = d->portable_cpu}};
	int err;

	pr_info("backend %s, %d vCPU(s), %llu MiB", cfg.cpu->name, d->cpus,
		(unsigned long long)d->mem_mib);
	err = vm_create(vm, &cfg);
	if (err) {
		pr_err("cannot create the VM (%s backend): %s", cfg.cpu->name, strerror(-err));
		return err;
	}
	pr_info("guest RAM: %s backing, host huge pages %s", gm_backing_name(vm->mem.backing),
		gm_backing_thp_allowed(vm->mem.backing) ? "allowed" : "off");
	err = machine_desc_build(vm, d, console_fd, true);
	if (err)
		vm_destroy(vm);
	return err;
}
