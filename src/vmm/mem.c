#include "vmm/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define HUGE_SIZE (2ull << 20)
#define THP_SYSFS "/sys/kernel/mm/transparent_hugepage/"

static const char *const backing_names[] = {
    [GM_BACKING_AUTO] = "auto",
    [GM_BACKING_MEMFD] = "memfd",
    [GM_BACKING_ANON] = "anon",
    [GM_BACKING_FILE] = "file",
};

const char *gm_backing_name(enum gm_backing backing)
{
	return (unsigned)backing < 4 ? backing_names[backing] : "?";
}

int gm_backing_parse(const char *s, enum gm_backing *out)
{
	for (enum gm_backing b = GM_BACKING_AUTO; b < GM_BACKING_FILE; b++) {
		if (!strcmp(s, backing_names[b])) {
			*out = b;
			return 0;
		}
	}
	return -EINVAL;
}

/* The selected word of a THP sysfs knob ("always [madvise] never"), or "" if absent. */
static void thp_knob(const char *name, char *out, size_t n)
{
	char path[128], line[160], *l, *r;
	FILE *f;

	out[0] = 0;
	snprintf(path, sizeof(path), THP_SYSFS "%s", name);
	f = fopen(path, "re");
	if (!f)
		return;
	if (fgets(line, sizeof(line), f) && (l = strchr(line, '[')) && (r = strchr(l, ']')) &&
	    (size_t)(r - l) <= n) {
		memcpy(out, l + 1, (size_t)(r - l - 1));
		out[r - l - 1] = 0;
	}
	fclose(f);
}

static bool word_in(const char *w, const char *const *list)
{
	for (; *list; list++) {
		if (!strcmp(w, *list))
			return true;
	}
	return false;
}

/*
 * 2 MiB THP for a madvise(MADV_HUGEPAGE)d range: the per-size knob wins
 * unless it says "inherit" (or predates per-size knobs), then the global one.
 */
bool gm_backing_thp_allowed(enum gm_backing backing)
{
	static const char *const anon_yes[] = {"always", "madvise", NULL};
	static const char *const shmem_yes[] = {"always", "within_size", "advise", "force", NULL};
	bool shmem = backing == GM_BACKING_MEMFD;
	char v[32];

	if (backing != GM_BACKING_MEMFD && backing != GM_BACKING_ANON)
		return false;
	thp_knob(shmem ? "hugepages-2048kB/shmem_enabled" : "hugepages-2048kB/enabled", v,
		 sizeof(v));
	if (!v[0] || !strcmp(v, "inherit"))
		thp_knob(shmem ? "shmem_enabled" : "enabled", v, sizeof(v));
	return word_in(v, shmem ? shmem_yes : anon_yes);
}

enum gm_backing gm_backing_auto(void)
{
	return gm_backing_thp_allowed(GM_BACKING_MEMFD) ? GM_BACKING_MEMFD : GM_BACKING_ANON;
}

/*
 * An address range of size bytes aligned to 2 MiB, reserved (PROT_NONE), so
 * guest 2 MiB pages and host huge pages line up. NULL and errno on failure.
 */
static uint8_t *reserve_aligned(uint64_t size)
{
	uint8_t *p = mmap(NULL, size + HUGE_SIZE, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint64_t head;

	if (p == MAP_FAILED)
		return NULL;
	head = (HUGE_SIZE - ((uintptr_t)p & (HUGE_SIZE - 1))) & (HUGE_SIZE - 1);
	if (head)
		munmap(p, head);
	munmap(p + head + size, HUGE_SIZE - head);
	return p + head;
}

/* Map RAM over the reservation at gm->hva. 0 or -errno. */
static int map_ram(struct guest_mem *gm)
{
	int flags = MAP_FIXED | MAP_NORESERVE;
	void *p;

	if (gm->backing == GM_BACKING_MEMFD) {
		gm->fd = memfd_create("tern-guest-ram", MFD_CLOEXEC);
		if (gm->fd < 0 || ftruncate(gm->fd, (off_t)gm->size) < 0)
			return -errno;
		p = mmap(gm->hva, gm->size, PROT_READ | PROT_WRITE, flags | MAP_SHARED, gm->fd, 0);
	} else {
		p = mmap(gm->hva, gm->size, PROT_READ | PROT_WRITE,
			 flags | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	if (p == MAP_FAILED)
		return -errno;
	/*
	 * A private mapping would be copied-on-write into a forked child; no
	 * child needs guest RAM (helpers are spawned, clones exec).
	 */
	if (gm->backing == GM_BACKING_ANON)
		madvise(gm->hva, gm->size, MADV_DONTFORK);
	/* Huge pages where the host allows; a hint, failure is harmless. */
	madvise(gm->hva, gm->size, MADV_HUGEPAGE);
	return 0;
}

int gm_init_backing(struct guest_mem *gm, uint64_t size, enum gm_backing backing)
{
	int err;

	memset(gm, 0, sizeof(*gm));
	gm->fd = -1;
	pthread_mutex_init(&gm->dirty_lock, NULL);
	if (size == 0 || size % GM_PAGE_SIZE || size > UINT64_MAX - HUGE_SIZE ||
	    backing > GM_BACKING_ANON)
		return -EINVAL;
	gm->size = size;
	gm->low_size = size < MEM_HOLE_START ? size : MEM_HOLE_START;
	gm->high_size = size - gm->low_size;
	gm->backing = backing == GM_BACKING_AUTO ? gm_backing_auto() : backing;
	gm->hva = reserve_aligned(size);
	if (!gm->hva) {
		err = -errno;
		goto fail;
	}
	err = map_ram(gm);
	if (err)
		goto fail;
	gm->npages = size >> GM_PAGE_SHIFT;
	err = -ENOMEM;
	gm->dirty = calloc((gm->npages + 63) / 64, sizeof(uint64_t));
	if (!gm->dirty)
		goto fail;
	/* 4 bytes per page, but calloc of this size maps lazily: only pinned pages cost. */
	gm->pins = calloc(gm->npages, sizeof(uint32_t));
	if (!gm->pins)
		goto fail;
	return 0;
fail:
	gm_destroy(gm);
	return err;
}

int gm_init(struct guest_mem *gm, uint64_t size)
{
	return gm_init_backing(gm, size, GM_BACKING_AUTO);
}

int gm_discard(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	switch (gm->backing) {
	case GM_BACKING_MEMFD:
		if (fallocate(gm->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
			      (off_t)len) == 0)
			return 0;
		return madvise(gm->hva + off, len, MADV_REMOVE) ? -errno : 0;
	case GM_BACKING_ANON:
		return madvise(gm->hva + off, len, MADV_DONTNEED) ? -errno : 0;
	default:
		return -EOPNOTSUPP;
	}
}

/* Sum of the huge-page fields of the smaps entries inside [lo, hi). */
static int smaps_huge(FILE *f, uintptr_t lo, uintptr_t hi, uint64_t *out)
{
	static const char *const fields[] = {
	    "AnonHugePages:", "ShmemPmdMapped:", "FilePmdMapped:", NULL};
	char line[512], perms[8];
	unsigned long start, end;
	bool inside = false;

	*out = 0;
	while (fgets(line, sizeof(line), f)) {
		char name[32];
		unsigned long long kb;

		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3) {
			inside = start >= lo && end <= hi;
			continue;
		}
		if (inside && sscanf(line, "%31s %llu kB", name, &kb) == 2 && word_in(name, fields))
			*out += (uint64_t)kb << 10;
	}
	return ferror(f) ? -EIO : 0;
}

int gm_huge_bytes(const struct guest_mem *gm, uint64_t *out)
{
	FILE *f;
	int err;

	*out = 0;
	if (!gm->hva)
		return -EINVAL;
	f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -errno;
	err = smaps_huge(f, (uintptr_t)gm->hva, (uintptr_t)gm->hva + gm->size, out);
	fclose(f);
	return err;
}

void gm_destroy(struct guest_mem *gm)
{
	if (gm->hva)
		munmap(gm->hva, gm->size);
	if (gm->fd >= 0)
		close(gm->fd);
	free(gm->dirty);
	free(gm->pins);
	pthread_mutex_destroy(&gm->dirty_lock);
	memset(gm, 0, sizeof(*gm));
	gm->fd = -1;
}

int gm_map_file_private(struct guest_mem *gm, int fd, uint64_t offset)
{
	void *p;

	if (!gm->hva || offset % GM_PAGE_SIZE)
		return -EINVAL;
	p = mmap(gm->hva, gm->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
		 fd, (off_t)offset);
	if (p == MAP_FAILED)
		return -errno;
	if (gm->fd >= 0)
		close(gm->fd);
	gm->fd = -1;
	gm->backing = GM_BACKING_FILE;
	return 0;
}

/* Offset into hva of [gpa, gpa+len), or UINT64_MAX if not wholly inside one region. */
static uint64_t gm_offset(const struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	if (gpa + len < gpa)
		return UINT64_MAX;
	if (gpa + len <= gm->low_size)
		return gpa;
	if (gpa >= MEM_HIGH_START && gpa - MEM_HIGH_START + len <= gm->high_size)
		return gm->low_size + (gpa - MEM_HIGH_START);
	return UINT64_MAX;
}

uint64_t gm_page_index(const struct guest_mem *gm, uint64_t gpa)
{
	uint64_t off = gm_offset(gm, gpa, 1);

	return off == UINT64_MAX ? off : off >> GM_PAGE_SHIFT;
}

void *gm_ptr(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint64_t off = gm_offset(gm, gpa, len);

	if (off == UINT64_MAX || (len == 0 && off >= gm->size))
		return NULL;
	return gm->hva + off;
}

void gm_mark_dirty(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (len == 0)
		return;
	first = off >> GM_PAGE_SHIFT;
	last = (off + len - 1) >> GM_PAGE_SHIFT;
	for (uint64_t p = first; p <= last; p++) {
		uint64_t bit = 1ull << (p % 64);

		if (!(__atomic_load_n(&gm->dirty[p / 64], __ATOMIC_RELAXED) & bit))
			__atomic_fetch_or(&gm->dirty[p / 64], bit, __ATOMIC_RELAXED);
		if (gm->code_pages &&
		    (__atomic_load_n(&gm->code_pages[p / 64], __ATOMIC_RELAXED) & bit))
			gm->code_write(gm->code_opaque, p);
	}
}

bool gm_test_clear_dirty(struct guest_mem *gm, uint64_t page_index)
{
	uint64_t bit = 1ull << (page_index % 64);

	return __atomic_fetch_and(&gm->dirty[page_index / 64], ~bit, __ATOMIC_RELAXED) & bit;
}

/* A claim lasts one hole punch: spin briefly, then sleep so the reclaimer gets the CPU. */
static void gm_wait_claim(const struct guest_mem *gm, uint64_t page)
{
	for (unsigned spin = 0; __atomic_load_n(&gm->pins[page], __ATOMIC_ACQUIRE) & GM_PIN_CLAIM;
	     spin++) {
		if (spin < 64)
			sched_yield();
		else
			nanosleep(&(struct timespec){.tv_nsec = 20000}, NULL);
	}
}

void *gm_ptr_w(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr(gm, gpa, len);
	uint64_t off;

	if (!p)
		return NULL;
	off = (uint64_t)(p - gm->hva);
	gm_mark_dirty(gm, off, len);
	if (gm->pins && len) {
		/* Pairs with the reclaimer's claim-then-check-dirty (gm_claim_page). */
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		for (uint64_t pg = off >> GM_PAGE_SHIFT; pg <= (off + len - 1) >> GM_PAGE_SHIFT;
		     pg++)
			gm_wait_claim(gm, pg);
	}
	return p;
}

void gm_unpin_off(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	if (!gm->pins || len == 0)
		return;
	for (uint64_t pg = off >> GM_PAGE_SHIFT; pg <= (off + len - 1) >> GM_PAGE_SHIFT; pg++)
		__atomic_fetch_sub(&gm->pins[pg], 1, __ATOMIC_RELEASE);
}

/* Callers pass a range already checked to lie in RAM. */
int gm_pin_off(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	uint64_t first = off >> GM_PAGE_SHIFT, last, pg;

	if (!gm->pins || len == 0)
		return 0;
	last = (off + len - 1) >> GM_PAGE_SHIFT;
	for (pg = first; pg <= last; pg++) {
		uint32_t old = __atomic_fetch_add(&gm->pins[pg], 1, __ATOMIC_SEQ_CST);

		if ((old & GM_PIN_MAX) == GM_PIN_MAX) {
			/* Only a hostile guest gets here (2^31 buffers on one page): refuse. */
			__atomic_fetch_sub(&gm->pins[pg], 1, __ATOMIC_RELEASE);
			if (pg > first)
				gm_unpin_off(gm, off, (pg << GM_PAGE_SHIFT) - off);
			return -EBUSY;
		}
		/* Counted already: once the claim ends, the reclaimer sees the pin. */
		if (old & GM_PIN_CLAIM)
			gm_wait_claim(gm, pg);
	}
	return 0;
}

int gm_pin(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr(gm, gpa, len);

	if (!p)
		return -EFAULT;
	return gm_pin_off(gm, (uint64_t)(p - gm->hva), len);
}

void gm_unpin(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr(gm, gpa, len);

	if (p)
		gm_unpin_off(gm, (uint64_t)(p - gm->hva), len);
}

bool gm_page_pinned(const struct guest_mem *gm, uint64_t page_index)
{
	if (!gm->pins || page_index >= gm->npages)
		return false;
	return __atomic_load_n(&gm->pins[page_index], __ATOMIC_ACQUIRE) & GM_PIN_MAX;
}

bool gm_claim_page(struct guest_mem *gm, uint64_t page_index)
{
	uint32_t expect = 0;

	if (!gm->pins || page_index >= gm->npages)
		return false;
	return __atomic_compare_exchange_n(&gm->pins[page_index], &expect, GM_PIN_CLAIM, false,
					   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

void gm_unclaim_page(struct guest_mem *gm, uint64_t page_index)
{
	__atomic_fetch_and(&gm->pins[page_index], ~GM_PIN_CLAIM, __ATOMIC_RELEASE);
}

bool gm_page_claimed(const struct guest_mem *gm, uint64_t page_index)
{
	if (!gm->pins || page_index >= gm->npages)
		return false;
	return __atomic_load_n(&gm->pins[page_index], __ATOMIC_ACQUIRE) & GM_PIN_CLAIM;
}

int gm_read(struct guest_mem *gm, uint64_t gpa, void *buf, uint64_t len)
{
	void *p = gm_ptr(gm, gpa, len);

	if (!p)
		return -EFAULT;
	memcpy(buf, p, len);
	return 0;
}

int gm_write(struct guest_mem *gm, uint64_t gpa, const void *buf, uint64_t len)
{
	uint8_t *p = gm_ptr(gm, gpa, len);
	uint64_t off;
	bool pinned;

	if (!p)
		return -EFAULT;
	off = (uint64_t)(p - gm->hva);
	/* Saturated pin counts (a hostile guest) only risk that guest's own data: copy anyway. */
	pinned = gm_pin_off(gm, off, len) == 0;
	gm_mark_dirty(gm, off, len);
	memcpy(p, buf, len);
	if (pinned)
		gm_unpin_off(gm, off, len);
	return 0;
}
