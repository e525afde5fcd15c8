/*
 * The machine description: what a restore needs to build the same machine
 * again. It sits in the VM's device registry (so it lives and dies with
 * the VM) but is saved as the state file's MACHINE record, not as a device.
 *
 * Record (little-endian), version 1: u32 version, u32 ndisks, then per
 * disk: u8 readonly, u8 pad[3], u32 path length, the path (no NUL), u64
 * the disk's size in bytes when the VM was described.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "arch/x86/machine.h"
#include "hw/pci.h"
#include "state/state_int.h"
#include "util/log.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define DESC_VERSION 1u

void snap_desc_clear(struct snap_desc *d)
{
	for (unsigned i = 0; i < d->ndisks && i < SNAP_MAX_DISKS; i++)
		free(d->disks[i].path);
	memset(d, 0, sizeof(*d));
}

static void desc_destroy(void *opaque)
{
	snap_desc_clear(opaque);
	free(opaque);
}

static const struct device_ops desc_ops = {.name = "machine-description", .destroy = desc_destroy};

bool snap_desc_is(const struct device *d)
{
	return d->ops == &desc_ops;
}

const struct snap_desc *snap_desc_find(struct vm *vm)
{
	const struct snap_desc *found = NULL;

	pthread_mutex_lock(&vm->lock);
	for (struct device *d = vm->devices; d; d = d->next)
		if (snap_desc_is(d))
			found = d->dev;
	pthread_mutex_unlock(&vm->lock);
	return found;
}

static uint64_t disk_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

int snapshot_describe(struct vm *vm, const struct snap_machine_desc *desc)
{
	struct snap_desc *d;
	int err;

	if (desc->ndisks > SNAP_MAX_DISKS || snap_desc_find(vm))
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	for (unsigned i = 0; i < desc->ndisks; i++) {
		if (strlen(desc->disks[i].path) >= SNAP_PATH_MAX) {
			snap_desc_clear(d);
			free(d);
			return -ENAMETOOLONG;
		}
		d->disks[i].path = strdup(desc->disks[i].path);
		d->ndisks = i + 1;
		if (!d->disks[i].path) {
			desc_destroy(d);
			return -ENOMEM;
		}
		d->disks[i].readonly = desc->disks[i].readonly;
		d->disks[i].size = disk_size(d->disks[i].path);
	}
	err = vm_add_device(vm, &desc_ops, d);
	if (err)
		desc_destroy(d);
	return err;
}

int snap_desc_encode(const struct snap_desc *d, struct dev_buf *out)
{
	int err = snap_put_u32(out, DESC_VERSION);

	if (!err)
		err = snap_put_u32(out, d->ndisks);
	for (unsigned i = 0; !err && i < d->ndisks; i++) {
		size_t n = strlen(d->disks[i].path);

		err = snap_put_u32(out, d->disks[i].readonly);
		if (!err)
			err = snap_put_u32(out, (uint32_t)n);
		if (!err)
			err = dev_buf_put(out, d->disks[i].path, n);
		if (!err)
			err = snap_put_u64(out, d->disks[i].size);
	}
	return err;
}

int snap_desc_decode(const void *data, uint64_t len, struct snap_desc *d)
{
	struct snap_rd r = {.p = data, .len = len};
	uint32_t n;

	memset(d, 0, sizeof(*d));
	if (snap_rd_u32(&r) != DESC_VERSION)
		return -EPROTONOSUPPORT;
	n = snap_rd_u32(&r);
	if (r.err || n > SNAP_MAX_DISKS)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t flags = snap_rd_u32(&r), plen = snap_rd_u32(&r);
		const uint8_t *p = plen < SNAP_PATH_MAX ? snap_rd_ptr(&r, plen) : NULL;

		if (!p || plen == 0 || memchr(p, 0, plen) || flags > 1) {
			snap_desc_clear(d);
			return -EINVAL;
		}
		d->disks[i].path = strndup((const char *)p, plen);
		d->ndisks = i + 1;
		if (!d->disks[i].path) {
			snap_desc_clear(d);
			return -ENOMEM;
		}
		d->disks[i].readonly = flags;
		d->disks[i].size = snap_rd_u64(&r);
	}
	if (r.err || r.off != len) {
		snap_desc_clear(d);
		return -EINVAL;
	}
	return 0;
}

int snap_build_machine(struct vm *vm, const struct snap_desc *d, int console_fd)
{
	struct machine_config mc = {.console_fd = console_fd, .devices_only = true};
	int err = pci_init(vm);

	if (!err)
		err = virtio_rng_add(vm);
	for (unsigned i = 0; !err && i < d->ndisks; i++) {
		if (disk_size(d->disks[i].path) != d->disks[i].size) {
			pr_err("disk %s: not the size it had when the snapshot was taken",
			       d->disks[i].path);
			return -ESTALE;
		}
		err = virtio_blk_add(vm, d->disks[i].path, d->disks[i].readonly);
	}
	if (!err)
		err = x86_machine_setup(vm, &mc);
	return err;
}
