/*
 * The machine description: everything that says which machine tern builds
 * (kernel, initrd, command line, vCPUs, RAM, disks, balloon, backend...).
 * One description is filled from the command line (cmd/vmopts.h), turned
 * into a machine by machine_desc_build(), recorded on the VM so a snapshot
 * can be taken (snapshot_describe()), saved as the state file's MACHINE
 * record, and read back by restore and clone, which build the same machine
 * with machine_desc_build() again. tern run, snapshot, restore and clone all
 * go through here, so a device added to the machine is added for all four.
 */
#ifndef TERN_STATE_MACHINE_DESC_H
#define TERN_STATE_MACHINE_DESC_H

#include <stdbool.h>
#include <stdint.h>

#include "vmm/mem.h"

struct vm;
struct cpu_backend;

#define MACHINE_MAX_DISKS 16
#define MACHINE_PATH_MAX 4096
#define MACHINE_CMDLINE_MAX 4096

struct machine_disk {
	char *path; /* as given to virtio_blk_add(): a file or an nbd:// URI */
	bool readonly;
	uint64_t size; /* bytes when described (0 for a network disk); restore checks it */
};

struct machine_desc {
	char *kernel, *initrd; /* what was booted (kept in snapshots for the record) */
	char *cmdline;	       /* the whole kernel command line */
	int cpus;
	uint64_t mem_mib;
	char *accel; /* "kvm", "emu" or "auto" */
	unsigned ndisks;
	struct machine_disk disks[MACHINE_MAX_DISKS];
	bool balloon;		   /* virtio-balloon */
	bool balloon_no_reporting; /* ... without free page reporting */
	bool identity; /* the identity device (state/identity.h); false only in old snapshots */
	/*
	 * The portable CPU model (cpu/cpu.h: cpu_model_cfg.baseline). Not in the
	 * MACHINE record: the neutral record carries the CPU model.
	 */
	bool portable_cpu;
	/* Not part of the machine, so not saved: where the control API listens, */
	char *api_socket;
	/* and what backs guest RAM (a restored VM maps its snapshot's file). */
	enum gm_backing mem_backing;
};

/* Free every string and zero d. */
void machine_desc_clear(struct machine_desc *d);
/* Deep copy; 0 or -ENOMEM (dst is then cleared). */
int machine_desc_copy(struct machine_desc *dst, const struct machine_desc *src);
/* Append a disk (path copied); -ENOSPC past MACHINE_MAX_DISKS, -ENAMETOOLONG, -ENOMEM. */
int machine_desc_add_disk(struct machine_desc *d, const char *path, bool readonly);

/* The backend --accel names: auto is kvm on a host with VMX/SVM, else the emulator. */
const struct cpu_backend *machine_desc_backend(const struct machine_desc *d);

/*
 * Build the machine on a created VM, in the one order every snapshot relies
 * on: PCI host bridge, virtio-rng, the disks in order, virtio-balloon, the
 * identity device, then the x86 platform (COM1, exit/reset/ACPI, RTC).
 * boot: load the kernel, initrd and command line and set up vCPU 0; else
 * (restore) RAM and vCPUs come from a snapshot, and each disk must still
 * have its described size (-ESTALE). Records the description on the VM
 * (snapshot_describe()). 0 or -errno, logged.
 */
int machine_desc_build(struct vm *vm, const struct machine_desc *d, int console_fd, bool boot);

/* vm_create() from the description (RAM, vCPUs, backend), then machine_desc_build(boot). */
int machine_create(struct vm *vm, const struct machine_desc *d, int console_fd);

#endif
