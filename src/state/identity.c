/*
 * The identity device (state/identity.h): a PCI function whose only content
 * is a read-only vendor-specific capability naming the VM. Saved with the
 * VM; a restore gets a new generation id, a clone also a new VM id.
 *
 * Saved state, version 1: the PCI layer's blob, then u32 version, u32 clone
 * index, u32 restore count, 16-byte generation id, 16-byte VM id.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "hw/pci.h"
#include "state/identity.h"
#include "state/snapfile.h"
#include "util/log.h"
#include "vmm/vm.h"

#define ID_CAP_LEN 44
#define ID_CAP_VERSION 1
#define ID_SAVE_VERSION 1u
#define ID_CLASS 0xff0000u

/* Capability layout (offsets from the capability's start). */
#define ID_OFF_INDEX 4
#define ID_OFF_GEN 8
#define ID_OFF_UUID 24
#define ID_OFF_COUNT 40

struct identity {
	struct pci_dev pci;
	uint8_t cap; /* config offset of the capability */
};

static const struct pci_dev_ops id_pci_ops = {.name = "identity"};

static int fresh(uint8_t *buf, size_t len)
{
	return getrandom(buf, len, 0) == (ssize_t)len ? 0 : -EIO;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int id_save(void *dev, struct dev_buf *out)
{
	struct identity *id = dev;
	uint8_t c[ID_CAP_LEN];
	int err = pci_dev_save(&id->pci, out);

	pthread_mutex_lock(&id->pci.lock);
	memcpy(c, &id->pci.cfg[id->cap], sizeof(c));
	pthread_mutex_unlock(&id->pci.lock);
	if (!err)
		err = snap_put_u32(out, ID_SAVE_VERSION);
	if (!err)
		err = snap_put_u32(out, get32(c + ID_OFF_INDEX));
	if (!err)
		err = snap_put_u32(out, get32(c + ID_OFF_COUNT));
	if (!err)
		err = dev_buf_put(out, c + ID_OFF_GEN, IDENTITY_ID_LEN);
	if (!err)
		err = dev_buf_put(out, c + ID_OFF_UUID, IDENTITY_ID_LEN);
	return err;
}

static int id_restore(void *dev, const void *data, uint64_t len)
{
	struct identity *id = dev;
	int used = pci_dev_restore(&id->pci, data, len);
	struct snap_rd r;
	uint32_t index, count;
	uint8_t gen[IDENTITY_ID_LEN], uuid[IDENTITY_ID_LEN];

	if (used < 0)
		return used;
	r = (struct snap_rd){.p = (const uint8_t *)data + used, .len = len - (uint64_t)used};
	if (snap_rd_u32(&r) != ID_SAVE_VERSION)
		return -EINVAL;
	index = snap_rd_u32(&r);
	count = snap_rd_u32(&r);
	snap_rd_bytes(&r, gen, sizeof(gen));
	snap_rd_bytes(&r, uuid, sizeof(uuid));
	if (r.err || r.off != r.len)
		return -EINVAL;
	pthread_mutex_lock(&id->pci.lock);
	put32(&id->pci.cfg[id->cap + ID_OFF_INDEX], index);
	put32(&id->pci.cfg[id->cap + ID_OFF_COUNT], count);
	memcpy(&id->pci.cfg[id->cap + ID_OFF_GEN], gen, sizeof(gen));
	memcpy(&id->pci.cfg[id->cap + ID_OFF_UUID], uuid, sizeof(uuid));
	pthread_mutex_unlock(&id->pci.lock);
	return 0;
}

static void id_destroy(void *dev)
{
	struct identity *id = dev;

	pci_dev_remove(&id->pci);
	free(id);
}

static const struct device_ops id_device_ops = {
    .name = "identity", .save = id_save, .restore = id_restore, .destroy = id_destroy};

static struct identity *id_find(struct vm *vm)
{
	struct identity *found = NULL;

	pthread_mutex_lock(&vm->lock);
	for (struct device *d = vm->devices; d; d = d->next)
		if (d->ops == &id_device_ops)
			found = d->dev;
	pthread_mutex_unlock(&vm->lock);
	return found;
}

int identity_add(struct vm *vm)
{
	uint8_t cap[ID_CAP_LEN] = {0};
	struct identity *id = calloc(1, sizeof(*id));
	int err, off;

	if (!id)
		return -ENOMEM;
	cap[2] = ID_CAP_LEN;
	cap[3] = ID_CAP_VERSION;
	put32(cap + ID_OFF_INDEX, IDENTITY_NOT_A_CLONE);
	err = fresh(cap + ID_OFF_GEN, IDENTITY_ID_LEN);
	if (!err)
		err = fresh(cap + ID_OFF_UUID, IDENTITY_ID_LEN);
	if (err) {
		free(id);
		return err;
	}
	pci_dev_setup(&id->pci, vm, &id_pci_ops, id, IDENTITY_VENDOR, IDENTITY_DEVICE, ID_CLASS, 1);
	off = pci_dev_add_cap(&id->pci, PCI_CAP_ID_VNDR, cap, sizeof(cap));
	if (off < 0) {
		free(id);
		return off;
	}
	id->cap = (uint8_t)off;
	err = pci_dev_add(vm, &id->pci);
	if (err) {
		free(id);
		return err;
	}
	err = vm_add_device(vm, &id_device_ops, id);
	if (err)
		id_destroy(id);
	return err;
}

int identity_renew(struct vm *vm, uint32_t clone_index)
{
	struct identity *id = id_find(vm);
	uint8_t gen[IDENTITY_ID_LEN], uuid[IDENTITY_ID_LEN];
	uint8_t *c;
	int err;

	if (!id)
		return -ENODEV;
	err = fresh(gen, sizeof(gen));
	if (!err)
		err = fresh(uuid, sizeof(uuid));
	if (err)
		return err;
	pthread_mutex_lock(&id->pci.lock);
	c = &id->pci.cfg[id->cap];
	memcpy(c + ID_OFF_GEN, gen, sizeof(gen));
	put32(c + ID_OFF_COUNT, get32(c + ID_OFF_COUNT) + 1);
	if (clone_index != IDENTITY_NOT_A_CLONE) {
		memcpy(c + ID_OFF_UUID, uuid, sizeof(uuid));
		put32(c + ID_OFF_INDEX, clone_index);
	}
	pthread_mutex_unlock(&id->pci.lock);
	return 0;
}

int identity_get(struct vm *vm, uint32_t *clone_index, uint8_t gen[IDENTITY_ID_LEN],
		 uint8_t uuid[IDENTITY_ID_LEN])
{
	struct identity *id = id_find(vm);

	if (!id)
		return -ENODEV;
	pthread_mutex_lock(&id->pci.lock);
	*clone_index = get32(&id->pci.cfg[id->cap + ID_OFF_INDEX]);
	memcpy(gen, &id->pci.cfg[id->cap + ID_OFF_GEN], IDENTITY_ID_LEN);
	memcpy(uuid, &id->pci.cfg[id->cap + ID_OFF_UUID], IDENTITY_ID_LEN);
	pthread_mutex_unlock(&id->pci.lock);
	return 0;
}
