/*
 * The identity device: who this VM is, readable by the guest without a
 * driver. A PCI function (vendor 0x1af4, device 0x1ff0, class 0xff0000:
 * "unassigned", so no guest driver binds to it) with no BARs and one
 * vendor-specific capability in its configuration space:
 *
 *   +0  u8  capability id 0x09     +1  u8 next
 *   +2  u8  length (44)            +3  u8 version (1)
 *   +4  u32 clone index (IDENTITY_NOT_A_CLONE for a VM that is no clone)
 *   +8  16  generation id: random, new on every boot, restore and clone
 *   +24 16  VM id (uuid): random at boot, kept by restore, new per clone
 *   +40 u32 restore count: how many restores/clones since boot
 *
 * A Linux guest reads it as root from /sys/bus/pci/devices/<dev>/config
 * (docs/snapshot-format.md, "Clones"). All of it is read-only to the guest.
 */
#ifndef TERN_STATE_IDENTITY_H
#define TERN_STATE_IDENTITY_H

#include <stdint.h>

struct vm;

#define IDENTITY_VENDOR 0x1af4
#define IDENTITY_DEVICE 0x1ff0
#define IDENTITY_NOT_A_CLONE 0xffffffffu
#define IDENTITY_ID_LEN 16

/* Add the device with a fresh VM id and generation id. 0 or -errno. */
int identity_add(struct vm *vm);

/*
 * After a restore: a new generation id and one more restore; for a clone
 * (clone_index != IDENTITY_NOT_A_CLONE) also a new VM id and that index.
 * -ENODEV if the VM has no identity device (an old snapshot).
 */
int identity_renew(struct vm *vm, uint32_t clone_index);

/* Read the current values (for tests and the API). 0 or -ENODEV. */
int identity_get(struct vm *vm, uint32_t *clone_index, uint8_t gen[IDENTITY_ID_LEN],
		 uint8_t uuid[IDENTITY_ID_LEN]);

#endif
