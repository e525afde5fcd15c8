/*
 * Interrupts on the emulator: the local APIC timer (one-shot, periodic,
 * TSC-deadline) with guest programs, HLT sleeping without host CPU and
 * waking on an MSI from another thread, IPIs between two vCPUs on two
 * threads, starting an AP with INIT + STARTUP (real mode at the SIPI
 * vector), LOCK atomics across two vCPUs, and the APIC/IOAPIC register
 * model (priorities, EOI, level-triggered lines with remote IRR).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "unit/lib/emu_sys_vm.h"
#include "vmm/vm.h"

/* Interrupt handlers count in 0x21000 + (vec - 0x40) * 64 and EOI the APIC. */
__asm__(".section .rodata\n"
	".globl sa_start, sa_end, sa_timer_main, sa_hlt_main, sa_ipi_bsp, sa_ipi_ap\n"
	".globl sa_sipi_bsp, sa_lock_main, sa_h40, sa_h41, sa_h42, sa_h43\n"
	".globl sa_tramp, sa_tramp_end, sa_sipi64_bsp, sa_dirty_main, sa_dead_main\n"
	".globl sa_tpr_main, sa_h60, sa_nmi, sa_nmi_main\n"
	".macro IRQ vec\n"
	"sa_h\\vec:\n"
	"	incq 0x21000+(0x\\vec-0x40)*64\n"
	"	push %rbx\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0, 0xb0(%rbx)\n"
	"	pop %rbx\n"
	"	iretq\n"
	".endm\n"
	".macro TSC dst\n"
	"	rdtsc\n"
	"	shl $32, %rdx\n"
	"	or %rdx, %rax\n"
	"	mov %rax, \\dst\n"
	".endm\n"
	"sa_start:\n"
	"IRQ 40\n"
	"IRQ 41\n"
	"IRQ 42\n"
	"IRQ 43\n"
	/* APIC timer: one-shot 1 ms, periodic 100 us x5, TSC deadline +2 ms. */
	"sa_timer_main:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	movl $0xb, 0x3e0(%rbx)\n"
	"	movl $0x40, 0x320(%rbx)\n"
	"	TSC 0x20200\n"
	"	movl $25000, 0x380(%rbx)\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $1, 0x21000\n"
	"	jb 1b\n"
	"	cli\n"
	"	TSC 0x20208\n"
	"	movl $0x20040, 0x320(%rbx)\n"
	"	movl $2500, 0x380(%rbx)\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $6, 0x21000\n"
	"	jb 1b\n"
	"	cli\n"
	"	TSC 0x20210\n"
	"	movl $0x10040, 0x320(%rbx)\n"
	/* Take a periodic tick that was already pending, then count from here. */
	"	sti\n"
	"	nop\n"
	"	cli\n"
	"	mov 0x21000, %rax\n"
	"	mov %rax, 0x20228\n"
	"	movl $0x40040, 0x320(%rbx)\n"
	"	rdtsc\n"
	"	shl $32, %rdx\n"
	"	or %rdx, %rax\n"
	"	add $2000000, %rax\n"
	"	mov %rax, 0x20218\n"
	"	mov %rax, %rdx\n"
	"	shr $32, %rdx\n"
	"	mov $0x6e0, %ecx\n"
	"	wrmsr\n"
	"	sti\n"
	"1:	hlt\n"
	"	mov 0x20228, %rax\n"
	"	cmp %rax, 0x21000\n"
	"	jbe 1b\n"
	"	cli\n"
	"	TSC 0x20220\n"
	"	hlt\n"
	/* Halt until an MSI (vector 0x41) arrives. */
	"sa_hlt_main:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $1, 0x21040\n"
	"	jb 1b\n"
	"	cli\n"
	"	hlt\n"
	/* IPIs: the BSP sends 0x42 to APIC 1 once it is ready; the AP answers with 0x43. */
	"sa_ipi_bsp:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"1:	pause\n"
	"	cmpq $1, 0x20300\n"
	"	jne 1b\n"
	"	movl $0x01000000, 0x310(%rbx)\n"
	"	movl $0x42, 0x300(%rbx)\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $1, 0x210c0\n"
	"	jb 1b\n"
	"	cli\n"
	"	hlt\n"
	"sa_ipi_ap:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	mov 0x20(%rbx), %eax\n"
	"	mov %rax, 0x20308\n"
	"	movq $1, 0x20300\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $1, 0x21080\n"
	"	jb 1b\n"
	"	movl $0, 0x310(%rbx)\n"
	"	movl $0x43, 0x300(%rbx)\n"
	"	cli\n"
	"	hlt\n"
	/* INIT + STARTUP to APIC 1 with vector 0x0f (real-mode code at 0xf000). */
	"sa_sipi_bsp:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	movl $0x01000000, 0x310(%rbx)\n"
	"	movl $0x4500, 0x300(%rbx)\n"
	"	movl $0x460f, 0x300(%rbx)\n"
	"1:	pause\n"
	"	cmpw $0x1234, 0x500\n"
	"	jne 1b\n"
	"	cli\n"
	"	hlt\n"
	/* A million locked increments per vCPU. */
	"sa_lock_main:\n"
	"	mov $1000000, %ecx\n"
	"1:	lock incq 0x20400\n"
	"	mov $1, %eax\n"
	"	lock xadd %rax, 0x20408\n"
	"	dec %ecx\n"
	"	jnz 1b\n"
	"	cli\n"
	"	hlt\n"
	/* Like Linux's AP trampoline: real mode -> protected mode -> long mode. */
	"	.p2align 4\n"
	".code16\n"
	"sa_tramp:\n"
	"	cli\n"
	"	mov %cs, %ax\n"
	"	mov %ax, %ds\n"
	"	lgdtl tr_gdtr - sa_tramp\n"
	"	mov %cr0, %eax\n"
	"	or $1, %eax\n"
	"	mov %eax, %cr0\n"
	"	ljmpl $0x08, $(tr32 - sa_tramp + 0xf000)\n"
	".code32\n"
	"tr32:\n"
	"	mov $0x10, %ax\n"
	"	mov %ax, %ds\n"
	"	mov %ax, %ss\n"
	"	mov $0xf800, %esp\n"
	"	mov %cr4, %eax\n"
	"	or $0x20, %eax\n"
	"	mov %eax, %cr4\n"
	"	mov $0x1000, %eax\n"
	"	mov %eax, %cr3\n"
	"	mov $0xc0000080, %ecx\n"
	"	rdmsr\n"
	"	or $0x100, %eax\n"
	"	wrmsr\n"
	"	mov %cr0, %eax\n"
	"	or $0x80000000, %eax\n"
	"	mov %eax, %cr0\n"
	"	ljmp $0x18, $(tr64 - sa_tramp + 0xf000)\n"
	".code64\n"
	"tr64:\n"
	"	lea 0(%rip), %rax\n"
	"	mov %rax, 0x20708\n"
	"	movq $0x64, 0x20700\n"
	"	cli\n"
	"	hlt\n"
	"	.p2align 3\n"
	"tr_gdt:\n"
	"	.quad 0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00af9b000000ffff\n"
	"tr_gdtr:\n"
	"	.word 31\n"
	"	.long tr_gdt - sa_tramp + 0xf000\n"
	"sa_tramp_end:\n"
	/* BSP: INIT + STARTUP, wait for the AP's long-mode marker. */
	"sa_sipi64_bsp:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	movl $0x01000000, 0x310(%rbx)\n"
	"	movl $0x4500, 0x300(%rbx)\n"
	"	movl $0x460f, 0x300(%rbx)\n"
	"1:	pause\n"
	"	cmpq $0x64, 0x20700\n"
	"	jne 1b\n"
	"	cli\n"
	"	hlt\n"
	/* Keep writing one page until told to stop. */
	"sa_dirty_main:\n"
	"1:	incq 0x40000\n"
	"	cmpq $1, 0x20800\n"
	"	jne 1b\n"
	"	cli\n"
	"	hlt\n"
	"sa_dead_main:\n"
	"	cli\n"
	"	hlt\n"
	"IRQ 60\n"
	/* TPR 0x50 (CR8 5): vector 0x41 must not wake the halted vCPU, 0x60 must. */
	"sa_tpr_main:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	mov $5, %eax\n"
	"	mov %rax, %cr8\n"
	"	sti\n"
	"1:	hlt\n"
	"	cmpq $1, 0x21800\n"
	"	jb 1b\n"
	"	cli\n"
	"	hlt\n"
	/* Halted with IF=0: only the NMI wakes it. */
	"sa_nmi:\n"
	"	incq 0x21f00\n"
	"	iretq\n"
	"sa_nmi_main:\n"
	"	cli\n"
	"1:	hlt\n"
	"	cmpq $1, 0x21f00\n"
	"	jb 1b\n"
	"	movq $1, 0x21f08\n"
	"	hlt\n"
	"sa_end:\n"
	".previous\n");

extern const char sa_tramp[], sa_tramp_end[], sa_sipi64_bsp[], sa_dirty_main[], sa_dead_main[],
    sa_tpr_main[], sa_h60[], sa_nmi[], sa_nmi_main[];
extern const char sa_start[], sa_end[], sa_timer_main[], sa_hlt_main[], sa_ipi_bsp[], sa_ipi_ap[],
    sa_sipi_bsp[], sa_lock_main[], sa_h40[], sa_h41[], sa_h42[], sa_h43[];

#define G(sym) (ESV_CODE + (uint64_t)((sym)-sa_start))
#define COUNT(vec) (0x21000 + ((vec)-0x40) * 64)

static int setup_n(void **state, int ncpus)
{
	struct esv *v = calloc(1, sizeof(*v));

	assert_non_null(v);
	assert_int_equal(esv_create(v, ncpus), 0);
	esv_load(v, sa_start, (size_t)(sa_end - sa_start));
	esv_gate(v, 0x40, G(sa_h40), 0, 0, 0xe, 1);
	esv_gate(v, 0x41, G(sa_h41), 0, 0, 0xe, 1);
	esv_gate(v, 0x42, G(sa_h42), 0, 0, 0xe, 1);
	esv_gate(v, 0x43, G(sa_h43), 0, 0, 0xe, 1);
	esv_gate(v, 0x60, G(sa_h60), 0, 0, 0xe, 1);
	esv_gate(v, 2, G(sa_nmi), 0, 0, 0xe, 1);
	*state = v;
	return 0;
}

static int setup1(void **state)
{
	return setup_n(state, 1);
}

static int setup2(void **state)
{
	return setup_n(state, 2);
}

static int teardown(void **state)
{
	esv_destroy(*state);
	free(*state);
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void test_apic_timer(void **state)
{
	struct esv *v = *state;

	esv_enter(v, 0, G(sa_timer_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 10000000), VCPU_EXIT_HLT);
	uint64_t base = esv_rd(v, 0x20228);

	assert_true(base >= 6);
	assert_int_equal(esv_rd(v, COUNT(0x40)), base + 1);
	uint64_t t0 = esv_rd(v, 0x20200), t1 = esv_rd(v, 0x20208), t2 = esv_rd(v, 0x20210);
	uint64_t dl = esv_rd(v, 0x20218), t3 = esv_rd(v, 0x20220);

	/* The TSC runs at 1 GHz: ticks are nanoseconds. */
	assert_true(t1 - t0 >= 1000000);
	assert_true(t2 - t1 >= 5 * 100000);
	assert_true(t3 >= dl);
	/* The deadline fired once and disarmed itself. */
	assert_int_equal(emu_apic_get_deadline(v->cpu[0]), 0);
}

struct runner {
	struct esv *v;
	int cpu;
	enum vcpu_exit ex;
	pthread_t t;
};

static void *run_thread(void *arg)
{
	struct runner *r = arg;

	__atomic_store_n(&r->ex, esv_run(r->v, r->cpu, 0), __ATOMIC_RELEASE);
	return NULL;
}

static void start(struct runner *r, struct esv *v, int cpu)
{
	r->v = v;
	r->cpu = cpu;
	r->ex = VCPU_EXIT_ERROR;
	assert_int_equal(pthread_create(&r->t, NULL, run_thread, r), 0);
}

static uint64_t thread_cpu_ns(pthread_t t)
{
	clockid_t id;
	struct timespec ts;

	if (pthread_getcpuclockid(t, &id) || clock_gettime(id, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void test_hlt_wakeup(void **state)
{
	struct esv *v = *state;
	struct runner r;
	uint64_t deadline = now_ns() + 5000000000ull, cpu0, cpu1;

	esv_enter(v, 0, G(sa_hlt_main), ESV_KSTACK);
	start(&r, v, 0);
	while (!__atomic_load_n(&v->cpu[0]->sys.halted, __ATOMIC_ACQUIRE) && now_ns() < deadline)
		usleep(1000);
	/* Halted: it must sleep, not spin. */
	cpu0 = thread_cpu_ns(r.t);
	usleep(100000);
	cpu1 = thread_cpu_ns(r.t);
	assert_true(cpu1 - cpu0 < 20000000);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 0);
	/* A bad MSI address is refused; a good one wakes it. */
	assert_int_equal(emu_msi(&v->ev, 0xfed00000, 0x41), -EINVAL);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x41), 0);
	pthread_join(r.t, NULL);
	assert_int_equal(r.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 1);
}

static void *exec_once(void *arg)
{
	struct runner *r = arg;

	r->ex = emu_exec(r->v->cpu[r->cpu], 0);
	return NULL;
}

static void test_hlt_tpr(void **state)
{
	struct esv *v = *state;
	struct runner r;
	uint64_t deadline = now_ns() + 5000000000ull, cpu0, cpu1;

	esv_enter(v, 0, G(sa_tpr_main), ESV_KSTACK);
	start(&r, v, 0);
	while (!__atomic_load_n(&v->cpu[0]->sys.halted, __ATOMIC_ACQUIRE) && now_ns() < deadline)
		usleep(1000);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x41), 0);
	cpu0 = thread_cpu_ns(r.t);
	usleep(100000);
	cpu1 = thread_cpu_ns(r.t);
	/* Held back by TPR: it neither runs the handler nor spins. */
	assert_true(cpu1 - cpu0 < 20000000);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 0);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x60), 0);
	pthread_join(r.t, NULL);
	assert_int_equal(r.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, COUNT(0x60)), 1);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 0);
	assert_int_equal(emu_apic_get_cr8(v->cpu[0]), 5);
}

static void test_nmi_wakes_cli_hlt(void **state)
{
	struct esv *v = *state;
	struct runner r = {.v = v, .cpu = 0, .ex = VCPU_EXIT_ERROR};
	uint64_t deadline = now_ns() + 5000000000ull;

	/* vCPU 1 exists and could send an NMI, so vCPU 0 sleeps in cli;hlt instead of exiting. */
	esv_enter(v, 0, G(sa_nmi_main), ESV_KSTACK);
	assert_int_equal(pthread_create(&r.t, NULL, exec_once, &r), 0);
	while (!__atomic_load_n(&v->cpu[0]->sys.dead, __ATOMIC_ACQUIRE) && now_ns() < deadline)
		usleep(1000);
	usleep(10000);
	assert_int_equal(esv_rd(v, 0x21f00), 0);
	/* MSI with delivery mode NMI. */
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 4u << 8), 0);
	while (esv_rd(v, 0x21f08) != 1 && now_ns() < deadline)
		usleep(1000);
	assert_int_equal(esv_rd(v, 0x21f00), 1);
	assert_int_equal(esv_rd(v, 0x21f08), 1);
	emu_kick(v->cpu[0]);
	pthread_join(r.t, NULL);
	assert_int_equal(r.ex, VCPU_EXIT_KICK);
}

static void test_kick(void **state)
{
	struct esv *v = *state;
	struct runner r = {.v = v, .cpu = 0, .ex = VCPU_EXIT_ERROR};
	uint64_t deadline = now_ns() + 5000000000ull;

	/* Kicked while halted with IF=1: run() returns VCPU_EXIT_KICK and the vCPU stays halted. */
	esv_enter(v, 0, G(sa_hlt_main), ESV_KSTACK);
	assert_int_equal(pthread_create(&r.t, NULL, exec_once, &r), 0);
	while (!__atomic_load_n(&v->cpu[0]->sys.halted, __ATOMIC_ACQUIRE) && now_ns() < deadline)
		usleep(1000);
	usleep(10000);
	emu_kick(v->cpu[0]);
	pthread_join(r.t, NULL);
	assert_int_equal(r.ex, VCPU_EXIT_KICK);
	assert_true(v->cpu[0]->sys.halted);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 0);
	/* An interrupt posted while nobody runs it is delivered on the next run. */
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x41), 0);
	assert_int_equal(esv_run(v, 0, 1000000), VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, COUNT(0x41)), 1);
}

static void test_ipi(void **state)
{
	struct esv *v = *state;
	struct runner a, b;

	esv_enter(v, 0, G(sa_ipi_bsp), ESV_KSTACK);
	esv_enter(v, 1, G(sa_ipi_ap), ESV_KSTACK - 0x800);
	start(&a, v, 0);
	start(&b, v, 1);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	assert_int_equal(a.ex, VCPU_EXIT_HLT);
	assert_int_equal(b.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x20308), 1u << 24); /* the AP's APIC ID */
	assert_int_equal(esv_rd(v, COUNT(0x42)), 1);
	assert_int_equal(esv_rd(v, COUNT(0x43)), 1);
}

static void test_init_sipi(void **state)
{
	struct esv *v = *state;
	struct runner a, b;
	/* Real mode at 0xf000: mov ax, 0x1234; mov [0x500], ax; cli; hlt. */
	static const uint8_t rm[] = {0xb8, 0x34, 0x12, 0xa3, 0x00, 0x05, 0xfa, 0xf4};

	gm_write(&v->gm, 0xf000, rm, sizeof(rm));
	esv_enter(v, 0, G(sa_sipi_bsp), ESV_KSTACK);
	/* vCPU 1 keeps its reset state: waiting for SIPI. */
	assert_true(v->cpu[1]->sys.wait_sipi);
	start(&b, v, 1);
	usleep(20000);
	assert_int_equal(esv_rd(v, 0x500) & 0xffff, 0);
	start(&a, v, 0);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	assert_int_equal(a.ex, VCPU_EXIT_HLT);
	assert_int_equal(b.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x500) & 0xffff, 0x1234);
	/* The AP ran in real mode from CS = vector << 8. */
	assert_int_equal(v->cpu[1]->seg[SEG_CS].sel, 0x0f00);
	assert_false(v->cpu[1]->cr0 & 1);
}

static void test_init_sipi_long_mode(void **state)
{
	struct esv *v = *state;
	struct runner a, b;

	gm_write(&v->gm, 0xf000, sa_tramp, (size_t)(sa_tramp_end - sa_tramp));
	esv_enter(v, 0, G(sa_sipi64_bsp), ESV_KSTACK);
	start(&b, v, 1);
	start(&a, v, 0);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	assert_int_equal(a.ex, VCPU_EXIT_HLT);
	assert_int_equal(b.ex, VCPU_EXIT_HLT);
	/* The AP reached 64-bit code at the trampoline's copy, with long mode active. */
	assert_int_equal(esv_rd(v, 0x20700), 0x64);
	uint64_t rip = esv_rd(v, 0x20708);

	assert_true(rip > 0xf000 && rip < 0xf000 + (uint64_t)(sa_tramp_end - sa_tramp));
	assert_true(v->cpu[1]->mode64);
	assert_true(v->cpu[1]->efer & 0x400);
	assert_int_equal(v->cpu[1]->seg[SEG_CS].sel, 0x18);
}

static bool wait_dirty(struct esv *v, uint64_t page)
{
	uint64_t deadline = now_ns() + 5000000000ull;

	while (now_ns() < deadline) {
		if (__atomic_load_n(&v->gm.dirty[page / 64], __ATOMIC_ACQUIRE) >> (page % 64) & 1)
			return true;
		usleep(1000);
	}
	return false;
}

/*
 * The backend's sync_dirty: after the VMM clears a page's dirty bit, a vCPU
 * still writing it must mark it again (its write TLB entry is dropped).
 */
static void test_sync_dirty(void **state)
{
	struct esv *v = *state;
	struct vm vm = {.backend = &v->ev};
	struct runner r;
	uint64_t page = gm_page_index(&v->gm, 0x40000);

	esv_enter(v, 0, G(sa_dirty_main), ESV_KSTACK);
	start(&r, v, 0);
	assert_true(wait_dirty(v, page));
	for (int round = 0; round < 3; round++) {
		assert_true(gm_test_clear_dirty(&v->gm, page));
		assert_int_equal(cpu_backend_emu.sync_dirty(&vm), 0);
		assert_true(wait_dirty(v, page));
	}
	esv_wr(v, 0x20800, 1);
	pthread_join(r.t, NULL);
	assert_int_equal(r.ex, VCPU_EXIT_HLT);
	assert_true(esv_rd(v, 0x40000) > 0);
}

/*
 * A vCPU halted with IF=0 (Linux's offline CPU) keeps sleeping while another
 * vCPU runs, and INIT + SIPI bring it back; only when every vCPU is in that
 * state does run() return VCPU_EXIT_HLT.
 */
static void test_init_wakes_halted(void **state)
{
	struct esv *v = *state;
	struct runner a, b;
	static const uint8_t rm[] = {0xb8, 0x34, 0x12, 0xa3, 0x00, 0x05, 0xfa, 0xf4};
	uint64_t deadline = now_ns() + 5000000000ull;

	gm_write(&v->gm, 0xf000, rm, sizeof(rm));
	esv_enter(v, 1, G(sa_dead_main), ESV_KSTACK - 0x800);
	start(&b, v, 1);
	while (!__atomic_load_n(&v->cpu[1]->sys.dead, __ATOMIC_ACQUIRE) && now_ns() < deadline)
		usleep(1000);
	usleep(20000);
	assert_int_equal(__atomic_load_n(&b.ex, __ATOMIC_ACQUIRE),
			 VCPU_EXIT_ERROR); /* still in run() */
	esv_enter(v, 0, G(sa_sipi_bsp), ESV_KSTACK);
	start(&a, v, 0);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	assert_int_equal(a.ex, VCPU_EXIT_HLT);
	assert_int_equal(b.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x500) & 0xffff, 0x1234);
	assert_int_equal(v->cpu[1]->seg[SEG_CS].sel, 0x0f00);
}

static void test_lock_two_threads(void **state)
{
	struct esv *v = *state;
	struct runner a, b;

	esv_enter(v, 0, G(sa_lock_main), ESV_KSTACK);
	esv_enter(v, 1, G(sa_lock_main), ESV_KSTACK - 0x800);
	start(&a, v, 0);
	start(&b, v, 1);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	assert_int_equal(a.ex, VCPU_EXIT_HLT);
	assert_int_equal(b.ex, VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x20400), 2000000);
	assert_int_equal(esv_rd(v, 0x20408), 2000000);
}

/* ---- Register model, no guest code ---- */

static uint32_t mmio_rd(struct esv *v, int cpu, uint64_t gpa)
{
	uint32_t x = 0;

	assert_true(emu_apic_mmio(v->cpu[cpu], gpa, &x, 4, 0));
	return x;
}

static void mmio_wr(struct esv *v, int cpu, uint64_t gpa, uint32_t x)
{
	assert_true(emu_apic_mmio(v->cpu[cpu], gpa, &x, 4, 1));
}

static bool irr_bit(struct esv *v, int cpu, unsigned vec)
{
	return mmio_rd(v, cpu, 0xfee00200 + (vec / 32) * 16) >> (vec % 32) & 1;
}

static void test_apic_priority(void **state)
{
	struct esv *v = *state;
	struct emu_cpu *c = v->cpu[0];

	mmio_wr(v, 0, 0xfee000f0, 0x1ff);
	assert_int_equal(mmio_rd(v, 0, 0xfee00020), 0);
	assert_int_equal(mmio_rd(v, 0, 0xfee00030) & 0xff, 0x14);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x31), 0);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x51), 0);
	assert_true(irr_bit(v, 0, 0x31) && irr_bit(v, 0, 0x51));
	/* TPR 0x50 blocks class 5 and below. */
	mmio_wr(v, 0, 0xfee00080, 0x50);
	assert_int_equal(mmio_rd(v, 0, 0xfee000a0), 0x50);
	assert_false(emu_apic_has_irq(c));
	assert_int_equal(emu_apic_ack(c), -1);
	mmio_wr(v, 0, 0xfee00080, 0);
	/* Highest first; while 0x51 is in service, 0x31 waits (PPR 0x50). */
	assert_int_equal(emu_apic_ack(c), 0x51);
	assert_int_equal(mmio_rd(v, 0, 0xfee000a0), 0x50);
	assert_int_equal(emu_apic_ack(c), -1);
	mmio_wr(v, 0, 0xfee000b0, 0);
	assert_int_equal(emu_apic_ack(c), 0x31);
	mmio_wr(v, 0, 0xfee000b0, 0);
	assert_int_equal(mmio_rd(v, 0, 0xfee00100 + (0x31 / 32) * 16), 0);
	/* CR8 mirrors TPR[7:4]. */
	emu_apic_set_cr8(c, 9);
	assert_int_equal(mmio_rd(v, 0, 0xfee00080), 0x90);
	/* Vectors below 16 are illegal: ESR bit 6 after a write to ESR. */
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x05), 0);
	mmio_wr(v, 0, 0xfee00280, 0);
	assert_int_equal(mmio_rd(v, 0, 0xfee00280), 1u << 6);
	/* A software-disabled APIC drops fixed interrupts. */
	mmio_wr(v, 0, 0xfee000f0, 0xff);
	emu_apic_set_cr8(c, 0);
	assert_int_equal(emu_msi(&v->ev, 0xfee00000, 0x61), 0);
	assert_false(irr_bit(v, 0, 0x61));
}

static void test_ioapic_level(void **state)
{
	struct esv *v = *state;
	struct emu_cpu *c = v->cpu[0];

	mmio_wr(v, 0, 0xfee000f0, 0x1ff);
	assert_int_equal(mmio_rd(v, 0, 0xfec00010) & 0xff, 0); /* sel 0: ID */
	mmio_wr(v, 0, 0xfec00000, 1);
	assert_int_equal((mmio_rd(v, 0, 0xfec00010) >> 16) & 0xff, 23);
	/* Pin 5: vector 0x45, level, physical destination 0, masked first. */
	mmio_wr(v, 0, 0xfec00000, 0x10 + 2 * 5);
	mmio_wr(v, 0, 0xfec00010, 0x18045);
	mmio_wr(v, 0, 0xfec00000, 0x11 + 2 * 5);
	mmio_wr(v, 0, 0xfec00010, 0);
	assert_int_equal(emu_ioapic_set_irq(&v->ev, 5, 1), 0);
	assert_false(irr_bit(v, 0, 0x45));
	/* Unmasking an asserted level line delivers it and sets remote IRR. */
	mmio_wr(v, 0, 0xfec00000, 0x10 + 2 * 5);
	mmio_wr(v, 0, 0xfec00010, 0x8045);
	assert_true(irr_bit(v, 0, 0x45));
	assert_true(mmio_rd(v, 0, 0xfec00010) & (1u << 14));
	assert_int_equal(emu_apic_ack(c), 0x45);
	assert_true(mmio_rd(v, 0, 0xfee00180 + (0x45 / 32) * 16) >> (0x45 % 32) & 1); /* TMR */
	/* EOI with the line still high: remote IRR clears and the interrupt comes again. */
	mmio_wr(v, 0, 0xfee000b0, 0);
	assert_true(irr_bit(v, 0, 0x45));
	assert_int_equal(emu_apic_ack(c), 0x45);
	/* Line low, then EOI: nothing more. */
	assert_int_equal(emu_ioapic_set_irq(&v->ev, 5, 0), 0);
	mmio_wr(v, 0, 0xfee000b0, 0);
	assert_false(irr_bit(v, 0, 0x45));
	assert_false(mmio_rd(v, 0, 0xfec00010) & (1u << 14));
	/* Edge pin 6: one interrupt per rising edge. */
	mmio_wr(v, 0, 0xfec00000, 0x10 + 2 * 6);
	mmio_wr(v, 0, 0xfec00010, 0x46);
	emu_ioapic_set_irq(&v->ev, 6, 1);
	emu_ioapic_set_irq(&v->ev, 6, 1);
	assert_int_equal(emu_apic_ack(c), 0x46);
	assert_int_equal(emu_apic_ack(c), -1);
	assert_int_equal(emu_ioapic_set_irq(&v->ev, 24, 1), -EINVAL);
}

static void test_apic_logical_dest(void **state)
{
	struct esv *v = *state;

	/* Flat logical mode: LDR bit n selects; lowest priority goes to one CPU only. */
	mmio_wr(v, 0, 0xfee000f0, 0x1ff);
	mmio_wr(v, 1, 0xfee000f0, 0x1ff);
	mmio_wr(v, 0, 0xfee000d0, 0x01000000);
	mmio_wr(v, 1, 0xfee000d0, 0x02000000);
	assert_int_equal(mmio_rd(v, 1, 0xfee00020), 1u << 24);
	/* MSI, logical (bit 2), destination 0x02: vCPU 1 only. */
	emu_msi(&v->ev, 0xfee02004, 0x50);
	assert_false(irr_bit(v, 0, 0x50));
	assert_true(irr_bit(v, 1, 0x50));
	/* Lowest priority to 0x03: exactly one of them. */
	emu_msi(&v->ev, 0xfee03004, 0x100 | 0x60);
	assert_int_equal(irr_bit(v, 0, 0x60) + irr_bit(v, 1, 0x60), 1);
	/* Fixed to 0x03: both. */
	emu_msi(&v->ev, 0xfee03004, 0x70);
	assert_true(irr_bit(v, 0, 0x70) && irr_bit(v, 1, 0x70));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_apic_priority, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_ioapic_level, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_apic_logical_dest, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_apic_timer, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_hlt_wakeup, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_kick, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_hlt_tpr, setup1, teardown),
	    cmocka_unit_test_setup_teardown(test_nmi_wakes_cli_hlt, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_ipi, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_init_sipi, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_init_sipi_long_mode, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_init_wakes_halted, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_lock_two_threads, setup2, teardown),
	    cmocka_unit_test_setup_teardown(test_sync_dirty, setup1, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
