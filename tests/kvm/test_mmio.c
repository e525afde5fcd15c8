/*
 * MMIO: guest loads and stores of 1, 2, 4 and 8 bytes to an address no RAM
 * slot covers reach the device on the MMIO bus with the right offset, size
 * and data; the value a device returns for a load ends up in the guest; an
 * address no device claims reads as all ones (the bus's faked answer).
 */
#include "kvm/lib/kvm_util.h"

/* rbx: the device (GUEST_MMIO_ADDR); rdi: where to store what the loads returned. */
__asm__(".pushsection .text\n"
	".globl guest_mmio_start, guest_mmio_end\n"
	"guest_mmio_start:\n"
	"	mov $0xd0000000, %ebx\n"
	"	movb $0x5a, 0(%rbx)\n"
	"	movw $0x1234, 2(%rbx)\n"
	"	movl $0xdeadbeef, 4(%rbx)\n"
	"	movabs $0x0102030405060708, %rax\n"
	"	mov %rax, 8(%rbx)\n"
	"	movzbl 16(%rbx), %eax\n"
	"	mov %rax, 0(%rdi)\n"
	"	movzwl 18(%rbx), %eax\n"
	"	mov %rax, 8(%rdi)\n"
	"	mov 20(%rbx), %eax\n"
	"	mov %rax, 16(%rdi)\n"
	"	mov 24(%rbx), %rax\n"
	"	mov %rax, 24(%rdi)\n"
	"	mov 0x1000(%rbx), %eax\n" /* nobody there */
	"	mov %rax, 32(%rdi)\n"
	"	hlt\n"
	"guest_mmio_end:\n"
	".popsection\n");
extern const char guest_mmio_start[], guest_mmio_end[];

int main(void)
{
	struct vm vm;
	struct test_dev dev;

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm_noirqchip, 16 << 20, 1);
	test_dev_attach(&dev, &vm, &vm.mmio, GUEST_MMIO_ADDR, 0x100);
	test_guest_load(&vm, guest_mmio_start, guest_mmio_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], GUEST_DATA_ADDR);

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);

	TEST_ASSERT_EQ(dev.n, 8);
	test_dev_expect(&dev, 0, 0, 1, true, 0x5a);
	test_dev_expect(&dev, 1, 2, 2, true, 0x1234);
	test_dev_expect(&dev, 2, 4, 4, true, 0xdeadbeef);
	test_dev_expect(&dev, 3, 8, 8, true, 0x0102030405060708ull);
	test_dev_expect(&dev, 4, 16, 1, false, test_dev_pattern(16, 1));
	test_dev_expect(&dev, 5, 18, 2, false, test_dev_pattern(18, 2));
	test_dev_expect(&dev, 6, 20, 4, false, test_dev_pattern(20, 4));
	test_dev_expect(&dev, 7, 24, 8, false, test_dev_pattern(24, 8));

	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 0), test_dev_pattern(16, 1));
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 8), test_dev_pattern(18, 2));
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 16), test_dev_pattern(20, 4));
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 24), test_dev_pattern(24, 8));
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + 32), 0xffffffffull);
	TEST_ASSERT_EQ(vm.vcpus[0].exits_mmio, 9);

	vm_destroy(&vm);
	printf("PASS: MMIO loads/stores of 1/2/4/8 bytes, unclaimed reads as all ones\n");
	return 0;
}
