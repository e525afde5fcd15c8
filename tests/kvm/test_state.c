/*
 * get_state/set_state: what the VMM sets (GPRs, XMM registers through the
 * FXSAVE image, MSRs; movdqu because PVM's instruction emulator has it) is what the guest sees, and
 * what the guest changes is what get_state reports; get -> set -> get is the identity. On two
 * vCPUs, CPUID reports each its own APIC ID and a package of two cores.
 */
#include "kvm/lib/kvm_util.h"

#define MSR_LSTAR 0xc0000082
#define FX_XMM(n) (160 + 16 * (n))

/* rdi = GUEST_DATA_ADDR. */
__asm__(".pushsection .text\n"
	".globl guest_state_start, guest_state_end\n"
	"guest_state_start:\n"
	"	mov %rbx, 0(%rdi)\n"
	"	mov %r15, 8(%rdi)\n"
	"	movdqu %xmm0, 32(%rdi)\n"
	"	mov $0xc0000082, %ecx\n"
	"	rdmsr\n"
	"	mov %eax, 24(%rdi)\n"
	"	mov %edx, 28(%rdi)\n"
	"	mov $0x1111, %ebx\n"
	"	mov $0x2222, %r12d\n"
	"	movdqu 64(%rdi), %xmm1\n"
	"	mov $0xc0000082, %ecx\n"
	"	mov $0x12345000, %eax\n"
	"	mov $0xffffffff, %edx\n"
	"	wrmsr\n"
	"	hlt\n"
	"guest_state_end:\n"
	".popsection\n");
extern const char guest_state_start[], guest_state_end[];

/* rdi = where to store: cpuid(1).ebx, cpuid(0xb,0).edx, cpuid(0xb,1).ebx, cpuid(0xb,1).eax. */
__asm__(".pushsection .text\n"
	".globl guest_cpuid_start, guest_cpuid_end\n"
	"guest_cpuid_start:\n"
	"	mov $1, %eax\n"
	"	xor %ecx, %ecx\n"
	"	cpuid\n"
	"	mov %ebx, 0(%rdi)\n"
	"	mov $0xb, %eax\n"
	"	xor %ecx, %ecx\n"
	"	cpuid\n"
	"	mov %edx, 4(%rdi)\n"
	"	mov $0xb, %eax\n"
	"	mov $1, %ecx\n"
	"	cpuid\n"
	"	mov %ebx, 8(%rdi)\n"
	"	mov %eax, 12(%rdi)\n"
	"	hlt\n"
	"guest_cpuid_end:\n"
	".popsection\n");
extern const char guest_cpuid_start[], guest_cpuid_end[];

static void expect_same_state(const struct cpu_state *a, const struct cpu_state *b)
{
	struct cpu_state x = *a, y = *b;

	/* The TSC runs between the two reads. */
	x.tsc = y.tsc = 0;
	TEST_ASSERT(!memcmp(&x.gpr, &y.gpr, sizeof(x.gpr)), "GPRs differ");
	TEST_ASSERT(!memcmp(&x.cs, &y.cs, sizeof(x.cs)), "CS differs");
	TEST_ASSERT(!memcmp(&x.tr, &y.tr, sizeof(x.tr)), "TR differs");
	TEST_ASSERT(!memcmp(x.fxsave, y.fxsave, sizeof(x.fxsave)), "FXSAVE image differs");
	TEST_ASSERT(!memcmp(x.lapic, y.lapic, sizeof(x.lapic)), "LAPIC differs");
	TEST_ASSERT(!memcmp(&x, &y, sizeof(x)), "state differs after get -> set -> get");
}

static void test_roundtrip(const struct cpu_backend *cpu)
{
	struct cpu_state st, st2;
	static const uint8_t xmm0[16] = "tern xmm0 value", xmm1[16] = "written to xmm1";
	uint8_t xmm[16];
	struct vm vm;
	struct vcpu *v;

	test_vm_create(&vm, cpu, 16 << 20, 1);
	v = &vm.vcpus[0];
	test_guest_load(&vm, guest_state_start, guest_state_end);
	test_vcpu_enter_long_mode(v, GUEST_DATA_ADDR);

	vcpu_get_state(v, &st);
	TEST_ASSERT_EQ(st.rip, GUEST_CODE_ADDR);
	TEST_ASSERT_EQ(st.cr3, 0x1000);
	TEST_ASSERT_EQ(st.efer & 0x500, 0x500);
	TEST_ASSERT_EQ(st.cs.l, 1);
	TEST_ASSERT_EQ(st.pending_exception, -1);
	st.gpr[3] = 0x3333333333333333ull;  /* rbx */
	st.gpr[15] = 0xf0f0f0f0f0f0f0f0ull; /* r15 */
	memcpy(st.fxsave + FX_XMM(0), xmm0, 16);
	TEST_ASSERT(gm_write(&vm.mem, GUEST_DATA_ADDR + 64, xmm1, 16) == 0, "gm_write");
	st.lstar = 0xffffffff81000000ull;
	st.cr4 |= 0x600; /* OSFXSR, OSXMMEXCPT: SSE allowed */
	vcpu_set_state(v, &st);
	vcpu_get_state(v, &st2);
	expect_same_state(&st, &st2);

	vcpu_run_expect(v, VCPU_EXIT_HLT);
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 0), 0x3333333333333333ull);
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 8), 0xf0f0f0f0f0f0f0f0ull);
	TEST_ASSERT(gm_read(&vm.mem, GUEST_DATA_ADDR + 32, xmm, 16) == 0, "gm_read");
	TEST_ASSERT(!memcmp(xmm, xmm0, 16), "the guest's xmm0 is not what set_state put there");
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 24), 0xffffffff81000000ull);

	vcpu_get_state(v, &st);
	TEST_ASSERT_EQ(st.rip, GUEST_CODE_ADDR + (guest_state_end - guest_state_start));
	TEST_ASSERT_EQ(st.gpr[3], 0x1111);
	TEST_ASSERT_EQ(st.gpr[12], 0x2222);
	TEST_ASSERT(!memcmp(st.fxsave + FX_XMM(1), xmm1, 16), "get_state misses the guest's xmm1");
	TEST_ASSERT_EQ(st.lstar, 0xffffffff12345000ull);

	vcpu_set_state(v, &st);
	vcpu_get_state(v, &st2);
	expect_same_state(&st, &st2);
	vm_destroy(&vm);
}

static void test_lapic(void)
{
	struct cpu_state st, st2;
	uint32_t id, tpr = 0x20;
	struct vm vm;

	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 2);
	for (int i = 0; i < 2; i++) {
		vcpu_get_state(&vm.vcpus[i], &st);
		memcpy(&id, st.lapic + 0x20, 4);
		TEST_ASSERT_EQ(id >> 24, (unsigned)i);
		TEST_ASSERT_EQ(st.apic_base & 0xfffff000, 0xfee00000);
		TEST_ASSERT_EQ(!!(st.apic_base & 0x100), i == 0); /* BSP flag */
		memcpy(st.lapic + 0x80, &tpr, 4);
		vcpu_set_state(&vm.vcpus[i], &st);
		vcpu_get_state(&vm.vcpus[i], &st2);
		memcpy(&id, st2.lapic + 0x80, 4);
		TEST_ASSERT_EQ(id, tpr);
		TEST_ASSERT_EQ(st2.cr8, tpr >> 4);
	}
	vm_destroy(&vm);
}

static void test_cpuid_topology(void)
{
	struct vm vm;
	uint32_t r[4];

	test_vm_create(&vm, &cpu_backend_kvm_noirqchip, 16 << 20, 2);
	test_guest_load(&vm, guest_cpuid_start, guest_cpuid_end);
	for (int i = 0; i < 2; i++) {
		uint64_t out = GUEST_DATA_ADDR + 0x1000 * (uint64_t)i;

		test_vcpu_enter_long_mode(&vm.vcpus[i], out);
		vcpu_run_expect(&vm.vcpus[i], VCPU_EXIT_HLT);
		TEST_ASSERT(gm_read(&vm.mem, out, r, sizeof(r)) == 0, "gm_read");
		TEST_ASSERT_EQ(r[0] >> 24, (unsigned)i); /* initial APIC ID */
		TEST_ASSERT_EQ((r[0] >> 16) & 0xff, 2);	 /* logical processors */
		/* KVM always lists leaf 0xB; the backend rewrites it. */
		TEST_ASSERT_EQ(r[1], (unsigned)i); /* x2APIC ID */
		TEST_ASSERT_EQ(r[2], 2);	   /* two cores at the core level */
		TEST_ASSERT_EQ(r[3], 1);	   /* one bit of core ID */
	}
	vm_destroy(&vm);
}

int main(void)
{
	kvm_require();
	test_roundtrip(&cpu_backend_kvm_noirqchip);
	test_lapic();
	test_cpuid_topology();
	printf("PASS: state round trips, guest sees set_state, LAPIC per vCPU, CPUID topology\n");
	return 0;
}
