/*
 * Port I/O: OUT and IN of 1, 2 and 4 bytes, and REP OUTSB/INSB, reach the
 * device on the port bus with the right port, size and data; the data a
 * device returns for IN ends up in the guest. HLT ends the run.
 */
#include "kvm/lib/kvm_util.h"

#define PORT 0x500

/* rdi: where to store what IN returned (GUEST_DATA_ADDR). */
__asm__(".pushsection .text\n"
	".globl guest_pio_start, guest_pio_end\n"
	"guest_pio_start:\n"
	"	mov $0x500, %dx\n"
	"	mov $0x11, %al\n"
	"	out %al, %dx\n"
	"	add $2, %dx\n"
	"	mov $0x2233, %ax\n"
	"	out %ax, %dx\n"
	"	add $2, %dx\n"
	"	mov $0x44556677, %eax\n"
	"	out %eax, %dx\n"
	"	mov $0x500, %dx\n"
	"	in %dx, %al\n"
	"	mov %al, 0(%rdi)\n"
	"	add $2, %dx\n"
	"	in %dx, %ax\n"
	"	mov %ax, 8(%rdi)\n"
	"	add $2, %dx\n"
	"	in %dx, %eax\n"
	"	mov %eax, 16(%rdi)\n"
	/* rep outsb: three bytes "abc" from rdi+32 to port 0x506 */
	"	movl $0x00636261, 32(%rdi)\n"
	"	lea 32(%rdi), %rsi\n"
	"	mov $0x506, %dx\n"
	"	mov $3, %ecx\n"
	"	cld\n"
	"	rep outsb\n"
	/* rep insb: two bytes from port 0x507 to rdi+48 */
	"	lea 48(%rdi), %rdi\n"
	"	mov $0x507, %dx\n"
	"	mov $2, %ecx\n"
	"	rep insb\n"
	"	hlt\n"
	"guest_pio_end:\n"
	".popsection\n");
extern const char guest_pio_start[], guest_pio_end[];

int main(void)
{
	struct vm vm;
	struct test_dev dev;
	uint64_t v;
	uint8_t b[2];

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm_noirqchip, 16 << 20, 1);
	test_dev_attach(&dev, &vm, &vm.pio, PORT, 8);
	test_guest_load(&vm, guest_pio_start, guest_pio_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], GUEST_DATA_ADDR);

	vcpu_run_expect(&vm.vcpus[0], VCPU_EXIT_HLT);

	TEST_ASSERT_EQ(dev.n, 11);
	test_dev_expect(&dev, 0, 0, 1, true, 0x11);
	test_dev_expect(&dev, 1, 2, 2, true, 0x2233);
	test_dev_expect(&dev, 2, 4, 4, true, 0x44556677);
	test_dev_expect(&dev, 3, 0, 1, false, test_dev_pattern(0, 1));
	test_dev_expect(&dev, 4, 2, 2, false, test_dev_pattern(2, 2));
	test_dev_expect(&dev, 5, 4, 4, false, test_dev_pattern(4, 4));
	test_dev_expect(&dev, 6, 6, 1, true, 'a');
	test_dev_expect(&dev, 7, 6, 1, true, 'b');
	test_dev_expect(&dev, 8, 6, 1, true, 'c');
	test_dev_expect(&dev, 9, 7, 1, false, test_dev_pattern(7, 1));
	test_dev_expect(&dev, 10, 7, 1, false, test_dev_pattern(7, 1));

	/* What IN returned, as the guest stored it. */
	v = 0;
	TEST_ASSERT(gm_read(&vm.mem, GUEST_DATA_ADDR, &v, 1) == 0, "gm_read");
	TEST_ASSERT_EQ(v, test_dev_pattern(0, 1));
	TEST_ASSERT(gm_read(&vm.mem, GUEST_DATA_ADDR + 8, &v, 2) == 0, "gm_read");
	TEST_ASSERT_EQ(v, test_dev_pattern(2, 2));
	TEST_ASSERT(gm_read(&vm.mem, GUEST_DATA_ADDR + 16, &v, 4) == 0, "gm_read");
	TEST_ASSERT_EQ(v, test_dev_pattern(4, 4));
	TEST_ASSERT(gm_read(&vm.mem, GUEST_DATA_ADDR + 48, b, 2) == 0, "gm_read");
	TEST_ASSERT_EQ(b[0], test_dev_pattern(7, 1));
	TEST_ASSERT_EQ(b[1], test_dev_pattern(7, 1));
	TEST_ASSERT_EQ(vm.vcpus[0].exits_pio, 11);

	vm_destroy(&vm);
	printf("PASS: port I/O of 1/2/4 bytes and rep outsb/insb\n");
	return 0;
}
