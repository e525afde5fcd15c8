/*
 * virtio devices on the PCI bus (modern virtio-pci only). Call after
 * pci_init(vm). Each device runs its requests on its own I/O thread and is
 * registered with the VM for pause/resume/save/restore/reset/destroy.
 */
#ifndef TERN_VIRTIO_VIRTIO_H
#define TERN_VIRTIO_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>

struct vm;

/*
 * A virtio-blk disk on the image spec (a path or URI, opened with blk_open).
 * readonly (or a read-only image) offers VIRTIO_BLK_F_RO and refuses writes.
 * Returns 0 or -errno (the error was logged).
 */
int virtio_blk_add(struct vm *vm, const char *spec, bool readonly);

/*
 * Running disks, for live snapshots and backend switches (api/disks.c).
 * virtio_blk_find: the disk added n-th (0: the first), or NULL.
 * virtio_blk_call: run fn on the disk's block device, one call at a time per
 * disk. With hold, requests are drained and new ones held in the queue
 * while fn runs; fn may then replace *bd by a device of the same size (and
 * owns the old one), and the held requests go to the new device. Without
 * hold fn must leave *bd alone. *held_ns (may be NULL) is how long requests
 * were held. Returns fn's result.
 */
struct vblk;
struct blockdev;
struct vblk *virtio_blk_find(struct vm *vm, unsigned n);
bool virtio_blk_readonly(const struct vblk *vb);
int virtio_blk_call(struct vblk *vb, bool hold, int (*fn)(struct blockdev **bd, void *arg),
		    void *arg, uint64_t *held_ns);

/* A virtio-rng entropy source fed by getrandom(). */
int virtio_rng_add(struct vm *vm);

#endif
