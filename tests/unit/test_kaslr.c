/* Kernel text randomization: the relocation table is checked whole, then applied. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "arch/x86/kaslr.h"

#define MiB (1024ull * 1024)
#define LO (16 * MiB)
#define HI (18 * MiB)
#define VA(pa) ((uint32_t)(KASLR_START_KERNEL_MAP + (pa)))

/* Table layout, front to back: 0, 64-bit..., 0, inverse 32-bit..., 0, 32-bit... */
static size_t table(uint32_t *t, const uint32_t *r64, int n64, const uint32_t *inv, int ninv,
		    const uint32_t *r32, int n32)
{
	size_t n = 0;

	t[n++] = 0;
	for (int i = 0; i < n64; i++)
		t[n++] = r64[i];
	t[n++] = 0;
	for (int i = 0; i < ninv; i++)
		t[n++] = inv[i];
	t[n++] = 0;
	for (int i = 0; i < n32; i++)
		t[n++] = r32[i];
	return n * 4;
}

static void test_pick_delta(void **state)
{
	uint64_t max = 0;

	for (uint64_t r = 0; r < 2000; r++) {
		uint64_t d = kaslr_pick_delta(LO, HI, r * 7919);

		assert_int_equal(d % KASLR_ALIGN, 0);
		assert_true(HI + d <= KASLR_IMAGE_MAX);
		if (d > max)
			max = d;
	}
	assert_true(max > 512 * MiB); /* the whole range is used */
	assert_int_equal(kaslr_pick_delta(LO, KASLR_IMAGE_MAX + 4096, 12345), 0);
	assert_int_equal(kaslr_pick_delta(LO, LO, 12345), 0);
}

static void test_relocate(void **state)
{
	struct guest_mem gm;
	uint32_t t[16], r64[] = {VA(LO + 0x100)}, inv[] = {VA(LO + 0x200)},
			r32[] = {VA(LO + 0x300), VA(HI - 4)};
	uint64_t delta = 0x2400000, v64 = KASLR_START_KERNEL_MAP + LO + 0x40;
	uint32_t v32 = VA(LO + 0x80), vinv = 0x1000, vend = VA(LO + 0x90), got32;
	uint8_t *img;
	size_t len = table(t, r64, 1, inv, 1, r32, 2);

	assert_int_equal(gm_init(&gm, 64 * MiB), 0);
	img = gm_ptr_w(&gm, LO, HI - LO);
	memcpy(img + 0x100, &v64, 8);
	memcpy(img + 0x200, &vinv, 4);
	memcpy(img + 0x300, &v32, 4);
	memcpy(img + (HI - LO) - 4, &vend, 4);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, delta), 0);
	memcpy(&v64, img + 0x100, 8);
	assert_int_equal(v64, KASLR_START_KERNEL_MAP + LO + 0x40 + delta);
	memcpy(&got32, img + 0x300, 4);
	assert_int_equal(got32, v32 + (uint32_t)delta);
	memcpy(&got32, img + (HI - LO) - 4, 4);
	assert_int_equal(got32, vend + (uint32_t)delta);
	memcpy(&got32, img + 0x200, 4);
	assert_int_equal(got32, 0x1000 - (uint32_t)delta);
	/* A zero offset is valid and changes nothing. */
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, 0), 0);
	memcpy(&got32, img + 0x300, 4);
	assert_int_equal(got32, v32 + (uint32_t)delta);
	gm_destroy(&gm);
}

static void test_hostile_tables(void **state)
{
	struct guest_mem gm;
	uint32_t t[16], good[] = {VA(LO + 0x300)}, out[] = {VA(HI - 2)}, low[] = {VA(LO - 4)},
			wild[] = {0x12345678};
	uint8_t *img, before[0x400];
	size_t len;

	assert_int_equal(gm_init(&gm, 64 * MiB), 0);
	img = gm_ptr_w(&gm, LO, HI - LO);
	memset(img, 0x5a, 0x400);
	memcpy(before, img, sizeof(before));
	/* An entry anywhere outside the image fails the whole table, and nothing moves:
	 * the good 32-bit entry is walked before the bad 64-bit one. */
	len = table(t, out, 1, NULL, 0, good, 1);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, KASLR_ALIGN), -EINVAL);
	len = table(t, low, 1, NULL, 0, good, 1);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, KASLR_ALIGN), -EINVAL);
	len = table(t, wild, 1, NULL, 0, good, 1);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, KASLR_ALIGN), -EINVAL);
	assert_memory_equal(img, before, sizeof(before));
	/* A 64-bit entry needs 8 bytes inside the image. */
	out[0] = VA(HI - 4);
	len = table(t, out, 1, NULL, 0, NULL, 0);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len, LO, HI, KASLR_ALIGN), -EINVAL);
	/* Missing terminators, words left over in front, a ragged length. */
	len = table(t, NULL, 0, NULL, 0, good, 1);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t + 4, len - 4, LO, HI, KASLR_ALIGN),
			 -EINVAL);
	t[0] = VA(LO);
	memmove(t + 1, t, len);
	t[0] = VA(LO + 8);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, len + 4, LO, HI, KASLR_ALIGN), -EINVAL);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t + 4, len - 2, LO, HI, KASLR_ALIGN),
			 -EINVAL);
	assert_int_equal(kaslr_relocate(&gm, (uint8_t *)t, 8, LO, HI, KASLR_ALIGN), -EINVAL);
	assert_memory_equal(img, before, sizeof(before));
	gm_destroy(&gm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pick_delta),
	    cmocka_unit_test(test_relocate),
	    cmocka_unit_test(test_hostile_tables),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
