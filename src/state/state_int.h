/* Internal to src/state/: the machine description and building the machine again. */
#ifndef TERN_STATE_STATE_INT_H
#define TERN_STATE_STATE_INT_H

#include "state/snapfile.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"

/* The description registered on vm, or NULL. */
const struct machine_desc *snap_desc_find(struct vm *vm);
/* True for the description's own registry entry (it is not a device to save). */
bool snap_desc_is(const struct device *d);
int snap_desc_encode(const struct machine_desc *d, struct dev_buf *out);
/* Decode an untrusted MACHINE record; free with machine_desc_clear(). */
int snap_desc_decode(const void *data, uint64_t len, struct machine_desc *d);

/* ---- the memory file, written in steps (memfile.c) ---- */
/* A memory file being written under PATH.tmp; renamed to path by snap_mem_commit(). */
struct snap_mem_out {
	int fd;
	char *tmp;
	const char *path;
};

/* Create PATH.tmp at its full size (all holes) with its header. 0 or -errno (nothing left). */
int snap_mem_create(struct snap_mem_out *o, const char *path, uint64_t size,
		    const uint8_t id[SNAP_ID_LEN]);
/* fdatasync, rename into place, fsync the directory; on failure nothing is left. */
int snap_mem_commit(struct snap_mem_out *o);
/* Close and remove the temporary file. */
void snap_mem_abort(struct snap_mem_out *o);
/* Write every non-zero page of guest RAM (holes of its memfd skipped unread). */
int snap_mem_write_pages(int fd, const struct guest_mem *gm);
/* Write the non-zero pages of [first, end) (page indices into gm->hva). */
int snap_mem_write_range(int fd, const struct guest_mem *gm, uint64_t first, uint64_t end);
bool snap_page_is_zero(const uint8_t *p);
int snap_pwrite_all(int fd, const uint8_t *p, uint64_t len, uint64_t off);
/* fsync the directory holding path, so a rename into it is durable. */
int snap_fsync_dir(const char *path);

/* ---- live memory snapshot: copy-before-write with a copy map (livemem.c) ---- */
struct livemem;

/*
 * Get ready to copy gm into out_fd live, while the VM still runs: a
 * userfaultfd registered for write protection over all RAM, every page
 * pinned (reclaim cannot release a page before it is copied), the copy map,
 * the fault handler thread, and all RAM write-protected, the pages the
 * guest writes from then on noted and let through. -errno (e.g. -EPERM,
 * -EINVAL, -ENOTSUP) when the host cannot do it: the caller copies with
 * the VM stopped.
 */
int livemem_prepare(struct livemem **out, struct guest_mem *gm, int out_fd);
/*
 * With the VM paused: protect again the pages written since
 * livemem_prepare(); from now on faults copy. This is the snapshot's
 * instant. On failure the caller frees lm (nothing stays protected) and
 * falls back.
 */
int livemem_arm(struct livemem *lm);
/*
 * After the resume: copy every page not yet copied (the handler copies
 * pages before their first write meanwhile). 0 or the first error.
 */
int livemem_copy(struct livemem *lm);
/* Pages copied before a write (by the fault handler). */
uint64_t livemem_cbw_pages(const struct livemem *lm);
/* Unprotect everything, stop the handler, unpin what was not copied, free. */
void livemem_free(struct livemem *lm);

#endif
