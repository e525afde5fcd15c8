/*
 * tern-spin: a CPU-bound guest workload with a known instruction count, for
 * measuring how many guest instructions per second a CPU backend executes
 * (bench/emu-ips).
 *
 * usage: tern-spin ITERATIONS
 *
 * Runs the loop below ITERATIONS times: SPIN_INSNS_PER_ITER instructions per
 * iteration, a mix of loads, stores, ALU work and a taken branch, so that
 * it exercises the emulator's decode, memory path and flags rather than
 * one instruction. Prints "tern-spin: N iterations" when done.
 */
#include "rt.h"

#define SPIN_INSNS_PER_ITER 8

static void spin(unsigned long n)
{
	unsigned long cell = 0, acc = 1, idx = 0;

	if (!n)
		return;
	/* Exactly SPIN_INSNS_PER_ITER instructions per iteration. */
	__asm__ volatile("1:\n"
			 "	mov (%[cell]), %%rax\n"
			 "	add %[n], %%rax\n"
			 "	xor %%rax, %[acc]\n"
			 "	rol $3, %[acc]\n"
			 "	mov %%rax, (%[cell])\n"
			 "	lea 1(%[idx]), %[idx]\n"
			 "	dec %[n]\n"
			 "	jnz 1b\n"
			 : [n] "+r"(n), [acc] "+r"(acc), [idx] "+r"(idx)
			 : [cell] "r"(&cell)
			 : "rax", "cc", "memory");
}

int guest_main(long argc, char **argv)
{
	unsigned long n;

	if (argc != 2 || parse_ulong(argv[1], ~0ul, &n)) {
		put_fd(2, "usage: tern-spin ITERATIONS\n");
		return 2;
	}
	spin(n);
	put_fd(1, "tern-spin: ");
	put_ulong(1, n);
	put_fd(1, " iterations\n");
	return 0;
}
