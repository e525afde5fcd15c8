/*
 * Long-running differential fuzzing of the emulator's integer ISA against the
 * host CPU: the generators of tests/unit/test_emu_diff.c, run for millions
 * of cases from a chosen seed. Not part of `make test`; run by `make fuzz-emu`.
 *
 * usage: emu_diff_fuzz [CASES [SEED]]   (defaults: 2000000, time-based seed)
 * Exits 1 if any case differs; the seed is printed so a run can be repeated.
 */
#define EMU_DIFF_NO_MAIN
#include "unit/test_emu_diff.c"

#include <time.h>

int main(int argc, char **argv)
{
	static void (*const families[])(struct ctx *, unsigned) = {
	    t_alu,   t_unary,	t_shift,  t_shxd, t_muldiv, t_bits,
	    t_moves, t_control, t_string, t_mix,  t_misc,
	};
	const unsigned nfam = sizeof(families) / sizeof(families[0]);
	unsigned long long cases = argc > 1 ? strtoull(argv[1], NULL, 0) : 2000000ull;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : (uint64_t)time(NULL);
	struct ctx t = {0};
	unsigned long long failures = 0;

	t.h = eh_create();
	if (!t.h) {
		fprintf(stderr, "emu_diff_fuzz: harness setup failed\n");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	t.rng = seed ? seed : 1;
	printf("emu_diff_fuzz: %llu cases, seed %#llx\n", cases, (unsigned long long)seed);
	while (t.cases < cases) {
		unsigned before = t.failures;

		families[rn(&t, nfam)](&t, 1000);
		failures += t.failures - before;
		t.failures = before;
		if (failures > 100)
			break;
		if (t.cases / 100000 != (t.cases - 1000) / 100000)
			printf("emu_diff_fuzz: %u cases, %llu failures\n", t.cases, failures);
	}
	printf("emu_diff_fuzz: %u cases, %llu failures (seed %#llx)\n", t.cases, failures,
	       (unsigned long long)seed);
	eh_destroy(t.h);
	return failures ? 1 : 0;
}
