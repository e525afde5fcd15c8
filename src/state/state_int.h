/* Internal to src/state/: the machine description and building the machine again. */
#ifndef TERN_STATE_STATE_INT_H
#define TERN_STATE_STATE_INT_H

#include "state/snapfile.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"

/* The description registered on vm, or NULL. */
const struct machine_desc *snap_desc_find(struct vm *vm);
/* True for the description's own registry entry (it is not a device to save). */
bool snap_desc_is(const struct device *d);
int snap_desc_encode(const struct machine_desc *d, struct dev_buf *out);
/* Decode an untrusted MACHINE record; free with machine_desc_clear(). */
int snap_desc_decode(const void *data, uint64_t len, struct machine_desc *d);

#endif
