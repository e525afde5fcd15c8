/*
 * Zero-page sweep and release of guest ranges; the protocol that keeps
 * concurrent writes safe is described in docs/memory.md.
 *
 * The sweep walks RAM in regions (offsets into the one host mapping, so the
 * low/high split does not matter). Per region: mincore() finds the resident
 * pages (reading a hole would allocate it); their dirty bits are taken out
 * of the bitmap; the backend is synced so every later write sets a bit
 * again; the pages are scanned; then, with the vCPUs parked for at most
 * RECLAIM_PAUSE_BUDGET_NS at a time, candidates that are still clean are
 * claimed against pins and punched out. The taken dirty bits are handed
 * back at the end so other consumers of the bitmap see every write.
 */
#include "vmm/reclaim.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "util/log.h"
#include "vmm/vm.h"

#define REGION_PAGES 16384ull /* 64 MiB: bounds the time dirty bits stay taken */
#define HUGE_PAGES 512ull     /* 2 MiB */
#define HUGE_WORDS (HUGE_PAGES / 64)
#define RECLAIM_PAUSE_BUDGET_NS 1000000ull

struct sweep {
	struct vm *vm;
	struct guest_mem *gm;
	struct reclaim_stats *st;
	uint64_t first;	     /* page index of the region's first page, a multiple of 512 */
	uint64_t n;	     /* pages in the region */
	unsigned char *vec;  /* mincore() result, one byte per page */
	uint64_t *resident;  /* bit per page of the region */
	uint64_t *taken;     /* dirty bits taken out of gm->dirty, handed back at the end */
	uint64_t *candidate; /* resident and zero when scanned */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#ifdef __SSE2__
/*
 * Two cache lines per step, eight 16-byte loads ORed together and one test:
 * a zero page is read at memory speed (~10% faster than 8-byte loads here),
 * a data page exits within its first 128 bytes. Strictly in order: a look
 * at the last line first would defeat the prefetcher.
 */
int reclaim_page_is_zero(const void *p)
{
	const __m128i *q = p;

	for (unsigned i = 0; i < GM_PAGE_SIZE / 16; i += 8) {
		__m128i a =
		    _mm_or_si128(_mm_or_si128(q[i], q[i + 1]), _mm_or_si128(q[i + 2], q[i + 3]));
		__m128i b = _mm_or_si128(_mm_or_si128(q[i + 4], q[i + 5]),
					 _mm_or_si128(q[i + 6], q[i + 7]));

		if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(a, b), _mm_setzero_si128())) !=
		    0xffff)
			return 0;
	}
	return 1;
}
#else
/* One cache line per step, eight 8-byte loads ORed together, strictly in order. */
int reclaim_page_is_zero(const void *p)
{
	const uint64_t *q = p;

	for (unsigned i = 0; i < 512; i += 8) {
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] |
		    q[i + 7])
			return 0;
	}
	return 1;
}
#endif

static int sync_dirty(struct vm *vm)
{
	return vm->cpu && vm->cpu->sync_dirty ? vm->cpu->sync_dirty(vm) : 0;
}

/* Give [off, off+len) back to the host; it reads as zero afterwards. */
static int punch(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	int err = gm_discard(gm, off, len);

	if (err)
		pr_warn_once("reclaim: cannot release guest memory (%s backing): %s",
			     gm_backing_name(gm->backing), strerror(-err));
	return err;
}

/* True when no started vCPU is inside the guest; caller holds vm->lock. */
static bool vcpus_parked_locked(struct vm *vm)
{
	for (int i = 0; i < vm->ncpus_started; i++) {
		enum vcpu_run_state s = vm->vcpus[i].state;

		if (s != VCPU_PAUSED && s != VCPU_STOPPED)
			return false;
	}
	return true;
}

/*
 * Park the vCPUs. Pauses nest, so a user's pause before or during ours keeps
 * the VM parked across our resume and ours keeps it parked across theirs.
 * *ours tells whether reclaim_resume() must resume: a VM that is stopping
 * is only waited for.
 */
static int reclaim_pause(struct vm *vm, bool *ours)
{
	int err = vm_pause(vm);

	*ours = err == 0;
	if (err == 0)
		return 0;
	if (err != -ESRCH)
		return err;
	pthread_mutex_lock(&vm->lock);
	while (!vcpus_parked_locked(vm))
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static void reclaim_resume(struct vm *vm, bool ours)
{
	if (ours)
		vm_resume(vm);
}

static bool test_bit(const uint64_t *map, uint64_t i)
{
	return (map[i / 64] >> (i % 64)) & 1;
}

static bool page_dirty(const struct guest_mem *gm, uint64_t page)
{
	return (__atomic_load_n(&gm->dirty[page / 64], __ATOMIC_SEQ_CST) >> (page % 64)) & 1;
}

/* Phase 1: which pages of the region are resident. Returns how many. */
static uint64_t sweep_residency(struct sweep *s)
{
	uint64_t words = (s->n + 63) / 64, count = 0;

	memset(s->resident, 0, words * sizeof(uint64_t));
	if (mincore(s->gm->hva + (s->first << GM_PAGE_SHIFT), s->n << GM_PAGE_SHIFT, s->vec)) {
		pr_warn_once("reclaim: mincore failed: %s", strerror(errno));
		return 0;
	}
	for (uint64_t i = 0; i < s->n; i++) {
		if (s->vec[i] & 1) {
			s->resident[i / 64] |= 1ull << (i % 64);
			count++;
		}
	}
	return count;
}

/* Phase 2: take the resident pages' dirty bits; later writes set them again. */
static int sweep_take_dirty(struct sweep *s)
{
	uint64_t words = (s->n + 63) / 64;
	int err = sync_dirty(s->vm);

	for (uint64_t w = 0; w < words && !err; w++)
		s->taken[w] = __atomic_fetch_and(&s->gm->dirty[s->first / 64 + w], ~s->resident[w],
						 __ATOMIC_SEQ_CST) &
			      s->resident[w];
	/* The emulator flushes its write TLB here: its next write to a page sets the bit. */
	return err ? err : sync_dirty(s->vm);
}

/* Phase 3: read the resident pages, note the zero ones. */
static void sweep_scan(struct sweep *s)
{
	const uint8_t *base = s->gm->hva + (s->first << GM_PAGE_SHIFT);

	memset(s->candidate, 0, (s->n + 63) / 64 * sizeof(uint64_t));
	for (uint64_t i = 0; i < s->n; i++) {
		if (!test_bit(s->resident, i))
			continue;
		s->st->scanned += GM_PAGE_SIZE;
		if (reclaim_page_is_zero(base + (i << GM_PAGE_SHIFT)))
			s->candidate[i / 64] |= 1ull << (i % 64);
	}
}

static bool chunk_has_candidates(const struct sweep *s, uint64_t c)
{
	for (uint64_t w = c / 64; w < (c + HUGE_PAGES) / 64 && w < (s->n + 63) / 64; w++) {
		if (s->candidate[w])
			return true;
	}
	return false;
}

/* Punch the runs of set bits in ok[] (bit i = page c + i); returns pages released. */
static uint64_t punch_runs(struct sweep *s, uint64_t c, const uint64_t *ok, uint64_t count)
{
	uint64_t released = 0;

	for (uint64_t i = 0; i < count;) {
		uint64_t j = i;

		if (!test_bit(ok, i)) {
			i++;
			continue;
		}
		while (j < count && test_bit(ok, j))
			j++;
		if (punch(s->gm, (s->first + c + i) << GM_PAGE_SHIFT, (j - i) << GM_PAGE_SHIFT) ==
		    0)
			released += j - i;
		i = j;
	}
	return released;
}

/*
 * Final check and release of the candidates of one 2 MiB chunk (region page
 * c); the vCPUs are parked and the backend's dirty log was just synced.
 */
static void sweep_release_chunk(struct sweep *s, uint64_t c)
{
	uint64_t count = s->n - c < HUGE_PAGES ? s->n - c : HUGE_PAGES;
	uint64_t claimed[HUGE_WORDS] = {0}, ok[HUGE_WORDS] = {0};
	uint64_t nok = 0, released;

	for (uint64_t i = 0; i < count; i++) {
		uint64_t page = s->first + c + i;

		if (!test_bit(s->candidate, c + i))
			continue;
		if (!gm_claim_page(s->gm, page)) {
			s->st->kept_pinned += GM_PAGE_SIZE;
			continue;
		}
		claimed[i / 64] |= 1ull << (i % 64);
	}
	/* Claims before dirty checks; gm_ptr_w() marks dirty before it looks for a claim. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	for (uint64_t i = 0; i < count; i++) {
		if (!test_bit(claimed, i))
			continue;
		if (page_dirty(s->gm, s->first + c + i)) {
			s->st->kept_dirty += GM_PAGE_SIZE;
			continue;
		}
		ok[i / 64] |= 1ull << (i % 64);
		nok++;
	}
	released = punch_runs(s, c, ok, count);
	if (released == HUGE_PAGES)
		s->st->released_2m += HUGE_PAGES << GM_PAGE_SHIFT;
	else
		s->st->released_4k += released << GM_PAGE_SHIFT;
	__atomic_fetch_add(&s->gm->released_sweep, released << GM_PAGE_SHIFT, __ATOMIC_RELAXED);
	for (uint64_t i = 0; i < count; i++) {
		if (test_bit(claimed, i))
			gm_unclaim_page(s->gm, s->first + c + i);
	}
}

/* Phase 4: release candidates in short pauses, each bounded by the budget. */
static int sweep_release(struct sweep *s)
{
	uint64_t c = 0;

	for (;;) {
		uint64_t t0, dt;
		bool ours;
		int err;

		while (c < s->n && !chunk_has_candidates(s, c))
			c += HUGE_PAGES;
		if (c >= s->n)
			return 0;
		t0 = now_ns();
		err = reclaim_pause(s->vm, &ours);
		if (err)
			return err;
		/* Writes up to the pause are now in the dirty bitmap. */
		err = sync_dirty(s->vm);
		/* At least one chunk per pause, however long parking took: progress is certain. */
		do {
			if (err)
				break;
			if (chunk_has_candidates(s, c))
				sweep_release_chunk(s, c);
			c += HUGE_PAGES;
		} while (c < s->n && now_ns() - t0 < RECLAIM_PAUSE_BUDGET_NS);
		reclaim_resume(s->vm, ours);
		dt = now_ns() - t0;
		s->st->pauses++;
		s->st->pause_ns_total += dt;
		if (dt > s->st->pause_ns_max)
			s->st->pause_ns_max = dt;
		if (err)
			return err;
	}
}

static int sweep_region(struct sweep *s)
{
	uint64_t resident = sweep_residency(s);
	int err;

	s->st->nonresident += (s->n - resident) << GM_PAGE_SHIFT;
	if (!resident)
		return 0;
	pthread_mutex_lock(&s->gm->dirty_lock);
	err = sweep_take_dirty(s);
	if (!err) {
		sweep_scan(s);
		err = sweep_release(s);
	}
	/* Hand the taken bits back: a released page's consumers may still owe it a copy. */
	for (uint64_t w = 0; w < (s->n + 63) / 64; w++)
		__atomic_fetch_or(&s->gm->dirty[s->first / 64 + w], s->taken[w], __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&s->gm->dirty_lock);
	return err;
}

int reclaim_sweep(struct vm *vm, struct reclaim_stats *out)
{
	struct reclaim_stats st = {0};
	struct sweep s = {.vm = vm, .gm = &vm->mem, .st = &st};
	uint64_t words = REGION_PAGES / 64, t0 = now_ns();
	int err = -ENOMEM;

	s.vec = malloc(REGION_PAGES);
	s.resident = calloc(words, sizeof(uint64_t));
	s.taken = calloc(words, sizeof(uint64_t));
	s.candidate = calloc(words, sizeof(uint64_t));
	if (!s.vec || !s.resident || !s.taken || !s.candidate)
		goto out;
	err = 0;
	for (s.first = 0; s.first < vm->mem.npages && !err; s.first += REGION_PAGES) {
		s.n = vm->mem.npages - s.first < REGION_PAGES ? vm->mem.npages - s.first
							      : REGION_PAGES;
		memset(s.taken, 0, words * sizeof(uint64_t));
		err = sweep_region(&s);
	}
	st.ns = now_ns() - t0;
	if (out)
		*out = st;
out:
	free(s.vec);
	free(s.resident);
	free(s.taken);
	free(s.candidate);
	return err;
}

/* Claim every page of [first, first+n); -EBUSY (and nothing claimed) if one is pinned. */
static int claim_range(struct guest_mem *gm, uint64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		while (!gm_claim_page(gm, first + i)) {
			if (gm_page_pinned(gm, first + i)) {
				while (i--)
					gm_unclaim_page(gm, first + i);
				return -EBUSY;
			}
			/* Claimed by a sweep for one hole punch: wait it out. */
			nanosleep(&(struct timespec){.tv_nsec = 20000}, NULL);
		}
	}
	return 0;
}

int reclaim_release_range_src(struct vm *vm, uint64_t gpa, uint64_t len, enum reclaim_source src)
{
	struct guest_mem *gm = &vm->mem;
	uint64_t first, n;
	uint8_t *p;
	int err;

	if (len == 0 || (gpa | len) & (GM_PAGE_SIZE - 1))
		return -EINVAL;
	p = gm_ptr(gm, gpa, len);
	if (!p)
		return -EFAULT;
	first = (uint64_t)(p - gm->hva) >> GM_PAGE_SHIFT;
	n = len >> GM_PAGE_SHIFT;
	err = claim_range(gm, first, n);
	if (err)
		return err;
	err = punch(gm, first << GM_PAGE_SHIFT, len);
	if (!err) {
		/* The content changed (to zero): snapshots and migration must copy it again. */
		gm_mark_dirty(gm, first << GM_PAGE_SHIFT, len);
		__atomic_fetch_add(src == RECLAIM_FREE_REPORT ? &gm->released_free_report
							      : &gm->released_balloon,
				   len, __ATOMIC_RELAXED);
	}
	for (uint64_t i = 0; i < n; i++)
		gm_unclaim_page(gm, first + i);
	return err;
}

int reclaim_release_range(struct vm *vm, uint64_t gpa, uint64_t len)
{
	return reclaim_release_range_src(vm, gpa, len, RECLAIM_BALLOON);
}
