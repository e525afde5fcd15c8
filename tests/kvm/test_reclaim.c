/*
 * Zero-page sweeps under a running KVM guest lose no byte.
 *
 * The guest (one vCPU thread, through vm_start()) runs rounds r = 1, 2, ...
 * over 2048 pages at DATA and 512 pages (one 2 MiB chunk) at HUGE:
 *  - "data" pages (p % 4 != 3) get f(p, r) at qword r % 512: never zero again;
 *  - "flip" pages (p % 4 == 3) and every HUGE page get f(p, r) at qword 0 in
 *    odd rounds and 0 in even rounds: entirely zero half of the time, so the
 *    sweep releases them and the next round writes into a fresh page.
 * Before each write the guest checks that its previous write to that qword
 * is still there, and stops at once if not. The host sweeps in a loop meanwhile, then asks the
 * guest to stop after an even round (it writes the number of rounds and writes the stop port).
 * Every qword of the data area must be what the guest wrote last; a final sweep must release
 * exactly the flip pages and the HUGE chunk (whole), nothing else.
 */
#include "kvm/lib/kvm_util.h"

#include <sys/mman.h>
#include <unistd.h>

#include "vmm/reclaim.h"

/* [0] stop request from the host, [8] rounds done, [16] lost writes seen, [24] where */
#define CTRL 0x100000ull
#define DATA 0x400000ull
#define NDATA 2048ull
#define HUGE 0xC00000ull
#define NHUGE 512ull
#define SWEEP_SECONDS 3.0

__asm__(
    ".pushsection .text\n"
    ".globl guest_rcl_start, guest_rcl_end\n"
    "guest_rcl_start:\n"
    "	mov $1, %r8\n" /* r */
    "	mov $1, %r9\n"
    "	shl $32, %r9\n" /* f(p, r) - f(p, r - 1) */
    "0:	xor %ecx, %ecx\n"
    "1:	mov %rcx, %rax\n" /* DATA page p */
    "	shl $12, %rax\n"
    "	add $0x400000, %rax\n"
    "	mov %r8, %rdx\n" /* f(p, r) = r << 32 | 2p + 1 */
    "	shl $32, %rdx\n"
    "	lea 1(%rcx,%rcx), %rbx\n"
    "	or %rbx, %rdx\n"
    "	mov %rdx, %r10\n"
    "	sub %r9, %r10\n" /* f(p, r - 1) */
    "	mov %ecx, %ebx\n"
    "	and $3, %ebx\n"
    "	cmp $3, %ebx\n"
    "	je 2f\n"
    "	cmp $1, %r8\n" /* data page: last round's qword must be there */
    "	je 11f\n"
    "	lea -1(%r8), %rbx\n"
    "	and $511, %rbx\n"
    "	cmp %r10, (%rax,%rbx,8)\n"
    "	jne 20f\n"
    "11:	mov %r8, %rbx\n"
    "	and $511, %rbx\n"
    "	mov %rdx, (%rax,%rbx,8)\n"
    "	jmp 4f\n"
    "2:	call 30f\n" /* flip page */
    "4:	inc %ecx\n"
    "	cmp $2048, %ecx\n"
    "	jne 1b\n"
    "	xor %ecx, %ecx\n"
    "5:	mov %rcx, %rax\n" /* HUGE page p */
    "	shl $12, %rax\n"
    "	add $0xC00000, %rax\n"
    "	mov %r8, %rdx\n"
    "	shl $32, %rdx\n"
    "	lea 1(%rcx,%rcx), %rbx\n"
    "	or %rbx, %rdx\n"
    "	mov %rdx, %r10\n"
    "	sub %r9, %r10\n"
    "	call 30f\n"
    "	inc %ecx\n"
    "	cmp $512, %ecx\n"
    "	jne 5b\n"
    "	mov $0x100000, %esi\n"
    "	mov %r8, 8(%rsi)\n"
    "	test $1, %r8\n" /* stop only after an even round */
    "	jnz 7f\n"
    "	cmpq $0, (%rsi)\n"
    "	jne 8f\n"
    "7:	inc %r8\n"
    "	jmp 0b\n"
    "8:	mov $0x520, %dx\n" /* the stop port: the VM powers off */
    "	out %al, %dx\n"
    "9:	jmp 9b\n"
    "20:	mov $0x100000, %esi\n" /* a lost write: count it, note where, stop */
    "	incq 16(%rsi)\n"
    "	mov %rax, 24(%rsi)\n"
    "	jmp 8b\n"
    /* Flip page at rax: odd r, expect 0 and write f(p, r); even r, expect f(p, r - 1), write 0. */
    "30:	test $1, %r8\n"
    "	jnz 31f\n"
    "	cmp %r10, (%rax)\n"
    "	jne 32f\n"
    "	movq $0, (%rax)\n"
    "	ret\n"
    "31:	cmpq $0, (%rax)\n"
    "	jne 32f\n"
    "	mov %rdx, (%rax)\n"
    "	ret\n"
    "32:	add $8, %rsp\n"
    "	jmp 20b\n"
    "guest_rcl_end:\n"
    ".popsection\n");
extern const char guest_rcl_start[], guest_rcl_end[];

static uint64_t f(uint64_t p, uint64_t r)
{
	return r << 32 | (2 * p + 1);
}

static uint64_t expect_data(uint64_t p, uint64_t k, uint64_t rounds)
{
	uint64_t r;

	if (k > rounds)
		return 0;
	/* The last round r <= rounds with r % 512 == k. */
	r = k + (rounds - k) / 512 * 512;
	return r == 0 ? 0 : f(p, r);
}

static uint64_t resident_pages(struct vm *vm, uint64_t gpa, uint64_t n)
{
	unsigned char vec[NDATA];
	uint64_t count = 0;

	TEST_ASSERT(n <= NDATA, "too many pages");
	TEST_ASSERT(mincore(gm_ptr(&vm->mem, gpa, n * GM_PAGE_SIZE), n * GM_PAGE_SIZE, vec) == 0,
		    "mincore");
	for (uint64_t i = 0; i < n; i++)
		count += vec[i] & 1;
	return count;
}

static void verify(struct vm *vm, uint64_t rounds)
{
	for (uint64_t p = 0; p < NDATA; p++) {
		const uint64_t *q = gm_ptr(&vm->mem, DATA + p * GM_PAGE_SIZE, GM_PAGE_SIZE);

		for (uint64_t k = 0; k < 512; k++) {
			uint64_t want = p % 4 == 3 ? (k == 0 && rounds % 2 ? f(p, rounds) : 0)
						   : expect_data(p, k, rounds);

			TEST_ASSERT(q[k] == want, "page %llu qword %llu: %#llx, expected %#llx",
				    (unsigned long long)p, (unsigned long long)k,
				    (unsigned long long)q[k], (unsigned long long)want);
		}
	}
	for (uint64_t p = 0; p < NHUGE; p++) {
		const uint64_t *q = gm_ptr(&vm->mem, HUGE + p * GM_PAGE_SIZE, GM_PAGE_SIZE);

		for (uint64_t k = 0; k < 512; k++)
			TEST_ASSERT(q[k] == 0, "huge page %llu qword %llu: %#llx",
				    (unsigned long long)p, (unsigned long long)k,
				    (unsigned long long)q[k]);
	}
}

#define STOP_PORT 0x520

static void stop_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	memset(data, 0xff, size);
}

static void stop_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	vm_request_stop(opaque, VM_STOP_POWEROFF);
}

static const struct bus_ops stop_ops = {.read = stop_read, .write = stop_write};

static void sweep_once(struct vm *vm, struct reclaim_stats *sum, int *sweeps)
{
	struct reclaim_stats st;

	TEST_ASSERT_EQ(reclaim_sweep(vm, &st), 0);
	(*sweeps)++;
	sum->released_4k += st.released_4k;
	sum->released_2m += st.released_2m;
	sum->kept_dirty += st.kept_dirty;
	sum->kept_pinned += st.kept_pinned;
	sum->pauses += st.pauses;
	sum->pause_ns_total += st.pause_ns_total;
	if (st.pause_ns_max > sum->pause_ns_max)
		sum->pause_ns_max = st.pause_ns_max;
}

static bool vm_stopped(struct vm *vm)
{
	bool stopped;

	pthread_mutex_lock(&vm->lock);
	stopped = vm->stop_reason != VM_RUNNING;
	pthread_mutex_unlock(&vm->lock);
	return stopped;
}

/* The guest stops within two rounds of the request; sweeps go on until then. */
static void sweep_until_halt(struct vm *vm, struct reclaim_stats *sum, int *sweeps)
{
	double t0 = test_now();
	uint64_t r0, r;

	TEST_ASSERT_EQ(gm_read(&vm->mem, CTRL + 8, &r0, 8), 0);
	while (!vm_stopped(vm)) {
		sweep_once(vm, sum, sweeps);
		TEST_ASSERT_EQ(gm_read(&vm->mem, CTRL + 8, &r, 8), 0);
		TEST_ASSERT(test_now() - t0 < 120,
			    "guest did not stop: rounds %llu -> %llu in 120 s",
			    (unsigned long long)r0, (unsigned long long)r);
	}
}

int main(void)
{
	struct reclaim_stats st, sum = {0};
	uint64_t lost[2], rounds, stop = 1, before, after, rounds_at_start;
	int sweeps = 0;
	struct vm vm;
	double t0, sweep_s = SWEEP_SECONDS;

	kvm_require();
	if (getenv("RECLAIM_SWEEP_SECONDS"))
		sweep_s = atof(getenv("RECLAIM_SWEEP_SECONDS"));
	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 1);
	TEST_ASSERT_EQ(bus_register(&vm.pio, STOP_PORT, 1, &stop_ops, &vm, "stop"), 0);
	test_guest_load(&vm, guest_rcl_start, guest_rcl_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);
	TEST_ASSERT_EQ(vm_start(&vm), 0);

	t0 = test_now();
	TEST_ASSERT_EQ(gm_read(&vm.mem, CTRL + 8, &rounds_at_start, 8), 0);
	while (test_now() - t0 < sweep_s)
		sweep_once(&vm, &sum, &sweeps);
	TEST_ASSERT_EQ(gm_write(&vm.mem, CTRL, &stop, 8), 0);
	sweep_until_halt(&vm, &sum, &sweeps);
	TEST_ASSERT_EQ(vm_wait(&vm), VM_STOP_POWEROFF);
	TEST_ASSERT_EQ(gm_read(&vm.mem, CTRL + 8, &rounds, 8), 0);
	printf("%d sweeps during %llu guest rounds: released %llu KiB as 4K, %llu KiB as 2M, "
	       "kept %llu KiB re-written; %llu pauses, longest %.3f ms, mean %.3f ms\n",
	       sweeps, (unsigned long long)(rounds - rounds_at_start),
	       (unsigned long long)(sum.released_4k >> 10),
	       (unsigned long long)(sum.released_2m >> 10),
	       (unsigned long long)(sum.kept_dirty >> 10), (unsigned long long)sum.pauses,
	       (double)sum.pause_ns_max / 1e6,
	       sum.pauses ? (double)sum.pause_ns_total / 1e6 / (double)sum.pauses : 0.0);
	TEST_ASSERT_EQ(gm_read(&vm.mem, CTRL + 16, lost, sizeof(lost)), 0);
	TEST_ASSERT(lost[0] == 0, "the guest lost a write to %#llx", (unsigned long long)lost[1]);
	TEST_ASSERT(rounds >= 2 && rounds % 2 == 0, "guest stopped after round %llu",
		    (unsigned long long)rounds);
	TEST_ASSERT_EQ(sum.kept_pinned, 0);

	/*
	 * The guest is done: flip pages and the HUGE chunk are zero, the rest is
	 * data. The sweeps above released most of them already, some as single
	 * pages; fault HUGE back in (reads allocate) so it goes whole this time.
	 */
	for (uint64_t p = 0; p < NHUGE; p++)
		TEST_ASSERT_EQ(*(volatile uint8_t *)gm_ptr(&vm.mem, HUGE + p * GM_PAGE_SIZE, 1), 0);
	before = resident_pages(&vm, DATA, NDATA) + resident_pages(&vm, HUGE, NHUGE);
	TEST_ASSERT(before >= NDATA / 4 * 3 + NHUGE, "only %llu pages resident",
		    (unsigned long long)before);
	TEST_ASSERT_EQ(reclaim_sweep(&vm, &st), 0);
	after = resident_pages(&vm, DATA, NDATA) + resident_pages(&vm, HUGE, NHUGE);
	printf("final sweep: resident data-area pages %llu -> %llu; %llu KiB as 4K, %llu KiB as "
	       "2M\n",
	       (unsigned long long)before, (unsigned long long)after,
	       (unsigned long long)(st.released_4k >> 10),
	       (unsigned long long)(st.released_2m >> 10));
	TEST_ASSERT_EQ(resident_pages(&vm, DATA, NDATA), NDATA / 4 * 3);
	TEST_ASSERT_EQ(resident_pages(&vm, HUGE, NHUGE), 0);
	TEST_ASSERT_EQ(st.released_2m, NHUGE * GM_PAGE_SIZE);
	TEST_ASSERT_EQ(before - after, st.released_4k / GM_PAGE_SIZE + NHUGE);
	TEST_ASSERT(sum.released_4k + sum.released_2m > 0, "nothing released while the guest ran");

	verify(&vm, rounds);
	vm_destroy(&vm);
	printf("PASS: %d sweeps under a running guest lost no byte; %llu guest rounds\n", sweeps,
	       (unsigned long long)rounds);
	return 0;
}
