/*
 * Zero-page sweep throughput (built and run by bench/sweep): a VM of
 * BENCH_GIB GiB (default 4) whose every page is resident, either mostly zero
 * (one page in 100 holds data) or mostly data (one page in 100 is zero).
 * Prints the scan rate of reclaim_page_is_zero() alone and of a whole
 * reclaim_sweep() (mincore, dirty bits, scan, pauses, hole punches).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "vmm/reclaim.h"
#include "vmm/vm.h"

static int nop_vm(struct vm *vm)
{
	return 0;
}

static void nop_vm_destroy(struct vm *vm)
{
}

static int nop_vcpu(struct vcpu *v)
{
	return 0;
}

static void nop_vcpu_destroy(struct vcpu *v)
{
}

static enum vcpu_exit nop_run(struct vcpu *v)
{
	return VCPU_EXIT_HLT;
}

static void nop_kick(struct vcpu *v)
{
}

static const struct cpu_backend nop_backend = {
    .name = "none",
    .vm_create = nop_vm,
    .vm_destroy = nop_vm_destroy,
    .vcpu_create = nop_vcpu,
    .vcpu_destroy = nop_vcpu_destroy,
    .run = nop_run,
    .kick = nop_kick,
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Make every page resident; page i holds data when (i % 100 == 0) == data_rare. */
static void populate(struct guest_mem *gm, int mostly_zero)
{
	for (uint64_t i = 0; i < gm->npages; i++) {
		uint8_t *p = gm->hva + (i << GM_PAGE_SHIFT);
		int data = (i % 100 == 0) == mostly_zero;

		if (data)
			memset(p, (int)(i | 1), GM_PAGE_SIZE);
		else
			p[0] = 0; /* a write fault allocates the page */
	}
}

static void run(uint64_t size, enum gm_backing backing, int mostly_zero)
{
	const char *name = mostly_zero ? "mostly-zero" : "mostly-data";
	struct vm_config cfg = {
	    .mem_size = size, .mem_backing = backing, .ncpus = 1, .cpu = &nop_backend};
	uint64_t huge = 0;
	struct reclaim_stats st;
	struct vm vm;
	uint64_t zero = 0;
	double t0, scan_s;

	if (vm_create(&vm, &cfg)) {
		fprintf(stderr, "cannot create a %llu MiB VM\n", (unsigned long long)(size >> 20));
		exit(1);
	}
	/* BENCH_NOTHP=1: 4 KiB pages only, as on a host with THP off. */
	if (getenv("BENCH_NOTHP"))
		madvise(vm.mem.hva, size, MADV_NOHUGEPAGE);
	populate(&vm.mem, mostly_zero);
	gm_huge_bytes(&vm.mem, &huge);
	t0 = now();
	for (uint64_t i = 0; i < vm.mem.npages; i++)
		zero += (uint64_t)reclaim_page_is_zero(vm.mem.hva + (i << GM_PAGE_SHIFT));
	scan_s = now() - t0;
	if (reclaim_sweep(&vm, &st)) {
		fprintf(stderr, "sweep failed\n");
		exit(1);
	}
	printf(
	    "%-5s %3llu%% huge %-12s %5.2f GiB: scan only %6.2f GiB/s (%llu zero pages) | sweep "
	    "%6.2f GiB/s, "
	    "%.3f s, released 4K %llu MiB 2M %llu MiB, %llu pauses, max %.3f ms, total %.1f ms\n",
	    gm_backing_name(vm.mem.backing), (unsigned long long)(huge * 100 / size), name,
	    (double)size / (1 << 30), (double)size / (1 << 30) / scan_s, (unsigned long long)zero,
	    (double)st.scanned / (1 << 30) / ((double)st.ns / 1e9), (double)st.ns / 1e9,
	    (unsigned long long)(st.released_4k >> 20), (unsigned long long)(st.released_2m >> 20),
	    (unsigned long long)st.pauses, (double)st.pause_ns_max / 1e6,
	    (double)st.pause_ns_total / 1e6);
	vm_destroy(&vm);
}

/* BENCH_BACKING=memfd|anon|auto (default: both memfd and anon, alternating). */
int main(void)
{
	const char *g = getenv("BENCH_GIB"), *b = getenv("BENCH_BACKING");
	uint64_t size = (g ? strtoull(g, NULL, 0) : 4) << 30;
	enum gm_backing one = GM_BACKING_AUTO;

	if (b && gm_backing_parse(b, &one)) {
		fprintf(stderr, "BENCH_BACKING: memfd, anon or auto\n");
		return 2;
	}
	for (int mostly_zero = 1; mostly_zero >= 0; mostly_zero--) {
		if (b) {
			run(size, one, mostly_zero);
			continue;
		}
		run(size, GM_BACKING_MEMFD, mostly_zero);
		run(size, GM_BACKING_ANON, mostly_zero);
	}
	return 0;
}
