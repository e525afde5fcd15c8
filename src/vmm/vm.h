/*
 * struct vm owns everything a guest is made of: memory, vCPUs, buses,
 * devices and the CPU backend. There are no globals beyond the logger.
 */
#ifndef TERN_VMM_VM_H
#define TERN_VMM_VM_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "vmm/bus.h"
#include "vmm/mem.h"

struct vm;
struct pci_bus;
struct dev_stats;

/* vCPU life: created -> running <-> paused -> stopped. Driven by vm_* calls, not signals. */
enum vcpu_run_state { VCPU_CREATED, VCPU_RUNNING, VCPU_PAUSED, VCPU_STOPPED };

struct vcpu {
	struct vm *vm;
	int id;
	pthread_t thread;
	enum vcpu_run_state state;
	void *backend; /* backend-private vCPU state */
	/* Counters for stats. */
	uint64_t exits_pio, exits_mmio, exits_hlt, exits_other;
	bool dead_halt; /* returned VCPU_EXIT_HLT: halted with nothing able to wake it */
};

/* Why the VM stopped. */
enum vm_stop_reason {
	VM_RUNNING = 0,
	VM_STOP_POWEROFF, /* guest powered off */
	VM_STOP_RESET,	  /* guest asked for reboot */
	VM_STOP_SHUTDOWN, /* triple fault */
	VM_STOP_PANIC,	  /* guest kernel panic (pvpanic) */
	VM_STOP_ERROR,	  /* tern-side error */
	VM_STOP_USER,	  /* stopped by the user / API */
};

/*
 * Every device implements these so the VM can be paused, saved, restored and
 * resumed as a whole. save() appends the device's state to a buffer (format
 * owned by the device, versioned by it); restore() reads it back and must
 * validate everything it reads.
 */
struct dev_buf {
	uint8_t *data;
	uint64_t len, cap;
};
/* Append len bytes to a save buffer; 0 or -ENOMEM. */
int dev_buf_put(struct dev_buf *b, const void *data, uint64_t len);
void dev_buf_free(struct dev_buf *b);

struct device_ops {
	const char *name;
	void (*pause)(void *dev);
	void (*resume)(void *dev);
	int (*save)(void *dev, struct dev_buf *out);
	int (*restore)(void *dev, const void *data, uint64_t len);
	void (*reset)(void *dev);
	void (*destroy)(void *dev);
	/* Optional: report counters for GET /vm/stats (api/stats.h); called from the API thread. */
	void (*stats)(void *dev, struct dev_stats *st);
};

struct device {
	const struct device_ops *ops;
	void *dev;
	struct device *next;
};

struct vm {
	struct guest_mem mem;
	const struct cpu_backend *cpu;
	struct cpu_model_cfg model; /* as created: what CPUID and the timers present */
	void *backend;		    /* backend-private VM state */
	int ncpus;
	struct vcpu *vcpus;
	struct io_bus pio, mmio;
	struct device *devices;
	void *machine;	     /* platform devices (arch/x86): serial, exit device, ACPI PM, ... */
	struct pci_bus *pci; /* hw/pci.c: host bridge and config space */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum vm_stop_reason stop_reason; /* first reason wins */
	int exit_status;		 /* guest-reported exit status, or -1 */

	/* vCPU thread control, under lock. */
	bool started, joined;
	int ncpus_started; /* vCPU threads created (joined at the end) */
	bool pause_req;	   /* vCPUs park in VCPU_PAUSED while set */
	int pause_count;   /* vm_pause() calls not yet matched by vm_resume() */
	bool pause_busy;   /* a pause or resume is parking vCPUs / pausing devices */
	int ndead_halted;  /* vCPUs that returned VCPU_EXIT_HLT */
};

struct vm_config {
	uint64_t mem_size;
	enum gm_backing mem_backing; /* GM_BACKING_AUTO (0) unless asked */
	int ncpus;
	const struct cpu_backend *cpu;
	struct cpu_model_cfg model; /* zero: the backend's own CPU model */
};

int vm_create(struct vm *vm, const struct vm_config *cfg);
void vm_destroy(struct vm *vm);
/* Register a device for pause/save/restore/resume/destroy. */
int vm_add_device(struct vm *vm, const struct device_ops *ops, void *dev);

/* Start all vCPU threads; vm_wait() blocks until the VM stops, returns the reason. */
int vm_start(struct vm *vm);
enum vm_stop_reason vm_wait(struct vm *vm);
/* From any thread (a device, the API, a signal handler thread): stop the VM. */
void vm_request_stop(struct vm *vm, enum vm_stop_reason why);
/*
 * Park every vCPU outside the guest (and pause devices); vm_resume() undoes
 * it. Pauses nest: each successful vm_pause() is matched by one vm_resume(),
 * and the VM runs again only when the last holder resumes (a sweep's own
 * pause and a user's pause compose). Not from a vCPU or device I/O thread.
 * 0, or -ESRCH if the VM has stopped (nothing to resume then).
 */
int vm_pause(struct vm *vm);
void vm_resume(struct vm *vm);
/* A short human-readable name for a stop reason. */
const char *vm_stop_reason_str(enum vm_stop_reason why);

/* Called by CPU backends on the vCPU thread for each guest I/O access. */
void vm_pio(struct vcpu *vcpu, uint16_t port, void *data, unsigned size, int is_write);
void vm_mmio(struct vcpu *vcpu, uint64_t gpa, void *data, unsigned size, int is_write);

/* Interrupts, for devices: forwarded to the backend's irqchip. */
int vm_irq_line(struct vm *vm, uint32_t gsi, int level);
int vm_msi(struct vm *vm, uint64_t addr, uint32_t data);

#endif
