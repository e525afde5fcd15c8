/*
 * Guest memory through the gm accessor and dirty logging:
 *  - the guest reads what the VMM wrote with gm_write() and the VMM reads
 *    what the guest wrote with gm_read(), in low RAM and in RAM above 4 GiB
 *    (the second memory slot);
 *  - the first sync_dirty() reports every page (nothing was tracked before);
 *  - after that, sync_dirty() reports exactly the pages the guest wrote, in
 *    both slots, and a second sync reports them no more.
 * The VM has 3 GiB + 4 MiB of RAM so the high slot exists; the memory is
 * sparse, only touched pages cost anything.
 */
#include "kvm/lib/kvm_util.h"

#define MEM_SIZE (MEM_HOLE_START + (4ull << 20))
#define SUM_SRC 0x300000ull /* eight qwords written by the VMM */
#define HIGH_PD 0x30000ull  /* page directory mapping 4 GiB .. 5 GiB */
#define HIGH_A (MEM_HIGH_START + 0x1000)
#define HIGH_B (MEM_HIGH_START + 0x3ff000)

/* rdi = GUEST_DATA_ADDR. Sums SUM_SRC[0..7] into rdi[0], then writes pages. */
__asm__(".pushsection .text\n"
	".globl guest_mem_start, guest_mem_end\n"
	"guest_mem_start:\n"
	"	xor %eax, %eax\n"
	"	mov $0x300000, %esi\n"
	"	mov $8, %ecx\n"
	"1:	add (%rsi), %rax\n"
	"	add $8, %rsi\n"
	"	dec %ecx\n"
	"	jnz 1b\n"
	"	mov %rax, 0(%rdi)\n"	      /* page 0x200 */
	"	movq $0xaaaa, 0x1000(%rdi)\n" /* page 0x201 */
	"	movq $0xbbbb, 0x5ff8(%rdi)\n" /* page 0x205, last qword */
	"	movabs $0x100001000, %rbx\n"
	"	movq $0xcccc, (%rbx)\n" /* high page 1 */
	"	movabs $0x1003ff000, %rbx\n"
	"	movq $0xdddd, 8(%rbx)\n" /* high page 0x3ff */
	"	hlt\n"
	"guest_mem_end:\n"
	".popsection\n");
extern const char guest_mem_start[], guest_mem_end[];

static bool dirty(struct vm *vm, uint64_t gpa)
{
	uint64_t p = gm_page_index(&vm->mem, gpa);

	TEST_ASSERT(p != UINT64_MAX, "%#llx is not RAM", (unsigned long long)gpa);
	return (vm->mem.dirty[p / 64] >> (p % 64)) & 1;
}

static void clear_dirty(struct vm *vm)
{
	memset(vm->mem.dirty, 0, (vm->mem.npages + 63) / 64 * sizeof(uint64_t));
}

/* boot_setup_tables() maps 0..4 GiB; add 4..5 GiB for the high slot. */
static void map_high(struct vm *vm)
{
	uint64_t pdpte = HIGH_PD | 3, pd[512];

	for (uint64_t i = 0; i < 512; i++)
		pd[i] = (MEM_HIGH_START + (i << 21)) | 0x83;
	TEST_ASSERT(gm_write(&vm->mem, HIGH_PD, pd, sizeof(pd)) == 0, "page directory");
	TEST_ASSERT(gm_write(&vm->mem, 0x2000 + 4 * 8, &pdpte, 8) == 0, "PDPT entry");
}

int main(void)
{
	const uint64_t unwritten[] = {0x202000,
				      0x203000,
				      0x204000,
				      0x206000,
				      SUM_SRC,
				      MEM_HIGH_START,
				      MEM_HIGH_START + 0x2000};
	const uint64_t written[] = {0x200000, 0x201000, 0x205000, HIGH_A, HIGH_B};
	uint64_t src[8], sum = 0;
	struct vm vm;

	kvm_require();
	if (__test_vm_create(&vm, &cpu_backend_kvm_noirqchip, MEM_SIZE, 1))
		test_skip("cannot create a VM with %llu MiB of (sparse) RAM",
			  (unsigned long long)(MEM_SIZE >> 20));
	TEST_ASSERT_EQ(vm.mem.high_size, 4ull << 20);
	test_guest_load(&vm, guest_mem_start, guest_mem_end);
	map_high(&vm);
	for (int i = 0; i < 8; i++) {
		src[i] = 0x1111111111ull * (uint64_t)(i + 1);
		sum += src[i];
	}
	TEST_ASSERT(gm_write(&vm.mem, SUM_SRC, src, sizeof(src)) == 0, "gm_write");
	test_vcpu_enter_long_mode(&vm.vcpus[0], GUEST_DATA_ADDR);

	/* First sync: logging starts, everything counts as dirty. */
	clear_dirty(&vm);
	TEST_ASSERT_EQ(vm.cpu->sync_dirty(&vm), 0);
	TEST_ASSERT(dirty(&vm, 0x123000) && dirty(&vm, HIGH_B + 0x1000 - 8),
		    "the first sync must report every page");
	clear_dirty(&vm);

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);

	/* The VMM sees the guest's writes, and the guest saw the VMM's. */
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR), sum);
	TEST_ASSERT_EQ(test_guest_u64(&vm, 0x201000), 0xaaaa);
	TEST_ASSERT_EQ(test_guest_u64(&vm, 0x205ff8), 0xbbbb);
	TEST_ASSERT_EQ(test_guest_u64(&vm, HIGH_A), 0xcccc);
	TEST_ASSERT_EQ(test_guest_u64(&vm, HIGH_B + 8), 0xdddd);

	TEST_ASSERT_EQ(vm.cpu->sync_dirty(&vm), 0);
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		TEST_ASSERT(dirty(&vm, written[i]), "page %#llx was written but is not dirty",
			    (unsigned long long)written[i]);
	for (size_t i = 0; i < sizeof(unwritten) / sizeof(unwritten[0]); i++)
		TEST_ASSERT(!dirty(&vm, unwritten[i]), "page %#llx was not written but is dirty",
			    (unsigned long long)unwritten[i]);

	/* KVM's log was consumed: nothing new to report. */
	clear_dirty(&vm);
	TEST_ASSERT_EQ(vm.cpu->sync_dirty(&vm), 0);
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		TEST_ASSERT(!dirty(&vm, written[i]), "page %#llx reported twice",
			    (unsigned long long)written[i]);

	vm_destroy(&vm);
	printf("PASS: gm accessor both ways, dirty log of both slots\n");
	return 0;
}
