/*
 * virtio devices on the PCI bus (modern virtio-pci only). Call after
 * pci_init(vm). Each device runs its requests on its own I/O thread and is
 * registered with the VM for pause/resume/save/restore/reset/destroy.
 */
#ifndef TERN_VIRTIO_VIRTIO_H
#define TERN_VIRTIO_VIRTIO_H

#include <stdbool.h>

struct vm;

/*
 * A virtio-blk disk on the image spec (a path or URI, opened with blk_open).
 * readonly (or a read-only image) offers VIRTIO_BLK_F_RO and refuses writes.
 * Returns 0 or -errno (the error was logged).
 */
int virtio_blk_add(struct vm *vm, const char *spec, bool readonly);

/* A virtio-rng entropy source fed by getrandom(). */
int virtio_rng_add(struct vm *vm);

#endif
