/*
 * Hostile guest code against the system side of the emulator: random bytes
 * at CPL 0, salted with system instructions (MOV CRn, LGDT/LIDT, LTR, MOV
 * Sreg, IRETQ, LRET, SYSCALL/SYSRET, SWAPGS, WRMSR, STI;HLT, INT n), with
 * an IDT whose handlers skip a byte and return, some gates and GDT entries
 * corrupted. Whatever the guest does, the host must not crash or trip the
 * sanitizers, run() must end in a defined way, and the vCPU state must stay
 * self-consistent.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit/lib/emu_sys_vm.h"

#define SEEDS 200
#define MAX_INSNS 100000

static uint64_t rng(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/* Three-byte system instructions sprinkled into the random code. */
static const uint8_t sys_insns[][3] = {
    {0x0f, 0x01, 0xf8}, /* swapgs */
    {0x0f, 0x05, 0x90}, /* syscall */
    {0x48, 0x0f, 0x07}, /* sysretq */
    {0x48, 0xcf, 0x90}, /* iretq */
    {0x48, 0xcb, 0x90}, /* lretq */
    {0x0f, 0x22, 0xc0}, /* mov cr0, rax */
    {0x0f, 0x22, 0xd8}, /* mov cr3, rax */
    {0x0f, 0x22, 0xe0}, /* mov cr4, rax */
    {0x0f, 0x20, 0xc0}, /* mov rax, cr0 */
    {0x0f, 0x30, 0x90}, /* wrmsr */
    {0x0f, 0x32, 0x90}, /* rdmsr */
    {0xfb, 0xf4, 0x90}, /* sti; hlt */
    {0x8e, 0xd8, 0x90}, /* mov ds, ax */
    {0x8e, 0xd0, 0x90}, /* mov ss, ax */
    {0x0f, 0x00, 0xd8}, /* ltr ax */
    {0x0f, 0x00, 0xd0}, /* lldt ax */
    {0x0f, 0x01, 0x10}, /* lgdt [rax] */
    {0x0f, 0x01, 0x18}, /* lidt [rax] */
    {0xcd, 0x80, 0x90}, /* int 0x80 */
    {0xcc, 0x90, 0x90}, /* int3 */
    {0x0f, 0x01, 0x38}, /* invlpg [rax] */
    {0xe6, 0xe9, 0x90}, /* out 0xe9, al */
};

/* Per-vector handler: drop the error code if any, step the saved RIP by one, IRETQ. */
static void write_stubs(struct esv *v)
{
	for (unsigned vec = 0; vec < 256; vec++) {
		uint8_t st[16];
		unsigned k = 0;

		if (vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21) {
			static const uint8_t pop_err[] = {0x48, 0x83, 0xc4, 0x08};

			memcpy(st + k, pop_err, sizeof(pop_err));
			k += sizeof(pop_err);
		}
		static const uint8_t tail[] = {0x48, 0xff, 0x04, 0x24, 0x48, 0xcf};

		memcpy(st + k, tail, sizeof(tail));
		k += sizeof(tail);
		gm_write(&v->gm, ESV_CODE + 0x1000 + vec * 16, st, k);
	}
}

struct kicker {
	struct emu_cpu *c;
	int done;
};

/* A guest may STI;HLT with nothing armed: kick it after a while. */
static void *kick_later(void *arg)
{
	struct kicker *k = arg;

	for (int ms = 0; ms < 50 && !__atomic_load_n(&k->done, __ATOMIC_ACQUIRE); ms++)
		usleep(1000);
	emu_kick(k->c);
	return NULL;
}

static void check_consistent(const struct emu_cpu *c)
{
	const struct cpu_seg *cs = &c->seg[SEG_CS];

	assert_true(c->cpl <= 3);
	assert_int_equal(c->mode64, (c->efer & 0x400) && cs->l);
	if (c->cr0 & 0x80000000)
		assert_true(c->cr0 & 1);
	if (c->efer & 0x400)
		assert_true((c->cr4 & 0x20) && (c->cr0 & 0x80000000));
}

static void run_seed(uint64_t seed)
{
	struct esv *v = calloc(1, sizeof(*v));
	uint64_t s = seed * 7919 + 1;
	uint8_t code[4096];
	struct kicker k;
	pthread_t t;
	enum vcpu_exit ex;

	assert_non_null(v);
	assert_int_equal(esv_create(v, 1), 0);
	for (unsigned n = 0; n < sizeof(code); n++)
		code[n] = (uint8_t)rng(&s);
	for (unsigned n = 0; n < 200; n++)
		memcpy(code + rng(&s) % (sizeof(code) - 3),
		       sys_insns[rng(&s) % (sizeof(sys_insns) / sizeof(sys_insns[0]))], 3);
	esv_load(v, code, sizeof(code));
	write_stubs(v);
	for (unsigned vec = 0; vec < 256; vec++) {
		if (rng(&s) % 16 == 0)
			esv_gate(v, vec, ESV_CODE + rng(&s) % 4096, rng(&s) % 8, rng(&s) % 4,
				 (rng(&s) & 1) ? 0xe : 0xf, rng(&s) % 8 != 0);
		else
			esv_gate(v, vec, ESV_CODE + 0x1000 + vec * 16, rng(&s) % 4 == 0, 3, 0xe, 1);
	}
	for (unsigned g = 0; g < 10; g++)
		if (rng(&s) % 4 == 0)
			esv_wr(v, ESV_GDT + g * 8, rng(&s));
	esv_enter(v, 0, ESV_CODE + rng(&s) % 4096, ESV_KSTACK);
	for (unsigned r = 0; r < 16; r++)
		if (r != 4)
			v->cpu[0]->gpr[r] = rng(&s);

	k.c = v->cpu[0];
	k.done = 0;
	assert_int_equal(pthread_create(&t, NULL, kick_later, &k), 0);
	ex = emu_exec(v->cpu[0], MAX_INSNS);
	__atomic_store_n(&k.done, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);

	assert_true(ex == VCPU_EXIT_KICK || ex == VCPU_EXIT_HLT || ex == VCPU_EXIT_SHUTDOWN);
	check_consistent(v->cpu[0]);
	esv_destroy(v);
	free(v);
}

static void test_random_system_code(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= SEEDS; seed++)
		run_seed(seed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_random_system_code),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
