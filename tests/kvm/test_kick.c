/*
 * kick() makes run() return VCPU_EXIT_KICK:
 *  - from another thread while the guest spins in a loop;
 *  - before run() is even called (the kick is not lost);
 *  - from another thread while the vCPU sleeps in the kernel on HLT with
 *    interrupts off (in-kernel irqchip), and the state then says halted;
 *  - from a device handler on the vCPU's own thread, during an I/O exit.
 * After each kick the guest continues where it was.
 */
#include <pthread.h>
#include <time.h>

#include "kvm/lib/kvm_util.h"

#define PORT 0x510

__asm__(".pushsection .text\n"
	".globl guest_kick_start, guest_kick_spin, guest_kick_hlt, guest_kick_end\n"
	"guest_kick_start:\n"
	"	xor %eax, %eax\n"
	"guest_kick_spin:\n"
	"	inc %rax\n"
	"	cmp $0x7fffffff, %rax\n" /* never reached: spins until kicked */
	"	jne guest_kick_spin\n"
	"	mov $0x510, %dx\n"
	"	out %al, %dx\n"
	"	cli\n"
	"	hlt\n"
	"guest_kick_hlt:\n"
	"	jmp guest_kick_hlt\n"
	"guest_kick_end:\n"
	".popsection\n");
extern const char guest_kick_start[], guest_kick_spin[], guest_kick_hlt[], guest_kick_end[];

struct kicker {
	struct vcpu *vcpu;
	unsigned delay_ms;
};

static void *kicker_thread(void *arg)
{
	struct kicker *k = arg;
	struct timespec ts = {.tv_sec = k->delay_ms / 1000,
			      .tv_nsec = (long)(k->delay_ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
	k->vcpu->vm->cpu->kick(k->vcpu);
	return NULL;
}

/* Run with a kick from another thread after delay_ms; returns the seconds run() took. */
static double run_kicked(struct vcpu *vcpu, unsigned delay_ms)
{
	struct kicker k = {vcpu, delay_ms};
	pthread_t t;
	double t0 = test_now();

	TEST_ASSERT(pthread_create(&t, NULL, kicker_thread, &k) == 0, "pthread_create");
	vcpu_run_expect(vcpu, VCPU_EXIT_KICK);
	pthread_join(t, NULL);
	return test_now() - t0;
}

static uint64_t code(const char *label)
{
	return GUEST_CODE_ADDR + (uint64_t)(label - guest_kick_start);
}

int main(void)
{
	struct vm vm;
	struct vcpu *v;
	struct test_dev dev;
	struct cpu_state st;
	double secs;

	kvm_require();
	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 1);
	v = &vm.vcpus[0];
	test_dev_attach(&dev, &vm, &vm.pio, PORT, 1);
	test_guest_load(&vm, guest_kick_start, guest_kick_end);
	test_vcpu_enter_long_mode(v, 0);

	/* 1. Spinning guest, kick from another thread. */
	secs = run_kicked(v, 200);
	TEST_ASSERT(secs >= 0.19 && secs < 10, "run() returned after %.3f s", secs);
	vcpu_get_state(v, &st);
	TEST_ASSERT(st.rip >= code(guest_kick_spin) && st.rip < code(guest_kick_hlt),
		    "rip %#llx is not in the loop", (unsigned long long)st.rip);
	TEST_ASSERT(st.gpr[0] > 0, "the guest did not run");

	/* 2. Kick first, run after: returns at once, the guest did not move far. */
	v->vm->cpu->kick(v);
	secs = test_now();
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	secs = test_now() - secs;
	TEST_ASSERT(secs < 1, "a pending kick took %.3f s", secs);

	/* 3. Leave the loop; the OUT kicks from the device handler on this thread. */
	vcpu_get_state(v, &st);
	st.gpr[0] = 0x7ffffff0;
	vcpu_set_state(v, &st);
	dev.kick_offset = 0;
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev.n, 1);
	test_dev_expect(&dev, 0, 0, 1, true, 0xff);
	vcpu_get_state(v, &st);
	TEST_ASSERT_EQ(st.rip, code(guest_kick_hlt) - 2); /* the OUT completed: at cli */

	/* 4. cli; hlt with the in-kernel irqchip sleeps in KVM; a kick still ends run(). */
	secs = run_kicked(v, 200);
	TEST_ASSERT(secs >= 0.19 && secs < 10, "run() returned after %.3f s", secs);
	vcpu_get_state(v, &st);
	TEST_ASSERT_EQ(st.rip, code(guest_kick_hlt));
	TEST_ASSERT(st.halted, "the vCPU should be halted");
	TEST_ASSERT_EQ(dev.n, 1);

	vm_destroy(&vm);
	printf("PASS: kicks while spinning, before run, from a handler, and while halted\n");
	return 0;
}
