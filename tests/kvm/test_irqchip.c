/*
 * Interrupts through the in-kernel irqchip reach the guest's IDT:
 *  - msi(): an MSI to LAPIC 0, vector 0x40;
 *  - irq_line(): an edge on IOAPIC pin 5 that the guest routed to 0x41;
 *  - an irqfd on GSI 5 (what virtio devices use), vector 0x41 again;
 *  - an MSI from another thread wakes a vCPU asleep in HLT inside KVM.
 * Each handler reports its vector on port 0x511, which kicks run().
 */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "kvm/lib/kvm_util.h"

#define PORT 0x510
#define IDT_ADDR 0xa000ull
#define READY 0xee

__asm__(".pushsection .text\n"
	".globl guest_irq_start, guest_irq_40, guest_irq_41, guest_irq_end\n"
	"guest_irq_start:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n" /* LAPIC on, spurious vector 0xff */
	"	mov $0xfec00000, %ecx\n"
	"	movl $0x1a, (%rcx)\n" /* IOAPIC pin 5, low: vector 0x41, fixed, edge */
	"	movl $0x41, 0x10(%rcx)\n"
	"	movl $0x1b, (%rcx)\n" /* high: destination APIC 0 */
	"	movl $0, 0x10(%rcx)\n"
	"	mov $0xff, %al\n" /* mask the 8259s: GSIs < 16 also reach them */
	"	out %al, $0x21\n"
	"	out %al, $0xa1\n"
	"	mov $0x511, %dx\n"
	"	mov $0xee, %al\n"
	"	out %al, %dx\n"
	"	sti\n"
	"1:	hlt\n"
	"	jmp 1b\n"
	"guest_irq_40:\n"
	"	push %rax\n"
	"	mov $0x40, %al\n"
	"	jmp 2f\n"
	"guest_irq_41:\n"
	"	push %rax\n"
	"	mov $0x41, %al\n"
	"2:	push %rdx\n"
	"	movl $0, 0xb0(%rbx)\n" /* EOI */
	"	mov $0x511, %dx\n"
	"	out %al, %dx\n"
	"	pop %rdx\n"
	"	pop %rax\n"
	"	iretq\n"
	"guest_irq_end:\n"
	".popsection\n");
extern const char guest_irq_start[], guest_irq_40[], guest_irq_41[], guest_irq_end[];

static void set_gate(struct vm *vm, unsigned vec, const char *handler)
{
	uint64_t addr = GUEST_CODE_ADDR + (uint64_t)(handler - guest_irq_start);
	uint64_t gate[2] = {
	    (addr & 0xffff) | (0x10ull << 16) | (0x8eull << 40) | ((addr >> 16 & 0xffff) << 48),
	    addr >> 32,
	};

	TEST_ASSERT(gm_write(&vm->mem, IDT_ADDR + 16 * vec, gate, sizeof(gate)) == 0, "IDT");
}

static void *msi_later(void *arg)
{
	struct vm *vm = arg;
	struct timespec ts = {.tv_nsec = 200 * 1000000};

	nanosleep(&ts, NULL);
	TEST_ASSERT_EQ(vm->cpu->msi(vm, 0xfee00000, 0x40), 0);
	return NULL;
}

int main(void)
{
	struct vm vm;
	struct vcpu *v;
	struct test_dev dev;
	struct cpu_state st;
	struct kvm_irqfd irqfd;
	uint64_t one = 1;
	pthread_t t;
	int efd;

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 1);
	v = &vm.vcpus[0];
	test_dev_attach(&dev, &vm, &vm.pio, PORT, 2);
	dev.kick_offset = 1;
	test_guest_load(&vm, guest_irq_start, guest_irq_end);
	set_gate(&vm, 0x40, guest_irq_40);
	set_gate(&vm, 0x41, guest_irq_41);
	test_vcpu_enter_long_mode(v, 0);
	vcpu_get_state(v, &st);
	st.idt.base = IDT_ADDR;
	st.idt.limit = 256 * 16 - 1;
	vcpu_set_state(v, &st);

	/* The guest sets up its LAPIC and IOAPIC and says so. */
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev.n, 1);
	test_dev_expect(&dev, 0, 1, 1, true, READY);

	TEST_ASSERT_EQ(vm.cpu->msi(&vm, 0xfee00000, 0x40), 0);
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev.n, 2);
	test_dev_expect(&dev, 1, 1, 1, true, 0x40);

	TEST_ASSERT_EQ(vm.cpu->irq_line(&vm, 5, 1), 0);
	TEST_ASSERT_EQ(vm.cpu->irq_line(&vm, 5, 0), 0);
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev.n, 3);
	test_dev_expect(&dev, 2, 1, 1, true, 0x41);
	TEST_ASSERT(vm.cpu->irq_line(&vm, 24, 1) == -EINVAL, "GSI 24 does not exist");

	efd = eventfd(0, EFD_CLOEXEC);
	TEST_ASSERT(efd >= 0, "eventfd");
	irqfd = (struct kvm_irqfd){.fd = (uint32_t)efd, .gsi = 5};
	kvm_ioctl(cpu_kvm_vm_fd(&vm), KVM_IRQFD, &irqfd);
	TEST_ASSERT(write(efd, &one, 8) == 8, "eventfd write");
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev.n, 4);
	test_dev_expect(&dev, 3, 1, 1, true, 0x41);

	/* Asleep in HLT inside KVM: an MSI from elsewhere wakes it. */
	TEST_ASSERT(pthread_create(&t, NULL, msi_later, &vm) == 0, "pthread_create");
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	pthread_join(t, NULL);
	TEST_ASSERT_EQ(dev.n, 5);
	test_dev_expect(&dev, 4, 1, 1, true, 0x40);

	irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
	kvm_ioctl(cpu_kvm_vm_fd(&vm), KVM_IRQFD, &irqfd);
	close(efd);
	vm_destroy(&vm);
	printf("PASS: MSI, IOAPIC line, irqfd and wakeup from HLT deliver to the guest's IDT\n");
	return 0;
}
