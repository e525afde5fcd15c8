/*
 * Snapshot and restore of a whole VM (docs/snapshot-format.md).
 *
 * snapshot_save() pauses the VM (vCPUs parked, devices drained), writes a
 * state file (vCPUs, backend irqchip/timers, every device) and a sparse
 * memory file, and resumes. snapshot_restore() builds the same machine
 * again, maps the memory file copy-on-write (restore time does not grow
 * with guest memory) and loads every piece of state; the caller starts it.
 *
 * A VM can be saved only if it says how it was built: whoever builds the
 * machine calls snapshot_describe() with what a restore needs to build it
 * again (its disks). snapshot_restore() does that for the VMs it builds, so
 * a restored VM can be snapshotted again (and cloned, later).
 */
#ifndef TERN_STATE_SNAPSHOT_H
#define TERN_STATE_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

#define SNAP_MAX_DISKS 16
#define SNAP_PATH_MAX 4096

struct snap_machine_desc {
	unsigned ndisks;
	struct {
		const char *path; /* as given to virtio_blk_add() */
		bool readonly;
	} disks[SNAP_MAX_DISKS];
};

/*
 * Record how vm was built: the machine tern run builds (PCI, virtio-rng,
 * the disks in this order, then the x86 platform devices). The description
 * is copied and lives as long as the VM. 0 or -errno.
 */
int snapshot_describe(struct vm *vm, const struct snap_machine_desc *desc);

/*
 * Pause, save to state_path and mem_path, resume. The VM must be running
 * or paused (a paused VM stays paused). Files are written next to their
 * final names and renamed when complete. 0 or -errno; errors are logged.
 */
int snapshot_save(struct vm *vm, const char *state_path, const char *mem_path);

struct snapshot_restore_cfg {
	const char *state_path;
	const char *mem_path; /* NULL: state_path with ".mem" instead of its extension */
	int console_fd;	      /* where the guest's serial output goes */
};

/*
 * Build a VM from a snapshot, not started: the caller runs vm_start(). On
 * failure nothing is left to destroy and why (if not NULL) holds a line
 * for the user. Returns 0 or -errno.
 */
int snapshot_restore(struct vm *vm, const struct snapshot_restore_cfg *cfg, char *why,
		     size_t whylen);

/* The memory file path that goes with a state file: "x.state" -> "x.mem". Free it. */
char *snapshot_default_mem_path(const char *state_path);

#endif
