/* Internal to src/state/: the machine description and building the machine again. */
#ifndef TERN_STATE_STATE_INT_H
#define TERN_STATE_STATE_INT_H

#include "state/snapfile.h"
#include "state/snapshot.h"

/* A machine description with owned strings and the disks' sizes when described. */
struct snap_desc {
	unsigned ndisks;
	struct {
		char *path;
		bool readonly;
		uint64_t size;
	} disks[SNAP_MAX_DISKS];
};

/* The description registered on vm, or NULL. */
const struct snap_desc *snap_desc_find(struct vm *vm);
/* True for the description's own registry entry (it is not a device to save). */
bool snap_desc_is(const struct device *d);
int snap_desc_encode(const struct snap_desc *d, struct dev_buf *out);
/* Decode an untrusted MACHINE record; free with snap_desc_clear(). */
int snap_desc_decode(const void *data, uint64_t len, struct snap_desc *d);
void snap_desc_clear(struct snap_desc *d);
/* PCI, virtio-rng, the disks, the x86 platform devices: what tern run builds, minus the boot. */
int snap_build_machine(struct vm *vm, const struct snap_desc *d, int console_fd);

#endif
