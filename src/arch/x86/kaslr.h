/*
 * Kernel text randomization for a vmlinux tern enters at startup_64: what
 * the kernel's decompressor would otherwise do. The bzImage payload is the
 * vmlinux ELF file followed by its relocation table (the build's
 * vmlinux.relocs); tern picks a random 2 MiB-aligned virtual offset and
 * applies the table to the image already in guest memory. The physical load
 * address does not change; startup_64 works out the rest itself.
 */
#ifndef TERN_ARCH_X86_KASLR_H
#define TERN_ARCH_X86_KASLR_H

#include <stddef.h>
#include <stdint.h>

#include "vmm/mem.h"

#define KASLR_START_KERNEL_MAP 0xffffffff80000000ull
#define KASLR_IMAGE_MAX (1ull << 30) /* KERNEL_IMAGE_SIZE with RANDOMIZE_BASE */
#define KASLR_ALIGN 0x200000ull	     /* CONFIG_PHYSICAL_ALIGN */

/*
 * A virtual offset for an image at physical [lo, hi): a multiple of
 * KASLR_ALIGN chosen by rnd such that the image stays inside the 1 GiB
 * kernel mapping; 0 when it cannot move.
 */
uint64_t kaslr_pick_delta(uint64_t lo, uint64_t hi, uint64_t rnd);

/*
 * Apply the relocation table (the bytes after the ELF file: three lists of
 * le32 link-time addresses, each closed by a 0 read from the end: 32-bit,
 * inverse 32-bit, 64-bit) with offset delta to the image at [lo, hi). The
 * table is untrusted: it must fill relocs exactly and every address must lie
 * in the image; nothing is changed unless all of it is valid. 0, -EINVAL.
 */
int kaslr_relocate(struct guest_mem *gm, const uint8_t *relocs, size_t len, uint64_t lo,
		   uint64_t hi, uint64_t delta);

#endif
