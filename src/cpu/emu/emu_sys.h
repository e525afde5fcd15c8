/* System state of the emulator: MSRs, local APIC, events, IOAPIC (sys.c, apic.c). */
#ifndef TERN_CPU_EMU_EMU_SYS_H
#define TERN_CPU_EMU_EMU_SYS_H

#include <pthread.h>

struct emu_sys_cpu {
	uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
	uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
	uint64_t pat, misc_enable, apic_base;
	int64_t tsc_offset;
	bool halted;
	bool intr_shadow;	    /* STI / MOV SS shadow: no interrupt before next insn */
	uint32_t pending_irq;	    /* atomic: nonzero when the APIC may have something to deliver */
	uint32_t kick;		    /* atomic: the VMM wants run() to return */
};

struct emu_sys_vm {
	pthread_mutex_t lock;
};

#endif
