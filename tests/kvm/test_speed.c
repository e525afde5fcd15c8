/*
 * How fast guest code runs on this host's KVM: a counted loop (two
 * instructions per iteration) and a burst of port writes (one exit each).
 * Asserts the guest really did the work; the last line gives the rates.
 * On a VMX/SVM host the loop runs at native speed; on PVM it is emulated.
 */
#include "kvm/lib/kvm_util.h"

#define LOOPS 2000000
#define OUTS 20000

__asm__(".pushsection .text\n"
	".globl guest_speed_start, guest_speed_mid, guest_speed_end\n"
	"guest_speed_start:\n"
	"	mov $2000000, %ecx\n"
	"1:	dec %ecx\n"
	"	jnz 1b\n"
	"	hlt\n"
	"guest_speed_mid:\n"
	"	mov $20000, %ecx\n"
	"	mov $0x530, %dx\n"
	"2:	out %al, %dx\n"
	"	dec %ecx\n"
	"	jnz 2b\n"
	"	hlt\n"
	"guest_speed_end:\n"
	".popsection\n");
extern const char guest_speed_start[], guest_speed_mid[], guest_speed_end[];

int main(void)
{
	struct vm vm;
	struct test_dev dev;
	struct cpu_state st;
	double t_loop, t_out;

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm_noirqchip, 16 << 20, 1);
	test_dev_attach(&dev, &vm, &vm.pio, 0x530, 1);
	test_guest_load(&vm, guest_speed_start, guest_speed_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);

	t_loop = test_now();
	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);
	t_loop = test_now() - t_loop;
	vcpu_get_state(&vm.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[1], 0);
	TEST_ASSERT_EQ(st.rip, GUEST_CODE_ADDR + (guest_speed_mid - guest_speed_start));

	t_out = test_now();
	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);
	t_out = test_now() - t_out;
	TEST_ASSERT_EQ(dev.n, OUTS);
	TEST_ASSERT_EQ(vm.vcpus[0].exits_pio, OUTS);

	vm_destroy(&vm);
	printf("PASS: %.2f M guest instructions/s, %.0f port-I/O exits/s\n",
	       2.0 * LOOPS / t_loop / 1e6, OUTS / t_out);
	return 0;
}
