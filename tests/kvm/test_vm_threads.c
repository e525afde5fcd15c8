/*
 * The KVM backend under the real vCPU threads of vm.c: vm_start(), a device
 * that calls vm_request_stop(), vm_wait(). vCPU 0 runs a guest that spins
 * after asking to stop; vCPU 1 was never started by the guest and waits for
 * an INIT/SIPI inside KVM. Both must be kicked out for vm_wait() to return,
 * and pause/resume must park and restart them.
 */
#include "kvm/lib/kvm_util.h"

#define PORT 0x520

__asm__(".pushsection .text\n"
	".globl guest_thr_start, guest_thr_end\n"
	"guest_thr_start:\n"
	"	xor %eax, %eax\n"
	"1:	inc %rax\n"
	"	cmp $200000, %rax\n" /* about 0.1 s here: pause/resume happens meanwhile */
	"	jne 1b\n"
	"	mov $0x520, %dx\n"
	"	out %al, %dx\n"
	"2:	jmp 2b\n"
	"guest_thr_end:\n"
	".popsection\n");
extern const char guest_thr_start[], guest_thr_end[];

struct stopper {
	struct vm *vm;
	int writes;
};

static void stop_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	memset(data, 0xff, size);
}

static void stop_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct stopper *s = opaque;

	__atomic_fetch_add(&s->writes, 1, __ATOMIC_SEQ_CST);
	vm_request_stop(s->vm, VM_STOP_POWEROFF);
}

static const struct bus_ops stop_ops = {.read = stop_read, .write = stop_write};

int main(void)
{
	struct stopper s;
	struct vm vm;
	double t0;

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 2);
	s = (struct stopper){.vm = &vm};
	TEST_ASSERT_EQ(bus_register(&vm.pio, PORT, 1, &stop_ops, &s, "stop"), 0);
	test_guest_load(&vm, guest_thr_start, guest_thr_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);

	t0 = test_now();
	TEST_ASSERT_EQ(vm_start(&vm), 0);
	TEST_ASSERT_EQ(vm_pause(&vm), 0);
	TEST_ASSERT_EQ(vm.vcpus[0].state, VCPU_PAUSED);
	TEST_ASSERT_EQ(vm.vcpus[1].state, VCPU_PAUSED);
	vm_resume(&vm);
	TEST_ASSERT_EQ(vm_wait(&vm), VM_STOP_POWEROFF);
	TEST_ASSERT_EQ(s.writes, 1);
	TEST_ASSERT(test_now() - t0 < 30, "stopping took %.1f s", test_now() - t0);
	TEST_ASSERT_EQ(vm.vcpus[0].state, VCPU_STOPPED);
	TEST_ASSERT_EQ(vm.vcpus[1].state, VCPU_STOPPED);
	vm_destroy(&vm);
	printf("PASS: vm_start/pause/resume/request_stop/wait with KVM vCPU threads\n");
	return 0;
}
