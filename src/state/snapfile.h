/*
 * The snapshot files (docs/snapshot-format.md): a state file (header,
 * sections, CRC trailer) and a sparse memory file (one header page, then
 * guest RAM with zero pages left as holes).
 *
 * Both are untrusted input when loaded: every length and count is bounded,
 * the whole state file is checked (size limit, magic, version, CRC) before
 * anything in it is used.
 */
#ifndef TERN_STATE_SNAPFILE_H
#define TERN_STATE_SNAPFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "vmm/vm.h"

#define SNAP_MAGIC "TERNSNAP"
#define SNAP_END_MAGIC "TERN-END"
#define SNAP_VERSION 1u
#define SNAP_ARCH_X86_64 1u
#define SNAP_HDR_SIZE 64u
#define SNAP_TRAILER_SIZE 16u
#define SNAP_STATE_MAX (64ull << 20) /* state files are small: refuse anything bigger */
#define SNAP_ID_LEN 16
#define SNAP_BACKEND_LEN 8
#define SNAP_MODEL_MAX 128
#define SNAP_NAME_MAX 32
#define SNAP_MAX_CPUS 255
#define SNAP_MAX_DEVICES 256
#define SNAP_MEM_MAX (1ull << 40)

#define SNAP_MEM_MAGIC "TERNMEM1"
#define SNAP_MEM_VERSION 1u
#define SNAP_MEM_DATA_OFF 4096ull /* RAM starts here: page-aligned, so it can be mapped */

enum snap_section {
	SNAP_SEC_CPU_MODEL = 1, /* string naming the CPU model the guest sees */
	SNAP_SEC_MACHINE = 2,	/* how to rebuild the machine (struct snap_machine) */
	SNAP_SEC_VCPU = 3,	/* index = vCPU id; encoded struct cpu_state */
	SNAP_SEC_BACKEND = 4,	/* CPU backend state beyond cpu_state (irqchip, MSRs) */
	SNAP_SEC_DEVICE = 5,	/* index = position in the device list; name + device blob */
	SNAP_SEC_NEUTRAL = 6,	/* backend-neutral CPU model and irqchip state (cpu_neutral.h) */
};

struct snap_header {
	uint32_t version, arch, ncpus;
	uint64_t mem_size;
	char backend[SNAP_BACKEND_LEN + 1];
	uint8_t id[SNAP_ID_LEN];
};

/* A section in a loaded image: points into the image's buffer. */
struct snap_blob {
	const uint8_t *data;
	uint64_t len;
};

struct snap_dev_rec {
	char name[SNAP_NAME_MAX + 1];
	struct snap_blob blob;
};

/* A loaded, checked state file. */
struct snap_image {
	uint8_t *buf;
	uint64_t size;
	struct snap_header hdr;
	char cpu_model[SNAP_MODEL_MAX + 1];
	struct snap_blob machine, backend;
	struct snap_blob neutral; /* optional: absent in snapshots of older tern */
	struct snap_blob vcpu[SNAP_MAX_CPUS];
	struct snap_dev_rec *devs;
	unsigned ndevs;
};

/* ---- writing ---- */
struct snap_writer {
	struct dev_buf buf;
	int err; /* first error; later calls do nothing */
};

void snap_w_begin(struct snap_writer *w, const struct snap_header *h);
void snap_w_section(struct snap_writer *w, uint32_t type, uint32_t index, const void *data,
		    uint64_t len);
void snap_w_device(struct snap_writer *w, uint32_t index, const char *name, const void *data,
		   uint64_t len);
/* Fill in the size, append the CRC trailer; 0 or the first error. */
int snap_w_finish(struct snap_writer *w);
/* Write the finished image to path (through a temporary file, renamed at the end). */
int snap_w_to_file(struct snap_writer *w, const char *path);
void snap_w_free(struct snap_writer *w);

/* ---- reading ---- */
/*
 * Check and index an image held in buf (taken over: freed by
 * snap_image_free(), also on failure). 0, or -EINVAL (malformed), -EBADMSG
 * (CRC mismatch), -EPROTONOSUPPORT (other format version or architecture),
 * -EFBIG (over the size limit); *why gets a short explanation.
 */
int snap_image_parse(struct snap_image *img, uint8_t *buf, uint64_t size, const char **why);
/* Read path (at most SNAP_STATE_MAX bytes) and parse it. */
int snap_image_load(struct snap_image *img, const char *path, const char **why);
void snap_image_free(struct snap_image *img);

/* ---- vCPU state codec: explicit little-endian fields, no struct layout on disk ---- */
int snap_cpu_encode(const struct cpu_state *st, struct dev_buf *out);
int snap_cpu_decode(const void *data, uint64_t len, struct cpu_state *st);

/* ---- the memory file ---- */
/* Write guest RAM (only its non-zero pages) to path; 0 or -errno. */
int snap_mem_write(struct guest_mem *gm, const char *path, const uint8_t id[SNAP_ID_LEN]);
/*
 * Open a memory file and check it belongs to the snapshot (id) and holds
 * mem_size bytes of RAM. Returns an fd (RAM at SNAP_MEM_DATA_OFF) or -errno.
 */
int snap_mem_open(const char *path, const uint8_t id[SNAP_ID_LEN], uint64_t mem_size,
		  const char **why);

/* Little-endian cursor over untrusted bytes; reads past the end set err and return 0. */
struct snap_rd {
	const uint8_t *p;
	uint64_t len, off;
	bool err;
};
uint64_t snap_rd_u64(struct snap_rd *r);
uint32_t snap_rd_u32(struct snap_rd *r);
uint16_t snap_rd_u16(struct snap_rd *r);
uint8_t snap_rd_u8(struct snap_rd *r);
void snap_rd_bytes(struct snap_rd *r, void *out, uint64_t n);
const uint8_t *snap_rd_ptr(struct snap_rd *r, uint64_t n);

int snap_put_u64(struct dev_buf *b, uint64_t v);
int snap_put_u32(struct dev_buf *b, uint32_t v);
int snap_put_u16(struct dev_buf *b, uint16_t v);
int snap_put_u8(struct dev_buf *b, uint8_t v);

#endif
