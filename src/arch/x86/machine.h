/*
 * The x86 machine as a whole: platform devices, ACPI tables, the kernel and
 * initrd in memory, and the boot vCPU at the kernel's 64-bit entry.
 * vm->machine points to a struct x86_machine after x86_machine_setup().
 */
#ifndef TERN_ARCH_X86_MACHINE_H
#define TERN_ARCH_X86_MACHINE_H

#include <stdbool.h>

#include "arch/x86/boot.h"

struct vm;
struct serial;

/*
 * The kernel command line tern boots with, before the user's --cmdline.
 * no_timer_check skips the IO-APIC timer test (it waits for ticks) and
 * tsc=reliable the clocksource watchdog (tern's TSC runs at a constant
 * rate). Both are the usual microVM settings.
 */
#define X86_DEFAULT_CMDLINE                                                                        \
	"console=ttyS0 reboot=k panic=-1 loglevel=4 8250.nr_uarts=1 cryptomgr.notests "            \
	"no_timer_check tsc=reliable"

/*
 * Added on tern's emulator, where every instruction of boot counts: the
 * rewrite of enum names into values in every trace event's format, a
 * boot-time pass of ~0.2 s there (bench/boot-profile) that only serves
 * user-space trace parsers; the kernel's own trace output is unaffected.
 * (Skipping ftrace's weak-function check would save another ~0.35 s, but
 * then reading available_filter_functions WARNs.)
 */
#define X86_EMU_CMDLINE "initcall_blacklist=trace_eval_init"

struct machine_config {
	const char *kernel_path;
	const char *initrd_path; /* NULL: none */
	const char *cmdline;
	int console_fd;	   /* where the guest's serial output goes */
	bool devices_only; /* restore: RAM, tables and vCPU state come from a snapshot */
};

struct x86_machine {
	struct serial *com1;
	struct boot_info boot;
	uint64_t rsdp;
};

/* After vm_create() (and PCI setup): devices, tables, kernel, vCPU 0 state. 0 or -errno. */
int x86_machine_setup(struct vm *vm, const struct machine_config *cfg);

#endif
