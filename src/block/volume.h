/*
 * Single volume image: many files as one read-only disk. A fixed-size
 * index (a header, then one fixed-size entry per file or directory) is
 * followed by the files' data, each aligned to 4 KiB. docs/volume.md
 * describes the format; all integers are little endian.
 *
 * The index is untrusted input: vol_parse() refuses anything that could
 * make an extractor write outside its directory or read outside the disk.
 */
#ifndef TERN_BLOCK_VOLUME_H
#define TERN_BLOCK_VOLUME_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define VOL_MAGIC "TERNVOL" /* 8 bytes with its NUL */
#define VOL_VERSION 1
#define VOL_HEADER_SIZE 64
#define VOL_ENTRY_SIZE 256
#define VOL_NAME_SIZE 224 /* name bytes including the terminating NUL */
#define VOL_ALIGN 4096
#define VOL_MAX_ENTRIES 65536
#define VOL_MAX_INDEX (VOL_HEADER_SIZE + VOL_MAX_ENTRIES * VOL_ENTRY_SIZE + VOL_ALIGN)

/* Header field offsets. */
#define VOL_H_MAGIC 0
#define VOL_H_VERSION 8
#define VOL_H_HEADER_SIZE 12
#define VOL_H_ENTRY_SIZE 16
#define VOL_H_COUNT 20
#define VOL_H_INDEX_SIZE 24
#define VOL_H_ALIGN 28
#define VOL_H_IMAGE_SIZE 32
#define VOL_H_CRC 40
#define VOL_H_RESERVED 44

/* Entry field offsets. */
#define VOL_E_NAME 0
#define VOL_E_SIZE 224
#define VOL_E_OFFSET 232
#define VOL_E_MODE 240
#define VOL_E_TYPE 244
#define VOL_E_CRC 248
#define VOL_E_RESERVED 252

enum vol_type { VOL_FILE = 1, VOL_DIR = 2 };

struct vol_entry {
	char name[VOL_NAME_SIZE];
	uint64_t size;
	uint64_t offset;
	uint32_t mode; /* permission bits (0777 at most) */
	uint32_t type; /* enum vol_type */
	uint32_t crc;  /* CRC-32 of the file's data */
};

struct vol_index {
	uint32_t count;
	uint32_t index_size; /* bytes before the first file's data */
	uint64_t image_size; /* bytes the image needs */
	struct vol_entry *entries;
};

/*
 * Parse and check an index: buf holds the image's first len bytes (at
 * least the header and every entry), disk_size is the size of the whole
 * image. On failure returns -EINVAL (or -ENOMEM) and says why in why.
 */
int vol_parse(const uint8_t *buf, size_t len, uint64_t disk_size, struct vol_index *out, char *why,
	      size_t whylen);
void vol_index_free(struct vol_index *vi);
/* True when name is a safe relative path: no '..', '.', empty or absolute parts. */
int vol_name_ok(const char *name);

/* The commands: 0 on success, -errno after printing what went wrong. */
int vol_pack(const char *dir, const char *out);
int vol_unpack(const char *image, const char *dir);
int vol_list(const char *image, FILE *f);

#endif
