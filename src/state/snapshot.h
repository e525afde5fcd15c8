/*
 * Snapshot and restore of a whole VM (docs/snapshot-format.md).
 *
 * snapshot_save() pauses the VM (vCPUs parked, devices drained), collects a
 * state file (vCPUs, backend irqchip/timers, every device), write-protects
 * guest memory and resumes; the sparse memory file is then written while
 * the guest runs. snapshot_restore() builds the same machine
 * again, maps the memory file copy-on-write (restore time does not grow
 * with guest memory) and loads every piece of state; the caller starts it.
 *
 * A VM can be saved only if it says how it was built: machine_desc_build()
 * (state/machine_desc.h) records its description with snapshot_describe(),
 * and a restore builds from the saved description the same way, so a
 * restored VM can be snapshotted again and cloned.
 */
#ifndef TERN_STATE_SNAPSHOT_H
#define TERN_STATE_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

struct machine_desc;

/*
 * Record how vm was built (machine_desc_build() does it). The description
 * is copied, with each disk's current size, and lives as long as the VM.
 * 0 or -errno.
 */
int snapshot_describe(struct vm *vm, const struct machine_desc *desc);

/* The description recorded on vm (NULL if none); valid while the VM lives. */
const struct machine_desc *snapshot_description(struct vm *vm);

/*
 * Save to state_path and mem_path. The VM is paused only while its state is
 * collected and its memory write-protected (docs/live-memory-snapshot.md);
 * its memory is copied while it runs, each page before its first write.
 * Where the host cannot write-protect it, the VM stays paused while its
 * memory is written. The VM must be running or paused (a paused VM stays
 * paused). Returns when both files are complete and synced: they are
 * written next to their final names and renamed, the state file last. 0
 * or -errno; errors are logged and leave neither file.
 */
int snapshot_save(struct vm *vm, const char *state_path, const char *mem_path);

struct snapshot_stats {
	uint64_t pause_ns;  /* the VM was paused for this long */
	uint64_t total_ns;  /* from the call to complete files */
	bool live;	    /* memory copied while the VM ran */
	uint64_t cbw_pages; /* pages copied before a write reached them */
};

/* snapshot_save() that also reports how long it paused the VM. */
int snapshot_save_stats(struct vm *vm, const char *state_path, const char *mem_path,
			struct snapshot_stats *st);

struct snapshot_restore_cfg {
	const char *state_path;
	const char *mem_path; /* NULL: state_path with ".mem" instead of its extension */
	int console_fd;	      /* where the guest's serial output goes */
	/*
	 * Every restore gives the guest a new generation id (state/identity.h);
	 * a clone also gets a new VM id and its index. disk_paths, if not NULL,
	 * replace the saved disks (a clone's own overlays on them), as many as
	 * the snapshot has; their sizes are not checked against the saved ones.
	 */
	bool clone;
	uint32_t clone_index;
	const char *const *disk_paths;
	unsigned ndisk_paths;
	/*
	 * The backend to restore on: "kvm", "emu", or NULL/"auto" (the
	 * snapshot's if this host can run it, else the other). On the other
	 * backend the snapshot's neutral record is used and the CPU must
	 * offer every feature the guest was given (docs/snapshot-format.md).
	 */
	const char *accel;
};

/*
 * Check a snapshot as snapshot_restore() does before it builds anything
 * (the state file whole; the memory file's header, id and size unless
 * mem_path is NULL) and return its machine description. 0 or -errno with
 * why set; free out with machine_desc_clear().
 */
int snapshot_read_desc(const char *state_path, const char *mem_path, struct machine_desc *out,
		       char *why, size_t whylen);

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
