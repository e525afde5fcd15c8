/* Applying a vmlinux's relocation table for a randomized virtual base. */
#include "arch/x86/kaslr.h"

#include <errno.h>
#include <string.h>

uint64_t kaslr_pick_delta(uint64_t lo, uint64_t hi, uint64_t rnd)
{
	uint64_t slots;

	if (hi <= lo || hi > KASLR_IMAGE_MAX)
		return 0;
	slots = (KASLR_IMAGE_MAX - hi) / KASLR_ALIGN + 1;
	return rnd % slots * KASLR_ALIGN;
}

static uint32_t word(const uint8_t *relocs, size_t i)
{
	const uint8_t *p = relocs + 4 * i;

	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The physical address a table entry names: a sign-extended kernel virtual address. */
static uint64_t entry_pa(uint32_t w)
{
	return (uint64_t)(int64_t)(int32_t)w - KASLR_START_KERNEL_MAP;
}

/* Walk the three lists from the end; when apply is false only check them. */
static int walk(struct guest_mem *gm, const uint8_t *relocs, size_t n, uint64_t lo, uint64_t hi,
		uint64_t delta, int apply)
{
	static const unsigned width[3] = {4, 4, 8}; /* 32-bit, inverse 32-bit, 64-bit */
	size_t i = n;

	for (int list = 0; list < 3; list++) {
		for (;;) {
			uint32_t w;
			uint64_t pa;
			uint8_t *p;

			if (i == 0)
				return -EINVAL;
			w = word(relocs, --i);
			if (!w)
				break;
			pa = entry_pa(w);
			if (pa < lo || pa >= hi || hi - pa < width[list])
				return -EINVAL;
			if (!apply)
				continue;
			p = gm_ptr_w(gm, pa, width[list]);
			if (!p)
				return -EINVAL;
			if (list == 2) {
				uint64_t v;

				memcpy(&v, p, 8);
				v += delta;
				memcpy(p, &v, 8);
			} else {
				uint32_t v;

				memcpy(&v, p, 4);
				v = list == 0 ? v + (uint32_t)delta : v - (uint32_t)delta;
				memcpy(p, &v, 4);
			}
		}
	}
	return i == 0 ? 0 : -EINVAL; /* the 64-bit list's terminator opens the table */
}

int kaslr_relocate(struct guest_mem *gm, const uint8_t *relocs, size_t len, uint64_t lo,
		   uint64_t hi, uint64_t delta)
{
	int err;

	if (len % 4 || len < 12)
		return -EINVAL;
	err = walk(gm, relocs, len / 4, lo, hi, delta, 0);
	if (!err && delta)
		err = walk(gm, relocs, len / 4, lo, hi, delta, 1);
	return err;
}
