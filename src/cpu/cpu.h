/*
 * The CPU backend interface. tern runs guests on one of two backends:
 *   kvm - hardware virtualization through /dev/kvm (production);
 *   emu - tern's own x86-64 emulator, for hosts whose /dev/kvm cannot run an
 *         unmodified kernel (no VMX/SVM) or that have no /dev/kvm at all.
 * Everything above this interface (memory, devices, boot, snapshots) is
 * shared and does not know which backend runs.
 *
 * I/O: a backend delivers the guest's port and MMIO accesses to vm_pio() and
 * vm_mmio() (vmm/vm.h) on the vCPU thread and continues the guest; it returns
 * from vcpu_run() only when the VMM must act (stop request, shutdown, error).
 */
#ifndef TERN_CPU_CPU_H
#define TERN_CPU_CPU_H

#include <stdbool.h>
#include <stdint.h>

struct vm;
struct vcpu;
struct dev_buf;
struct cpu_neutral;

/*
 * The CPU model a VM presents, chosen when it is created (struct vm_config)
 * and fixed for its life: a guest keeps using what CPUID told it at boot.
 * Zero values are the backend's defaults.
 */
struct cpu_model_cfg {
	/*
	 * Present the emulator's CPU (vendor, signature, feature leaves, timing
	 * leaves) on any backend, so a guest can move between backends.
	 */
	bool baseline;
	uint32_t tsc_khz;      /* guest TSC rate; 0: the backend's own */
	uint32_t apic_tick_ns; /* LAPIC timer input period; 0: the backend's own */
};

/* A segment register, in the layout of the hidden descriptor cache. */
struct cpu_seg {
	uint64_t base;
	uint32_t limit;
	uint16_t sel;
	uint8_t type, present, dpl, db, s, l, g, avl, unusable;
};

struct cpu_dtable {
	uint64_t base;
	uint16_t limit;
};

/* The architectural state of one vCPU: what a snapshot stores. */
struct cpu_state {
	uint64_t gpr[16]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (encoding order) */
	uint64_t rip, rflags;
	struct cpu_seg es, cs, ss, ds, fs, gs, ldt, tr;
	struct cpu_dtable gdt, idt;
	uint64_t cr0, cr2, cr3, cr4, cr8, efer, xcr0;
	uint64_t apic_base;
	/* MSRs */
	uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
	uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
	uint64_t pat, tsc, tsc_deadline, misc_enable;
	uint64_t kvm_system_time, kvm_wall_clock;
	/* x87/SSE state in FXSAVE layout. */
	uint8_t fxsave[512] __attribute__((aligned(16)));
	/* Local APIC registers, 1 KiB as KVM_GET_LAPIC lays them out. */
	uint8_t lapic[1024];
	/* Event state. */
	bool halted;
	bool intr_shadow;
	int32_t pending_exception; /* vector or -1 */
	uint32_t pending_error_code;
};

enum vcpu_exit {
	VCPU_EXIT_KICK,	    /* vcpu_kick() asked us to return, or a stop was requested */
	VCPU_EXIT_HLT,	    /* halted with interrupts masked (or no irqchip): nothing can wake it */
	VCPU_EXIT_SHUTDOWN, /* triple fault or explicit shutdown */
	VCPU_EXIT_ERROR,    /* backend failure; details were logged */
};

struct cpu_backend {
	const char *name;
	/* Called after vm->mem is set up and before any vCPU exists. */
	int (*vm_create)(struct vm *vm);
	void (*vm_destroy)(struct vm *vm);
	int (*vcpu_create)(struct vcpu *vcpu);
	void (*vcpu_destroy)(struct vcpu *vcpu);
	int (*get_state)(struct vcpu *vcpu, struct cpu_state *st);
	int (*set_state)(struct vcpu *vcpu, const struct cpu_state *st);
	/* Run on the vCPU's own thread until the VMM must act. */
	enum vcpu_exit (*run)(struct vcpu *vcpu);
	/* From any thread: make run() return VCPU_EXIT_KICK soon. */
	void (*kick)(struct vcpu *vcpu);
	/* Interrupts: a level change on a GSI of the IOAPIC, or an MSI write. */
	int (*irq_line)(struct vm *vm, uint32_t gsi, int level);
	int (*msi)(struct vm *vm, uint64_t addr, uint32_t data);
	/* OR the pages written since the last call into vm->mem.dirty. */
	int (*sync_dirty)(struct vm *vm);
	/*
	 * Snapshots (state/): state beyond struct cpu_state (irqchip, timers,
	 * MSRs outside cpu_state) in the backend's own versioned format, saved
	 * and restored while the vCPUs are parked; and a string naming the CPU
	 * model the guest sees, which must match for a restore. A backend
	 * without them cannot be snapshotted.
	 */
	int (*save_extra)(struct vm *vm, struct dev_buf *out);
	int (*restore_extra)(struct vm *vm, const void *data, uint64_t len);
	int (*cpu_model)(struct vm *vm, char *buf, unsigned len);
	/*
	 * Cross-backend snapshots (state/cpu_neutral.h): the CPUID the guest
	 * sees (vCPU 0, topology fields aside), and the interrupt controller,
	 * timer and event state both backends have, in one neutral form. A
	 * backend imports a record after set_state() of every vCPU, in place
	 * of its own restore_extra().
	 */
	void (*cpuid)(struct vm *vm, uint32_t leaf, uint32_t sub, uint32_t out[4]);
	int (*export_neutral)(struct vm *vm, struct cpu_neutral *n);
	int (*import_neutral)(struct vm *vm, const struct cpu_neutral *n);
};

extern const struct cpu_backend cpu_backend_kvm;
extern const struct cpu_backend cpu_backend_emu;

/* True if /dev/kvm can run an unmodified kernel here (host has VMX or SVM). */
bool cpu_kvm_has_hw_virt(void);

/*
 * What this host's KVM offers for the CPUID leaves the emulator's portable
 * model limits (cpu/emu/emu_cpuid.h: emu_cpuid_limit_ids). 0 or -errno
 * (no /dev/kvm: -ENOENT or -EACCES).
 */
int cpu_kvm_host_limits(uint32_t lim[6][4]);

#endif
