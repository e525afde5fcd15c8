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
