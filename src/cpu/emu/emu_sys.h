/*
 * System state of the emulator: MSRs, local APIC, events, IOAPIC (sys*.c, apic.c).
 * Included by emu.h only.
 *
 * Threads: a vCPU's architectural state belongs to its own thread. The local
 * APIC is the exception: devices, timers and other vCPUs post interrupts
 * into it from any thread, so its event state sits under apic.lock, and a
 * poster wakes a halted vCPU through apic.wake.
 *
 * Time: the guest TSC runs at EMU_TSC_HZ off the host's monotonic clock and
 * the APIC timer at EMU_CRYSTAL_HZ; both are advertised in CPUID leaf 0x15
 * so the guest never calibrates.
 */
#ifndef TERN_CPU_EMU_EMU_SYS_H
#define TERN_CPU_EMU_EMU_SYS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct emu_cpu;
struct emu_vm;
struct emu_insn;

#define EMU_CRYSTAL_HZ 25000000ull		    /* APIC timer input clock */
#define EMU_TSC_RATIO 40u			    /* TSC = crystal * 40 */
#define EMU_TSC_HZ (EMU_CRYSTAL_HZ * EMU_TSC_RATIO) /* 1 GHz: one TSC tick per ns */

/* Local APIC (apic.c). Fields marked [L] are under lock; the rest are vCPU-thread only. */
struct emu_lapic {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	uint32_t irr[8], tmr[8]; /* [L] */
	bool nmi, init, sipi;	 /* [L] pending NMI / INIT / STARTUP */
	uint8_t sipi_vector;	 /* [L] */
	uint32_t isr[8];
	uint32_t id, tpr, ldr, dfr, svr, esr, esr_pending;
	uint32_t icr_lo, icr_hi;
	uint32_t lvt[7]; /* timer, thermal, perf, LINT0, LINT1, error, CMCI */
	uint32_t tmict, tdcr;
	uint32_t tick_ns;     /* timer input period: the VM's apic_tick_ns */
	uint64_t timer_start; /* host ns when TMICT was written */
	uint64_t timer_due;   /* host ns of the next expiry, 0 when idle */
	uint64_t tsc_deadline;
};

struct emu_sys_cpu {
	uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
	uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
	uint64_t pat, misc_enable, apic_base;
	int64_t tsc_offset;
	uint64_t tsc_aux, spec_ctrl, tsc_adjust;
	uint64_t mtrr_def_type, mtrr_fixed[11], mtrr_var[16];
	bool halted;
	bool intr_shadow;     /* STI / MOV SS shadow: no interrupt before next insn */
	uint64_t shadow_rip;  /* ... which is the one at this address */
	bool nmi_pending;     /* an NMI arrived while blocked */
	bool wait_sipi;	      /* AP after INIT: waits for a STARTUP IPI */
	bool nmi_blocked;     /* an NMI handler runs until IRET */
	bool shutdown;	      /* triple fault: run() returns VCPU_EXIT_SHUTDOWN */
	bool dead;	      /* only INIT/SIPI/NMI can wake it (counted in emu_sys_vm.dead) */
	int delivering;	      /* exception vector being delivered, -1: none (#DF logic) */
	uint32_t pending_irq; /* atomic: nonzero when the APIC may have something to deliver */
	uint32_t kick;	      /* atomic: the VMM wants run() to return */
	struct emu_lapic apic;
};

struct emu_ioapic {
	uint32_t id, sel;
	uint64_t redir[24];
	uint32_t level; /* current line levels, one bit per pin */
};

struct emu_sys_vm {
	pthread_mutex_t lock; /* IOAPIC; set up by emu_vm_init() */
	struct emu_ioapic ioapic;
	uint64_t time_base; /* host ns at TSC 0 */
	/*
	 * Guest TSC rate (default EMU_TSC_HZ) and LAPIC timer input period
	 * (default 1 s / EMU_CRYSTAL_HZ): fixed per VM, so a guest taken from
	 * a KVM host keeps the rates it calibrated to (cpu_model_cfg).
	 */
	uint32_t tsc_khz, apic_tick_ns;
	/* The portable model: CPUID limited to what this host's KVM offers (emu_cpuid.h). */
	bool has_limit;
	uint32_t limit[6][4];
	uint32_t dead; /* atomic: vCPUs with sys.dead set; all of them: run() returns HLT */
};

/*
 * Setup: the backend (and tests) call these after emu_vm_init() and
 * emu_cpu_init(); emu_sys_cpu_init() puts the vCPU in its reset state (the
 * BSP runnable, others waiting for a STARTUP IPI) and needs c->vm and c->id.
 */
int emu_sys_vm_init(struct emu_vm *ev);
void emu_sys_vm_destroy(struct emu_vm *ev);
int emu_sys_cpu_init(struct emu_cpu *c);
void emu_sys_cpu_destroy(struct emu_cpu *c);

/*
 * The core calls emu_deliver_fault(), emu_check_events() and emu_load_seg()
 * (emu.h) and asks emu_sys_handler() for far JMP/CALL/RET (EMU_MN_FAR) and
 * MOV CRn/DRn (EMU_MN_CRDR). sys.c sets c->sys.pending_irq whenever
 * emu_check_events() must run before the next instruction (shutdown after
 * a triple fault, STI, a posted interrupt).
 */

/* Time (sys_msr.c). */
uint64_t emu_now_ns(void);
uint64_t emu_rdtsc(struct emu_cpu *c);
/* VM-wide TSC (no per-vCPU offset) <-> host monotonic ns, at the VM's TSC rate. */
uint64_t emu_ns_to_tsc(const struct emu_vm *ev, uint64_t ns);
uint64_t emu_tsc_to_ns(const struct emu_vm *ev, int64_t tsc);

/* Local APIC and IOAPIC (apic.c). */
void emu_apic_reset(struct emu_cpu *c);
/* The MMIO hook: true if gpa is this vCPU's local APIC page or the IOAPIC and was handled. */
bool emu_apic_mmio(struct emu_cpu *c, uint64_t gpa, void *data, unsigned size, int is_write);
/* Thread-safe injection: a GSI level change, an MSI write; 0 or -EINVAL. */
int emu_ioapic_set_irq(struct emu_vm *ev, uint32_t gsi, int level);
int emu_msi(struct emu_vm *ev, uint64_t addr, uint32_t data);
/* Make emu_check_events() return VCPU_EXIT_KICK soon, from any thread. */
void emu_kick(struct emu_cpu *c);
/* vCPU thread: fire due timers; ack: the highest deliverable vector (moved to ISR) or -1. */
void emu_apic_timers(struct emu_cpu *c, uint64_t now);
int emu_apic_ack(struct emu_cpu *c);
/* True if a fixed interrupt would be accepted now (above PPR); _locked: apic.lock held. */
bool emu_apic_has_irq(struct emu_cpu *c);
bool emu_apic_has_irq_locked(struct emu_cpu *c);
/* Pending NMI / INIT / SIPI, taken (cleared) by the vCPU thread. */
enum { EMU_EV_NMI = 1, EMU_EV_INIT = 2, EMU_EV_SIPI = 4 };
unsigned emu_apic_take_events(struct emu_cpu *c, uint8_t *sipi_vector);
/* IA32_TSC_DEADLINE. */
void emu_apic_set_deadline(struct emu_cpu *c, uint64_t tsc);
uint64_t emu_apic_get_deadline(struct emu_cpu *c);
/* Host ns of the next timer expiry, 0 if none. */
uint64_t emu_apic_next_due(struct emu_cpu *c);
uint32_t emu_apic_read_reg(struct emu_cpu *c, uint32_t off);
void emu_apic_write_reg(struct emu_cpu *c, uint32_t off, uint32_t v);
/* TPR <-> CR8. */
uint64_t emu_apic_get_cr8(struct emu_cpu *c);
void emu_apic_set_cr8(struct emu_cpu *c, uint64_t v);
/* Snapshot image, KVM_GET_LAPIC layout (1 KiB). */
void emu_apic_save(struct emu_cpu *c, uint8_t regs[1024]);
void emu_apic_load(struct emu_cpu *c, const uint8_t regs[1024]);

/* MSRs and CPUID (sys_msr.c): false if the MSR does not exist (#GP). */
bool emu_msr_read(struct emu_cpu *c, uint32_t idx, uint64_t *v);
bool emu_msr_write(struct emu_cpu *c, uint32_t idx, uint64_t v);
void emu_cpuid(struct emu_cpu *c, uint32_t leaf, uint32_t sub, uint32_t out[4]);

#endif
