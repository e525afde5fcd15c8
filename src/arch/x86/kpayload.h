/*
 * The compressed kernel inside a bzImage (setup header payload_offset /
 * payload_length): detect its format by magic and decompress it on the host,
 * so the guest need not run the kernel's own decompressor. Every format the
 * kernel build produces appends the uncompressed size as 4 little-endian
 * bytes (gzip's ISIZE trailer is the same thing); that size bounds the output.
 *
 * The payload is untrusted: the output never exceeds the caller's limit, and a
 * stream that ends early, runs long or disagrees with its size trailer fails.
 */
#ifndef TERN_ARCH_X86_KPAYLOAD_H
#define TERN_ARCH_X86_KPAYLOAD_H

#include <stddef.h>
#include <stdint.h>

enum kpayload_fmt {
	KPAYLOAD_UNKNOWN,
	KPAYLOAD_GZIP,
	KPAYLOAD_BZIP2,
	KPAYLOAD_LZMA,
	KPAYLOAD_XZ,
	KPAYLOAD_LZO, /* recognised, not decompressed here (no library in the package list) */
	KPAYLOAD_LZ4, /* the legacy LZ4 frame the kernel's "lz4 -l" produces */
	KPAYLOAD_ZSTD,
};

/* The format of a payload, by its leading magic bytes. */
enum kpayload_fmt kpayload_detect(const uint8_t *p, size_t len);

/* "gzip", "lz4", ... for messages. */
const char *kpayload_name(enum kpayload_fmt fmt);

/* The uncompressed size the payload's trailer announces (0 when too short to have one). */
size_t kpayload_size(const uint8_t *p, size_t len);

/*
 * Receives the decompressed bytes in order, a chunk at a time (at most
 * 8 MiB). Returns 0 to go on or -errno to stop decompressing with that error.
 */
typedef int (*kpayload_sink)(void *opaque, const uint8_t *data, size_t len);

/*
 * Decompress a payload of the given format through sink, so the output never
 * needs one buffer of its whole size (a vmlinux is tens of MiB). Errors as for
 * kpayload_decompress(), or the sink's own; on error the sink may have been
 * given part of the output, never more than the size trailer says.
 */
int kpayload_stream(enum kpayload_fmt fmt, const uint8_t *p, size_t len, size_t max,
		    kpayload_sink sink, void *opaque);

/*
 * Decompress a payload of the given format into a new malloc()ed buffer
 * (*out, *outlen; the caller frees it). Fails with -EOPNOTSUPP (a format
 * tern cannot decompress), -EFBIG (the size trailer says more than max),
 * -EBADMSG (corrupt, truncated, or a different size than the trailer says),
 * -ENOMEM.
 */
int kpayload_decompress(enum kpayload_fmt fmt, const uint8_t *p, size_t len, size_t max,
			uint8_t **out, size_t *outlen);

#endif
