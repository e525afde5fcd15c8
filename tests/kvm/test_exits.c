/*
 * How run() ends: HLT returns VCPU_EXIT_HLT with rip after the HLT and the
 * guest resumes from there; a triple fault (an exception with no usable
 * IDT) returns VCPU_EXIT_SHUTDOWN, with and without the in-kernel irqchip.
 */
#include "kvm/lib/kvm_util.h"

__asm__(".pushsection .text\n"
	".globl guest_hlt_start, guest_hlt_after1, guest_hlt_after2, guest_hlt_end\n"
	"guest_hlt_start:\n"
	"	mov $0x1234, %eax\n"
	"	hlt\n"
	"guest_hlt_after1:\n"
	"	mov $0x5678, %eax\n"
	"	hlt\n"
	"guest_hlt_after2:\n"
	"guest_hlt_end:\n"
	".popsection\n");
extern const char guest_hlt_start[], guest_hlt_after1[], guest_hlt_after2[], guest_hlt_end[];

/* The IDT limit is 0 at entry: #UD cannot be delivered, nor #GP, nor #DF. */
__asm__(".pushsection .text\n"
	".globl guest_tf_start, guest_tf_end\n"
	"guest_tf_start:\n"
	"	mov $0x4f0, %dx\n"
	"	out %al, %dx\n"
	"	ud2\n"
	"guest_tf_end:\n"
	".popsection\n");
extern const char guest_tf_start[], guest_tf_end[];

static void test_hlt(void)
{
	struct vm vm;
	struct cpu_state st;

	test_vm_create(&vm, &cpu_backend_kvm_noirqchip, 16 << 20, 1);
	test_guest_load(&vm, guest_hlt_start, guest_hlt_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);
	vcpu_get_state(&vm.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[0], 0x1234);
	TEST_ASSERT_EQ(st.rip, GUEST_CODE_ADDR + (guest_hlt_after1 - guest_hlt_start));

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);
	vcpu_get_state(&vm.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[0], 0x5678);
	TEST_ASSERT_EQ(st.rip, GUEST_CODE_ADDR + (guest_hlt_after2 - guest_hlt_start));
	vm_destroy(&vm);
}

static void test_triple_fault(const struct cpu_backend *cpu)
{
	struct vm vm;
	struct test_dev dev;

	test_vm_create(&vm, cpu, 16 << 20, 1);
	test_dev_attach(&dev, &vm, &vm.pio, 0x4f0, 1);
	test_guest_load(&vm, guest_tf_start, guest_tf_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_SHUTDOWN);
	/* The guest did run up to the fault. */
	TEST_ASSERT_EQ(dev.n, 1);
	vm_destroy(&vm);
}

int main(void)
{
	kvm_require();
	test_hlt();
	test_triple_fault(&cpu_backend_kvm_noirqchip);
	test_triple_fault(&cpu_backend_kvm);
	printf(
	    "PASS: HLT exits and resumes; triple fault is a shutdown (with and without irqchip)\n");
	return 0;
}
