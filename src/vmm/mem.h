/*
 * Guest physical memory: one host mapping, and the one checked accessor.
 *
 * Layout: RAM from 0 up to min(size, MEM_HOLE_START); what does not fit below
 * the 32-bit PCI/APIC hole continues at 4 GiB. Both parts live in one
 * contiguous host mapping so a snapshot or clone can treat guest memory as a
 * single file.
 *
 * Every access a device or the VMM makes to guest memory goes through
 * gm_ptr()/gm_read()/gm_write(): the (gpa, len) pair is overflow-checked and
 * must lie entirely inside one RAM region. Writes are recorded in the dirty
 * bitmap (for snapshots, migration and memory reclaim) and reported to the
 * CPU backend's code-page hook (so the emulator drops decoded instructions on
 * pages a device overwrote).
 */
#ifndef TERN_VMM_MEM_H
#define TERN_VMM_MEM_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GM_PAGE_SHIFT 12
#define GM_PAGE_SIZE (1ull << GM_PAGE_SHIFT)
#define MEM_HOLE_START 0xC0000000ull /* 3 GiB: PCI MMIO, IOAPIC, LAPIC above */
#define MEM_HIGH_START 0x100000000ull

/*
 * What backs guest RAM (docs/memory.md). AUTO picks MEMFD when the host
 * gives shared memory transparent huge pages, else ANON, which gets them
 * under the more common anonymous THP setting. FILE is a restored VM's
 * private mapping of its snapshot's memory file.
 */
enum gm_backing {
	GM_BACKING_AUTO,
	GM_BACKING_MEMFD, /* memfd, MAP_SHARED; released by punching holes */
	GM_BACKING_ANON,  /* anonymous, MAP_PRIVATE; released by MADV_DONTNEED */
	GM_BACKING_FILE,  /* a file, MAP_PRIVATE (restore); pages cannot be released */
};

struct guest_mem {
	uint8_t *hva;	    /* host mapping of all guest RAM */
	uint64_t size;	    /* total RAM bytes */
	uint64_t low_size;  /* RAM bytes mapped at gpa [0, low_size) */
	uint64_t high_size; /* RAM bytes mapped at gpa [4 GiB, 4 GiB + high_size) */
	int fd;		    /* memfd backing the mapping, -1 if anonymous */
	enum gm_backing backing;

	/* One bit per RAM page (indexed by page offset into hva), set on write. */
	uint64_t *dirty;
	uint64_t npages;

	/* Called for device writes to pages the CPU backend caches code for. */
	uint64_t *code_pages; /* bitmap, NULL when the backend needs no hook */
	void (*code_write)(void *opaque, uint64_t page_index);
	void *code_opaque;

	/*
	 * Pages under device I/O (vmm/reclaim.h, docs/memory.md): one word per
	 * page, the low bits count gm_pin()s, GM_PIN_CLAIM is set while the
	 * reclaimer releases the page. A pinned page is never released; a
	 * claimed page makes gm_pin()/gm_write()/gm_ptr_w() wait until the
	 * release is done, so their write lands in the fresh page.
	 */
	uint32_t *pins;
	/*
	 * Held by whoever clears bits of dirty and hands them back later (the
	 * zero-page sweep) and by consumers that must not miss a bit while
	 * that happens (migration's and snapshot's final pass).
	 */
	pthread_mutex_t dirty_lock;
	/* Bytes given back to the host, by who asked (updated atomically). */
	uint64_t released_sweep;       /* zero-page sweep */
	uint64_t released_balloon;     /* balloon inflation */
	uint64_t released_free_report; /* free page reporting */
};

#define GM_PIN_CLAIM 0x80000000u
#define GM_PIN_MAX 0x7fffffffu

/* Allocate size bytes of guest RAM (backing AUTO). Returns 0 or -errno. */
int gm_init(struct guest_mem *gm, uint64_t size);
/* The same with a chosen backing (not FILE). */
int gm_init_backing(struct guest_mem *gm, uint64_t size, enum gm_backing backing);
/* What AUTO resolves to on this host (reads /sys/kernel/mm/transparent_hugepage). */
enum gm_backing gm_backing_auto(void);
/* True if the host's THP setting lets this backing get huge pages (MADV_HUGEPAGE). */
bool gm_backing_thp_allowed(enum gm_backing backing);
/* "auto", "memfd", "anon", "file"; parse returns 0 or -EINVAL (not "file"). */
const char *gm_backing_name(enum gm_backing backing);
int gm_backing_parse(const char *s, enum gm_backing *out);
/*
 * Bytes of guest RAM mapped by huge pages right now (AnonHugePages,
 * ShmemPmdMapped and FilePmdMapped of its mapping in /proc/self/smaps).
 * 0 or -errno.
 */
int gm_huge_bytes(const struct guest_mem *gm, uint64_t *out);
/*
 * Give [off, off+len) of the mapping (page aligned) back to the host; it
 * reads as zero afterwards, and a write allocates a fresh page. A huge page
 * partly inside the range is split. -EOPNOTSUPP for FILE backing (dropping
 * a private page would bring back the file's bytes, not zeros).
 */
int gm_discard(struct guest_mem *gm, uint64_t off, uint64_t len);
void gm_destroy(struct guest_mem *gm);
/*
 * Replace all guest RAM with a private (copy-on-write) mapping of fd from
 * offset (a snapshot's memory file): nothing is read now, pages come from
 * the file on first touch and writes stay in this process. The host
 * address does not change. Call before any vCPU runs. Afterwards gm->fd is
 * -1 and the backing FILE: pages cannot be released. 0 or -errno.
 */
int gm_map_file_private(struct guest_mem *gm, int fd, uint64_t offset);

/*
 * Translate a guest-physical range to a host pointer, or NULL when any byte
 * of [gpa, gpa+len) is not RAM or the range wraps. len == 0 is valid for any
 * gpa inside RAM. Does not mark anything dirty: use for reads.
 */
void *gm_ptr(struct guest_mem *gm, uint64_t gpa, uint64_t len);

/*
 * As gm_ptr(), for a range the caller is about to write: marks it dirty, and
 * waits while the reclaimer is releasing one of its pages. The pointer is
 * safe against reclaim only for a write made at once; a transfer that may
 * outlive the call (another thread, asynchronous I/O) pins the range first.
 */
void *gm_ptr_w(struct guest_mem *gm, uint64_t gpa, uint64_t len);

/*
 * Copy helpers; return 0 or -EFAULT if the range is not entirely RAM.
 * gm_write() pins the range for the copy: it is never lost to reclaim.
 */
int gm_read(struct guest_mem *gm, uint64_t gpa, void *buf, uint64_t len);
int gm_write(struct guest_mem *gm, uint64_t gpa, const void *buf, uint64_t len);

/* Page index (into hva) of a RAM gpa, or UINT64_MAX if gpa is not RAM. */
uint64_t gm_page_index(const struct guest_mem *gm, uint64_t gpa);

/* Mark [hva offset, +len) dirty; used by backends that write RAM directly. */
void gm_mark_dirty(struct guest_mem *gm, uint64_t off, uint64_t len);

/* Test-and-clear the dirty bit of one page. */
bool gm_test_clear_dirty(struct guest_mem *gm, uint64_t page_index);

/*
 * Pin [gpa, gpa+len) against reclaim (and later lazy restore and migration)
 * for the time of a device transfer; every successful gm_pin() is matched by
 * one gm_unpin() of the same range. Waits while a page is being released.
 * 0, -EFAULT if the range is not entirely RAM, -EBUSY if a page's pin count
 * is saturated (nothing stays pinned then). len == 0 pins nothing.
 */
int gm_pin(struct guest_mem *gm, uint64_t gpa, uint64_t len);
void gm_unpin(struct guest_mem *gm, uint64_t gpa, uint64_t len);
/* The same, by offset into hva (for callers that already hold a host pointer). */
int gm_pin_off(struct guest_mem *gm, uint64_t off, uint64_t len);
void gm_unpin_off(struct guest_mem *gm, uint64_t off, uint64_t len);
/* True if the page (index into hva) is pinned by a device. */
bool gm_page_pinned(const struct guest_mem *gm, uint64_t page_index);

/*
 * For the reclaimer: take a page out of reach of new pins while it is
 * released. Fails (false) if the page is pinned or already claimed. The
 * caller checks the page's dirty bit only after claiming (the claim and
 * gm_ptr_w()'s dirty mark are ordered by full barriers on both sides).
 */
bool gm_claim_page(struct guest_mem *gm, uint64_t page_index);
void gm_unclaim_page(struct guest_mem *gm, uint64_t page_index);
/* True if the page is claimed right now (a claim is short: wait, then retry). */
bool gm_page_claimed(const struct guest_mem *gm, uint64_t page_index);

#endif
