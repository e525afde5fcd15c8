/*
 * The x86-64 Linux boot protocol (Documentation/arch/x86/boot.rst): load a
 * bzImage and an initrd into guest memory, build the zero page (boot_params)
 * with the e820 map and command line, and the 64-bit entry state (flat GDT,
 * identity page tables for the first 4 GiB, RSI = boot_params).
 *
 * Low memory used by the loader (all inside RAM, all below 1 MiB):
 *   0x0500  GDT
 *   0x1000  PML4, 0x2000 PDPT, 0x3000..0x6FFF four page directories (2 MiB pages)
 *   0x7000  boot_params (zero page)
 *   0x8000..0x8FFF  initial stack (grows down from BOOT_STACK_TOP)
 *   0x20000 command line
 *   0x9FC00..0xFFFFF reserved in e820 (EBDA, ACPI tables at ACPI_TABLES_BASE)
 */
#ifndef TERN_ARCH_X86_BOOT_H
#define TERN_ARCH_X86_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "vmm/mem.h"

#define BOOT_GDT_ADDR 0x500ull
#define BOOT_PML4_ADDR 0x1000ull
#define BOOT_PDPT_ADDR 0x2000ull
#define BOOT_PD_ADDR 0x3000ull
#define BOOT_PARAMS_ADDR 0x7000ull
#define BOOT_STACK_TOP 0x8ff0ull
#define BOOT_CMDLINE_ADDR 0x20000ull
#define BOOT_CMDLINE_MAX 0x10000ull /* bytes reserved for the command line, NUL included */
#define BOOT_EBDA_START 0x9fc00ull
#define ACPI_TABLES_BASE 0xe0000ull
#define ACPI_TABLES_END 0x100000ull
#define BOOT_KERNEL_DEFAULT_ADDR 0x1000000ull /* 16 MiB: the usual x86-64 LOAD_PHYSICAL_ADDR */

#define BOOT_CS_SEL 0x10
#define BOOT_DS_SEL 0x18
#define BOOT_TSS_SEL 0x20

/* e820 types. */
#define E820_RAM 1
#define E820_RESERVED 2
#define E820_ACPI 3

struct e820_entry {
	uint64_t addr, size;
	uint32_t type;
} __attribute__((packed));

/* Where things ended up: filled by boot_load_linux(). */
struct boot_info {
	uint64_t kernel_addr; /* protected-mode kernel load address */
	uint64_t kernel_size; /* bytes of it in the file */
	uint64_t init_size;   /* memory the kernel needs from kernel_addr while booting */
	uint64_t entry;	      /* 64-bit entry point */
	uint64_t boot_params; /* zero page gpa (RSI at entry) */
	uint64_t cmdline;     /* command line gpa */
	uint64_t initrd_addr, initrd_size;
	uint16_t protocol;    /* boot protocol version, e.g. 0x020f */
	bool direct;	      /* entry is the vmlinux's startup_64, not the decompressor */
	uint64_t kaslr_delta; /* virtual offset tern relocated the kernel text by (direct only) */
};

/*
 * Fill e820 for a guest with this memory layout. Returns the number of
 * entries (<= max) or -ENOSPC.
 */
int boot_e820(const struct guest_mem *gm, struct e820_entry *e, int max);

/*
 * Load a kernel (and an optional initrd, NULL/0 for none) into gm and build
 * the zero page. The kernel is a bzImage or a vmlinux ELF. A bzImage whose
 * payload tern can decompress (gzip, bzip2, lzma, xz, lz4, zstd) is unpacked
 * on the host and its vmlinux loaded like a vmlinux file: PT_LOAD segments at
 * their physical addresses, entry at startup_64 (the ELF entry) with the
 * bzImage's setup header in the zero page, as the 64-bit boot protocol allows;
 * other bzImages are entered at their decompressor (load address + 0x200). cmdline must be
 * NUL-terminated; rsdp is the ACPI RSDP gpa (0 for none). The image is untrusted input: every
 * header field is checked against the file size and the guest's memory. Returns 0 or -ENOEXEC (not
 * a usable kernel), -E2BIG (command line too long), -ENOMEM (does not fit in guest memory).
 */
int boot_load_linux(struct guest_mem *gm, const void *kernel, size_t ksize, const void *initrd,
		    size_t isize, const char *cmdline, uint64_t rsdp, struct boot_info *bi);

/* Write the GDT and identity page tables the 64-bit entry needs. */
int boot_setup_tables(struct guest_mem *gm);

/* The boot vCPU's register state at the kernel's 64-bit entry. */
void boot_cpu_state(const struct boot_info *bi, struct cpu_state *st);

#endif
