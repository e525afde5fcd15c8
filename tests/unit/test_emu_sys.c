/*
 * System side of the emulator, with small guest programs in long mode:
 * exceptions with and without error codes, page faults (CR2, error code),
 * IST stacks, IRETQ, #DF escalation and triple fault, SYSCALL/SYSRET to CPL 3
 * and back, INT n from user mode through DPL 3 and DPL 0 gates.
 *
 * Each exception handler (macro HANDLER) records, in a 64-byte slot per
 * vector at 0x20000: a count, the error code (-1 when none), the saved RIP,
 * CR2, its own RSP and the saved CS. If the program stored a resume address
 * at RESUME, the handler returns there instead of to the saved RIP.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "unit/lib/emu_sys_vm.h"

__asm__(".section .rodata\n"
	".globl sg_start, sg_end, sg_exc_main, sg_df_main, sg_sc_main, sg_compat_main\n"
	".globl sg_sum_main, sg_insn_main\n"
	".globl sg_h0, sg_h3, sg_h6, sg_h8, sg_h13, sg_h14, sg_h128\n"
	".equ RESUME, 0x2ff00\n"
	".macro HANDLER vec, err\n"
	"sg_h\\vec:\n"
	"	push %rax\n"
	"	.if \\err\n"
	"	mov 8(%rsp), %rax\n"
	"	mov %rax, 0x20008+\\vec*64\n"
	"	mov 16(%rsp), %rax\n"
	"	mov %rax, 0x20010+\\vec*64\n"
	"	mov 24(%rsp), %rax\n"
	"	mov %rax, 0x20028+\\vec*64\n"
	"	.else\n"
	"	movq $-1, 0x20008+\\vec*64\n"
	"	mov 8(%rsp), %rax\n"
	"	mov %rax, 0x20010+\\vec*64\n"
	"	mov 16(%rsp), %rax\n"
	"	mov %rax, 0x20028+\\vec*64\n"
	"	.endif\n"
	"	mov %cr2, %rax\n"
	"	mov %rax, 0x20018+\\vec*64\n"
	"	mov %rsp, 0x20020+\\vec*64\n"
	"	incq 0x20000+\\vec*64\n"
	"	mov RESUME, %rax\n"
	"	test %rax, %rax\n"
	"	jz 1f\n"
	"	mov %rax, 8+8*\\err(%rsp)\n"
	"	movq $0, RESUME\n"
	"1:	pop %rax\n"
	"	.if \\err\n"
	"	add $8, %rsp\n"
	"	.endif\n"
	"	iretq\n"
	".endm\n"
	"sg_start:\n"
	"HANDLER 0, 0\n"
	"HANDLER 3, 0\n"
	"HANDLER 6, 0\n"
	"HANDLER 8, 1\n"
	"HANDLER 13, 1\n"
	"HANDLER 14, 1\n"
	"HANDLER 128, 0\n"
	/* Exceptions at CPL 0. */
	"sg_exc_main:\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	ud2\n"
	"1:	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov $0x80, %ax\n"
	"	mov %ax, %ds\n" /* beyond the GDT limit: #GP(0x80) */
	"1:	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	xor %ecx, %ecx\n"
	"	div %ecx\n"
	"1:	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov 0x31008, %rax\n" /* not present, read: #PF(0) */
	"1:	mov 0x20008+14*64, %rax\n"
	"	mov %rax, 0x20e00\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	movq $5, 0x31010\n" /* not present, write: #PF(2) */
	"1:	mov 0x20008+14*64, %rax\n"
	"	mov %rax, 0x20e08\n"
	"	mov 0x20018+14*64, %rax\n"
	"	mov %rax, 0x20e10\n"
	"	int3\n" /* IST 1 */
	"	mov %rsp, 0x20e18\n"
	"	int $0x80\n"
	"	mov %rsp, 0x20e20\n"
	"	cli\n"
	"	hlt\n"
	/* #GP whose gate is absent: #NP while delivering #GP -> #DF. */
	"sg_df_main:\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov $0x80, %ax\n"
	"	mov %ax, %ds\n"
	"1:	cli\n"
	"	hlt\n"
	/* SYSCALL/SYSRET, user-mode faults and INT n. */
	"sg_sc_main:\n"
	"	mov $0xc0000080, %ecx\n"
	"	rdmsr\n"
	"	or $1, %eax\n"
	"	wrmsr\n"
	"	mov $0xc0000081, %ecx\n"
	"	xor %eax, %eax\n"
	"	mov $0x00230010, %edx\n"
	"	wrmsr\n"
	"	lea sc_entry(%rip), %rax\n"
	"	mov %rax, %rdx\n"
	"	shr $32, %rdx\n"
	"	mov $0xc0000082, %ecx\n"
	"	wrmsr\n"
	"	mov $0xc0000084, %ecx\n"
	"	mov $0x200, %eax\n"
	"	xor %edx, %edx\n"
	"	wrmsr\n"
	"	push $0x2b\n"
	"	push $0xd000\n"
	"	push $0x202\n"
	"	push $0x33\n"
	"	lea sc_user(%rip), %rax\n"
	"	push %rax\n"
	"	iretq\n"
	"sc_user:\n"
	"	mov $41, %rdi\n"
	"	syscall\n"
	"	mov %rdi, 0x20100\n"
	"	mov %cs, %rax\n"
	"	mov %rax, 0x20108\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov 0x30000, %rax\n" /* supervisor page from CPL 3: #PF(5) */
	"1:	int $0x80\n"	     /* DPL 3 gate */
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	int $0x81\n" /* DPL 0 gate: #GP(0x81*8+2) */
	"1:	mov %rsp, 0x20128\n"
	"	mov $99, %eax\n"
	"	syscall\n"
	"sc_entry:\n"
	"	cmp $99, %eax\n"
	"	je 1f\n"
	"	mov %rcx, 0x20110\n"
	"	mov %r11, 0x20118\n"
	"	pushfq\n"
	"	pop %rax\n"
	"	mov %rax, 0x20120\n"
	"	inc %rdi\n"
	"	sysretq\n"
	"1:	mov %cs, %rax\n"
	"	mov %rax, 0x20130\n"
	"	cli\n"
	"	hlt\n"
	/* Compatibility mode: IRETQ to 32-bit user code, INT 0x80 from it, SYSCALL via CSTAR. */
	"sg_compat_main:\n"
	"	mov $0xc0000080, %ecx\n"
	"	rdmsr\n"
	"	or $1, %eax\n"
	"	wrmsr\n"
	"	mov $0xc0000081, %ecx\n"
	"	xor %eax, %eax\n"
	"	mov $0x00230010, %edx\n"
	"	wrmsr\n"
	"	lea cm_cstar(%rip), %rax\n"
	"	mov %rax, %rdx\n"
	"	shr $32, %rdx\n"
	"	mov $0xc0000083, %ecx\n"
	"	wrmsr\n"
	"	push $0x2b\n"
	"	push $0xd000\n"
	"	push $0x2\n"
	"	push $0x23\n"
	"	lea cm_user32(%rip), %rax\n"
	"	push %rax\n"
	"	iretq\n"
	".code32\n"
	"cm_user32:\n"
	"	mov $7, %eax\n"
	"	int $0x80\n"
	"	mov %eax, 0x20500\n"
	"	mov %esp, 0x20504\n"
	"	syscall\n"
	"	movl $0x55, 0x20524\n"
	"	mov $99, %eax\n"
	"	syscall\n"
	".code64\n"
	"cm_cstar:\n"
	"	cmp $99, %eax\n"
	"	je 1f\n"
	"	mov %rcx, 0x20510\n"
	"	mov %cs, %rax\n"
	"	mov %rax, 0x20518\n"
	"	sysretl\n"
	"1:	cli\n"
	"	hlt\n"
	/* A loop whose state must survive get_state/set_state. */
	"sg_sum_main:\n"
	"	xor %eax, %eax\n"
	"	mov $5000, %ecx\n"
	"1:	add %rcx, %rax\n"
	"	push %rax\n"
	"	pop %rdx\n"
	"	loop 1b\n"
	"	mov %rax, 0x20600\n"
	"	cli\n"
	"	hlt\n"
	/* Assorted system instructions; results at 0x20700.. */
	"sg_insn_main:\n"
	"	sgdt 0x20700\n"
	"	sidt 0x20710\n"
	"	xor %eax, %eax\n"
	"	str %ax\n"
	"	mov %rax, 0x20720\n"
	"	mov $0x2b, %ecx\n"
	"	lsl %ecx, %eax\n"
	"	setz %dl\n"
	"	mov %rax, 0x20728\n"
	"	mov %dl, 0x20730\n"
	"	mov $0x80, %ecx\n"
	"	mov $0x1234, %eax\n"
	"	lsl %ecx, %eax\n"
	"	setz %dl\n"
	"	mov %dl, 0x20731\n"
	"	mov %eax, 0x20734\n"
	"	mov $0x10, %ecx\n"
	"	lar %ecx, %eax\n"
	"	mov %eax, 0x20738\n"
	"	mov $0x18, %ecx\n"
	"	verr %cx\n"
	"	setz 0x20740\n"
	"	mov $0x10, %ecx\n"
	"	verw %cx\n"
	"	setz 0x20741\n"
	"	mov $0xc0000103, %ecx\n"
	"	mov $7, %eax\n"
	"	xor %edx, %edx\n"
	"	wrmsr\n"
	"	rdtscp\n"
	"	mov %ecx, 0x20744\n"
	"	mov $0xc0000102, %ecx\n"
	"	mov $0x1111, %eax\n"
	"	wrmsr\n"
	"	mov $0xc0000101, %ecx\n"
	"	mov $0x2222, %eax\n"
	"	wrmsr\n"
	"	swapgs\n"
	"	rdmsr\n"
	"	mov %eax, 0x20748\n"
	"	mov $0x5555, %rax\n"
	"	mov %rax, %cr2\n"
	"	mov %cr2, %rbx\n"
	"	mov %rbx, 0x20750\n"
	"	mov $1, %eax\n"
	"	mov %rax, %dr7\n"
	"	mov %dr7, %rbx\n"
	"	mov %rbx, 0x20758\n"
	"	mov $0xe9, %dx\n"
	"	mov $0x41, %al\n"
	"	out %al, %dx\n"
	"	mov $0x42, %al\n"
	"	out %al, $0xe9\n"
	"	lea 2f(%rip), %rsi\n"
	"	mov $2, %ecx\n"
	"	rep outsb\n"
	"	mov %rcx, 0x20760\n"
	"	in %dx, %al\n"
	"	mov %al, 0x20768\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov $0x40, %ax\n"
	"	ltr %ax\n" /* the TSS is busy: #GP(0x40) */
	"1:	mov %cr4, %rax\n"
	"	mov %rax, 0x20770\n"
	"	lea 1f(%rip), %rax\n"
	"	mov %rax, RESUME\n"
	"	mov $0x1000000, %rax\n" /* CR4 bit 24 (PKS): reserved here, #GP(0) */
	"	mov %rax, %cr4\n"
	"1:	cli\n"
	"	hlt\n"
	"2:	.ascii \"CD\"\n"
	"sg_end:\n"
	".previous\n");

extern const char sg_start[], sg_end[], sg_exc_main[], sg_df_main[], sg_sc_main[], sg_compat_main[],
    sg_sum_main[], sg_insn_main[];
extern const char sg_h0[], sg_h3[], sg_h6[], sg_h8[], sg_h13[], sg_h14[], sg_h128[];

#define G(sym) (ESV_CODE + (uint64_t)((sym)-sg_start))
#define SLOT(vec, field) (ESV_DATA + (vec)*64 + (field)*8)
enum { S_COUNT, S_ERR, S_RIP, S_CR2, S_RSP, S_CS };

static int setup(void **state)
{
	struct esv *v = calloc(1, sizeof(*v));

	assert_non_null(v);
	assert_int_equal(esv_create(v, 1), 0);
	esv_load(v, sg_start, (size_t)(sg_end - sg_start));
	esv_gate(v, 0, G(sg_h0), 0, 0, 0xe, 1);
	esv_gate(v, 3, G(sg_h3), 1, 0, 0xe, 1);
	esv_gate(v, 6, G(sg_h6), 0, 0, 0xe, 1);
	esv_gate(v, 8, G(sg_h8), 1, 0, 0xe, 1);
	esv_gate(v, 13, G(sg_h13), 0, 0, 0xe, 1);
	esv_gate(v, 14, G(sg_h14), 0, 0, 0xe, 1);
	esv_gate(v, 0x80, G(sg_h128), 0, 3, 0xf, 1);
	esv_gate(v, 0x81, G(sg_h128), 0, 0, 0xf, 1);
	*state = v;
	return 0;
}

static int teardown(void **state)
{
	esv_destroy(*state);
	free(*state);
	return 0;
}

static void test_exceptions(void **state)
{
	struct esv *v = *state;

	esv_enter(v, 0, G(sg_exc_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_HLT);

	/* #UD, no error code, at the UD2. */
	assert_int_equal(esv_rd(v, SLOT(6, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(6, S_ERR)), (uint64_t)-1);
	assert_int_equal(esv_rd(v, SLOT(6, S_CS)), ESV_KCODE);
	/* #GP with the selector as error code. */
	assert_int_equal(esv_rd(v, SLOT(13, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(13, S_ERR)), 0x80);
	/* #DE. */
	assert_int_equal(esv_rd(v, SLOT(0, S_COUNT)), 1);
	/* Page faults: read of a non-present page, then a write; CR2 is the address. */
	assert_int_equal(esv_rd(v, SLOT(14, S_COUNT)), 2);
	assert_int_equal(esv_rd(v, 0x20e00), 0);
	assert_int_equal(esv_rd(v, 0x20e08), 2);
	assert_int_equal(esv_rd(v, 0x20e10), ESV_ABSENT_PAGE + 0x10);
	/* Handler stacks: same level (no IST) stays on the kernel stack, 16-byte aligned frame. */
	uint64_t rsp13 = esv_rd(v, SLOT(13, S_RSP));

	assert_true(rsp13 < ESV_KSTACK && rsp13 > ESV_KSTACK - 0x100);
	assert_int_equal((rsp13 + 8) % 16, 0); /* after one push below the aligned frame */
	/* INT3 through an IST-1 gate: its handler ran on the IST stack; RIP after the INT3. */
	assert_int_equal(esv_rd(v, SLOT(3, S_COUNT)), 1);
	uint64_t rsp3 = esv_rd(v, SLOT(3, S_RSP));

	assert_true(rsp3 < ESV_IST1 && rsp3 >= ESV_IST1 - 0x100);
	/* IRETQ put RSP back exactly. */
	assert_int_equal(esv_rd(v, 0x20e18), ESV_KSTACK);
	assert_int_equal(esv_rd(v, 0x20e20), ESV_KSTACK);
	assert_int_equal(esv_rd(v, SLOT(0x80, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(0x80, S_ERR)), (uint64_t)-1);
}

static void test_double_fault(void **state)
{
	struct esv *v = *state;

	esv_gate(v, 13, G(sg_h13), 0, 0, 0xe, 0);
	esv_enter(v, 0, G(sg_df_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, SLOT(13, S_COUNT)), 0);
	assert_int_equal(esv_rd(v, SLOT(8, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(8, S_ERR)), 0);
	uint64_t rsp = esv_rd(v, SLOT(8, S_RSP));

	assert_true(rsp < ESV_IST1 && rsp >= ESV_IST1 - 0x100);
}

static void test_triple_fault(void **state)
{
	struct esv *v = *state;

	esv_gate(v, 13, G(sg_h13), 0, 0, 0xe, 0);
	esv_gate(v, 8, G(sg_h8), 1, 0, 0xe, 0);
	esv_enter(v, 0, G(sg_df_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_SHUTDOWN);
	assert_int_equal(esv_rd(v, SLOT(8, S_COUNT)), 0);
	/* It stays shut down. */
	assert_int_equal(esv_run(v, 0, 1000), VCPU_EXIT_SHUTDOWN);
}

static void test_syscall_sysret(void **state)
{
	struct esv *v = *state;

	esv_enter(v, 0, G(sg_sc_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_HLT);
	/* Round trip: the kernel incremented RDI; the user saw CS 0x33. */
	assert_int_equal(esv_rd(v, 0x20100), 42);
	assert_int_equal(esv_rd(v, 0x20108), ESV_UCODE);
	/* SYSCALL saved the user RIP and RFLAGS (IF set) and masked IF by SFMASK. */
	uint64_t ret = esv_rd(v, 0x20110);

	assert_true(ret > G(sg_sc_main) && ret < G(sg_end));
	assert_true(esv_rd(v, 0x20118) & 0x200);
	assert_false(esv_rd(v, 0x20120) & 0x200);
	/* #PF from CPL 3 on a supervisor page: P|U, taken on TSS.RSP0 with user CS saved. */
	assert_int_equal(esv_rd(v, SLOT(14, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(14, S_ERR)), 5);
	assert_int_equal(esv_rd(v, SLOT(14, S_CR2)), ESV_SUPER_PAGE);
	assert_int_equal(esv_rd(v, SLOT(14, S_CS)), ESV_UCODE);
	uint64_t rsp = esv_rd(v, SLOT(14, S_RSP));

	assert_true(rsp < ESV_RSP0 && rsp >= ESV_RSP0 - 0x100);
	/* INT 0x80 through the DPL 3 gate; INT 0x81 through a DPL 0 gate is #GP(vec*8+2). */
	assert_int_equal(esv_rd(v, SLOT(0x80, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(0x80, S_CS)), ESV_UCODE);
	assert_int_equal(esv_rd(v, SLOT(13, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(13, S_ERR)), 0x81 * 8 + 2);
	/* IRETQ back to CPL 3 restored the user stack. */
	assert_int_equal(esv_rd(v, 0x20128), ESV_USTACK);
	/* The final SYSCALL landed at CPL 0. */
	assert_int_equal(esv_rd(v, 0x20130), ESV_KCODE);
}

static void test_msr_cpuid(void **state)
{
	struct esv *v = *state;
	struct emu_cpu *c = v->cpu[0];
	uint32_t r[4];
	uint64_t x;

	esv_enter(v, 0, G(sg_exc_main), ESV_KSTACK);
	emu_cpuid(c, 0, 0, r);
	assert_true(r[0] >= 0x16);
	assert_memory_equal(&r[1], "Genu", 4);
	emu_cpuid(c, 0x15, 0, r);
	assert_int_equal((uint64_t)r[2] * r[1] / r[0], EMU_TSC_HZ);
	/* Linux multiplies crystal kHz by EBX in 32 bits: it must not wrap. */
	assert_int_equal((uint32_t)(r[2] / 1000 * r[1]) / r[0], EMU_TSC_HZ / 1000);
	emu_cpuid(c, 0x40000000, 0, r);
	assert_memory_equal(&r[1], "TernTernTern", 12);
	emu_cpuid(c, 0x40000010, 0, r);
	assert_int_equal((uint64_t)r[0] * 1000, EMU_TSC_HZ);
	emu_cpuid(c, 0x80000001, 0, r);
	assert_true(r[3] & (1u << 29)); /* LM */
	emu_cpuid(c, 1, 0, r);
	assert_false(r[2] & (1u << 26)); /* no XSAVE */
	assert_false(r[2] & (1u << 21)); /* no x2APIC */
	/* Known MSRs round-trip; unknown ones fail (#GP); EFER refuses reserved bits. */
	assert_true(emu_msr_write(c, 0xc0000102, 0xffff888000001000ull));
	assert_true(emu_msr_read(c, 0xc0000102, &x));
	assert_int_equal(x, 0xffff888000001000ull);
	assert_false(emu_msr_write(c, 0xc0000102, 0x0000800000000000ull)); /* non-canonical */
	assert_false(emu_msr_read(c, 0x4b564d01, &x));
	assert_false(emu_msr_write(c, 0xc0000080, 1ull << 20));
	assert_true(emu_msr_read(c, 0xc0000080, &x));
	assert_true(x & 0x400);					      /* LMA */
	assert_false(emu_msr_write(c, 0x277, 0x0202020202020202ull)); /* PAT type 2 reserved */
	/* The TSC is writable and keeps running from the written value. */
	assert_true(emu_msr_write(c, 0x10, 1000000000000ull));
	assert_true(emu_msr_read(c, 0x10, &x));
	assert_true(x >= 1000000000000ull && x < 1000000000000ull + 1000000000ull);
}

static void test_compat_mode(void **state)
{
	struct esv *v = *state;

	esv_enter(v, 0, G(sg_compat_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_HLT);
	/* INT 0x80 from 32-bit code: frame CS 0x23, back with registers intact. */
	assert_int_equal(esv_rd(v, SLOT(0x80, S_COUNT)), 1);
	assert_int_equal(esv_rd(v, SLOT(0x80, S_CS)), ESV_UCODE32);
	assert_int_equal(esv_rd(v, 0x20500) & 0xffffffff, 7);
	assert_int_equal(esv_rd(v, 0x20504) & 0xffffffff, ESV_USTACK);
	/* SYSCALL from compat mode entered through CSTAR in 64-bit mode; SYSRETL returned. */
	assert_int_equal(esv_rd(v, 0x20518), ESV_KCODE);
	uint64_t ret = esv_rd(v, 0x20510);

	assert_true(ret > G(sg_compat_main) && ret < G(sg_end));
	assert_int_equal(esv_rd(v, 0x20524) & 0xffffffff, 0x55);
}

static void test_system_insns(void **state)
{
	struct esv *v = *state;

	esv_enter(v, 0, G(sg_insn_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 100000), VCPU_EXIT_HLT);
	/* SGDT/SIDT: limit, then the 64-bit base. */
	assert_int_equal(esv_rd(v, 0x20700) & 0xffff, 0x4f);
	assert_int_equal(esv_rd(v, 0x20702), ESV_GDT);
	assert_int_equal(esv_rd(v, 0x20710) & 0xffff, 0xfff);
	assert_int_equal(esv_rd(v, 0x20712), ESV_IDT);
	assert_int_equal(esv_rd(v, 0x20720), ESV_TSS_SEL);
	/* LSL: a flat data segment's limit; a selector past the GDT leaves ZF=0 and EAX alone. */
	assert_int_equal(esv_rd(v, 0x20728), 0xffffffff);
	assert_int_equal(esv_rd(v, 0x20730) & 0xff, 1);
	assert_int_equal(esv_rd(v, 0x20731) & 0xff, 0);
	assert_int_equal(esv_rd(v, 0x20734) & 0xffffffff, 0x1234);
	/* LAR of the 64-bit kernel code segment: P DPL0 S type B, L G. */
	assert_int_equal(esv_rd(v, 0x20738) & 0xffffffff, 0x00a09b00);
	/* VERR on data: yes; VERW on code: no. */
	assert_int_equal(esv_rd(v, 0x20740) & 0xff, 1);
	assert_int_equal(esv_rd(v, 0x20741) & 0xff, 0);
	/* RDTSCP returns TSC_AUX; SWAPGS exchanged GS base and KERNEL_GS_BASE. */
	assert_int_equal(esv_rd(v, 0x20744) & 0xffffffff, 7);
	assert_int_equal(esv_rd(v, 0x20748) & 0xffffffff, 0x1111);
	assert_int_equal(v->cpu[0]->sys.kernel_gs_base, 0x2222);
	/* CR2 is plain storage; DR7 keeps its always-one bit 10. */
	assert_int_equal(esv_rd(v, 0x20750), 0x5555);
	assert_int_equal(esv_rd(v, 0x20758), 0x401);
	/* OUT, OUT imm8, REP OUTSB reached the port in order; IN of an absent port reads ones. */
	assert_int_equal(v->nlog, 4);
	assert_memory_equal(v->log, "ABCD", 4);
	assert_int_equal(esv_rd(v, 0x20760), 0);
	assert_int_equal(esv_rd(v, 0x20768) & 0xff, 0xff);
	/* LTR of a busy TSS and a reserved CR4 bit: #GP(sel) and #GP(0), CR4 unchanged. */
	assert_int_equal(esv_rd(v, SLOT(13, S_COUNT)), 2);
	assert_int_equal(esv_rd(v, SLOT(13, S_ERR)), 0);
	assert_int_equal(esv_rd(v, 0x20770), 0x6a0);
	assert_int_equal(v->cpu[0]->cr4, 0x6a0);
}

static void test_state_roundtrip(void **state)
{
	struct esv *v = *state;
	struct cpu_state *st = calloc(1, sizeof(*st)), *st2 = calloc(1, sizeof(*st2));
	struct emu_cpu *c = v->cpu[0];
	uint64_t full;

	assert_non_null(st);
	assert_non_null(st2);
	/* Uninterrupted run for reference. */
	esv_enter(v, 0, G(sg_sum_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 0), VCPU_EXIT_HLT);
	full = esv_rd(v, 0x20600);
	assert_int_equal(full, 5000ull * 5001 / 2);

	/* Stop part way, save, scramble the vCPU, restore, finish: same result. */
	esv_wr(v, 0x20600, 0);
	esv_enter(v, 0, G(sg_sum_main), ESV_KSTACK);
	emu_apic_write_reg(c, 0xf0, 0x1ff);
	emu_apic_write_reg(c, 0x80, 0x20);
	emu_apic_write_reg(c, 0xd0, 0x01000000);
	emu_apic_write_reg(c, 0x320, 0x10041);
	assert_true(emu_msr_write(c, 0xc0000102, 0x1234000));
	assert_int_equal(esv_run(v, 0, 7777), VCPU_EXIT_KICK);
	emu_get_state(c, st);
	assert_true(st->rip > G(sg_sum_main) && st->rip < G(sg_end));
	esv_enter(v, 0, G(sg_exc_main), 0x1000);
	emu_apic_write_reg(c, 0x80, 0);
	emu_set_state(c, st);
	emu_get_state(c, st2);
	assert_memory_equal(st2->gpr, st->gpr, sizeof(st->gpr));
	assert_int_equal(st2->rip, st->rip);
	assert_int_equal(st2->rflags, st->rflags);
	assert_int_equal(st2->kernel_gs_base, 0x1234000);
	assert_int_equal(st2->cr8, 2);
	assert_memory_equal(st2->lapic, st->lapic, 0x380); /* up to the timer counters */
	assert_memory_equal(st2->fxsave, st->fxsave, 160);
	assert_int_equal(esv_run(v, 0, 0), VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x20600), full);
	free(st);
	free(st2);
}

/* An idle vCPU drops its decoded code; what it runs next is decoded again and runs the same. */
static void test_idle_trim(void **state)
{
	struct esv *v = *state;
	struct emu_cpu *c = v->cpu[0];
	size_t blocks, bytes;

	esv_enter(v, 0, G(sg_sum_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 0), VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x20600), 5000ull * 5001 / 2);
	emu_bc_stats(c, &blocks, &bytes);
	assert_true(blocks > 0);
	/* Far fewer instructions than the limit ran since the cache was made: it is trimmed. */
	emu_bc_idle(c, emu_now_ns() + 3000000000ull);
	emu_bc_stats(c, &blocks, &bytes);
	assert_int_equal(blocks, 0);
	assert_int_equal(bytes, 256u << 10);
	esv_wr(v, 0x20600, 0);
	esv_enter(v, 0, G(sg_sum_main), ESV_KSTACK);
	assert_int_equal(esv_run(v, 0, 0), VCPU_EXIT_HLT);
	assert_int_equal(esv_rd(v, 0x20600), 5000ull * 5001 / 2);
	emu_bc_stats(c, &blocks, &bytes);
	assert_true(blocks > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_exceptions, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_double_fault, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_triple_fault, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_syscall_sysret, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_msr_cpuid, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compat_mode, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_system_insns, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_state_roundtrip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_idle_trim, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
