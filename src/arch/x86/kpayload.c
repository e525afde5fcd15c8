/*
 * Host-side decompression of a bzImage's payload with the distribution's
 * libraries. The magics are those the kernel's own decompressors look for
 * (lib/decompress.c); the framing around them is the kernel build's
 * (compressed stream, then the uncompressed size as le32).
 */
#include "arch/x86/kpayload.h"

#include <bzlib.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <lz4.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "util/log.h"

#define LZ4_LEGACY_MAGIC 0x184c2102u
#define LZ4_LEGACY_BLOCK (8u << 20) /* uncompressed bytes per legacy block */
#define XZ_MEMLIMIT (256ull << 20)  /* the kernel uses a 32 MiB dictionary */

static const struct {
	enum kpayload_fmt fmt;
	const char *name;
	uint8_t magic[6];
	size_t len;
} formats[] = {
    {KPAYLOAD_GZIP, "gzip", {0x1f, 0x8b}, 2},
    {KPAYLOAD_GZIP, "gzip", {0x1f, 0x9e}, 2},
    {KPAYLOAD_BZIP2, "bzip2", {'B', 'Z', 'h'}, 3},
    {KPAYLOAD_LZMA, "lzma", {0x5d, 0x00, 0x00}, 3},
    {KPAYLOAD_XZ, "xz", {0xfd, '7', 'z', 'X', 'Z', 0x00}, 6},
    {KPAYLOAD_LZO, "lzo", {0x89, 'L', 'Z', 'O'}, 4},
    {KPAYLOAD_LZ4, "lz4", {0x02, 0x21, 0x4c, 0x18}, 4},
    {KPAYLOAD_ZSTD, "zstd", {0x28, 0xb5, 0x2f, 0xfd}, 4},
};

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

enum kpayload_fmt kpayload_detect(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
		if (len >= formats[i].len && !memcmp(p, formats[i].magic, formats[i].len))
			return formats[i].fmt;
	return KPAYLOAD_UNKNOWN;
}

const char *kpayload_name(enum kpayload_fmt fmt)
{
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
		if (formats[i].fmt == fmt)
			return formats[i].name;
	return "unknown";
}

#define OUT_CHUNK (1u << 20) /* output window of the streaming decoders */

/* Where decompressed bytes go: counts them against the size trailer. */
struct out {
	kpayload_sink sink;
	void *opaque;
	size_t size, done;
	uint8_t *buf; /* a chunk of output before it goes to the sink */
	size_t cap;
};

static int out_emit(struct out *o, const uint8_t *p, size_t n)
{
	if (!n)
		return 0;
	if (n > o->size - o->done)
		return -EBADMSG;
	o->done += n;
	return o->sink(o->opaque, p, n);
}

/* Legacy LZ4: magic, then blocks of (le32 compressed size, data); a repeated magic
 * starts another concatenated stream. in/len exclude the size trailer. */
static int unlz4_legacy(const uint8_t *in, size_t len, struct out *o)
{
	size_t pos = 4;

	while (pos < len) {
		uint32_t c;
		int n, err;

		if (len - pos < 4)
			return -EBADMSG;
		c = le32(in + pos);
		pos += 4;
		if (c == LZ4_LEGACY_MAGIC)
			continue;
		if (c == 0 || c > len - pos || c > (uint32_t)LZ4_compressBound(LZ4_LEGACY_BLOCK) ||
		    o->done == o->size)
			return -EBADMSG;
		n = LZ4_decompress_safe((const char *)in + pos, (char *)o->buf, (int)c,
					(int)o->cap);
		if (n <= 0)
			return -EBADMSG;
		err = out_emit(o, o->buf, (size_t)n);
		if (err)
			return err;
		pos += c;
	}
	return 0;
}

static int ungzip(const uint8_t *in, size_t len, struct out *o)
{
	z_stream z = {.next_in = (Bytef *)in, .avail_in = (uInt)len};
	int ret, err = 0;

	if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
		return -ENOMEM;
	do {
		z.next_out = o->buf;
		z.avail_out = (uInt)o->cap;
		ret = inflate(&z, Z_NO_FLUSH);
		if (ret != Z_OK && ret != Z_STREAM_END)
			err = ret == Z_MEM_ERROR ? -ENOMEM : -EBADMSG;
		else
			err = out_emit(o, o->buf, o->cap - z.avail_out);
	} while (!err && ret != Z_STREAM_END);
	inflateEnd(&z);
	return err;
}

static int unbzip2(const uint8_t *in, size_t len, struct out *o)
{
	bz_stream b = {.next_in = (char *)in, .avail_in = (unsigned int)len};
	int ret, err = 0;

	if (BZ2_bzDecompressInit(&b, 0, 0) != BZ_OK)
		return -ENOMEM;
	do {
		b.next_out = (char *)o->buf;
		b.avail_out = (unsigned int)o->cap;
		ret = BZ2_bzDecompress(&b);
		if (ret != BZ_OK && ret != BZ_STREAM_END)
			err = ret == BZ_MEM_ERROR ? -ENOMEM : -EBADMSG;
		else if (ret == BZ_OK && !b.avail_in && b.avail_out)
			err = -EBADMSG; /* input ended inside the stream */
		else
			err = out_emit(o, o->buf, o->cap - b.avail_out);
	} while (!err && ret != BZ_STREAM_END);
	BZ2_bzDecompressEnd(&b);
	return err;
}

/* xz, and the older .lzma ("alone") container: both through liblzma's stream API. */
static int unxz(const uint8_t *in, size_t len, struct out *o, bool alone)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_ret ret =
	    alone ? lzma_alone_decoder(&s, XZ_MEMLIMIT) : lzma_stream_decoder(&s, XZ_MEMLIMIT, 0);
	int err = 0;

	if (ret != LZMA_OK)
		return -ENOMEM;
	s.next_in = in;
	s.avail_in = len;
	do {
		s.next_out = o->buf;
		s.avail_out = o->cap;
		ret = lzma_code(&s, LZMA_FINISH);
		if (ret != LZMA_OK && ret != LZMA_STREAM_END)
			err = ret == LZMA_MEM_ERROR ? -ENOMEM : -EBADMSG;
		else
			err = out_emit(o, o->buf, o->cap - s.avail_out);
	} while (!err && ret != LZMA_STREAM_END);
	lzma_end(&s);
	return err;
}

static int unzstd(const uint8_t *in, size_t len, struct out *o)
{
	ZSTD_DCtx *d = ZSTD_createDCtx();
	ZSTD_inBuffer ib = {.src = in, .size = len};
	size_t ret;
	int err = 0;

	if (!d)
		return -ENOMEM;
	do {
		ZSTD_outBuffer ob = {.dst = o->buf, .size = o->cap};

		ret = ZSTD_decompressStream(d, &ob, &ib);
		if (ZSTD_isError(ret))
			err = -EBADMSG;
		else if (ret && ib.pos == ib.size && ob.pos < ob.size)
			err = -EBADMSG; /* input ended inside the frame */
		else
			err = out_emit(o, o->buf, ob.pos);
	} while (!err && ret);
	ZSTD_freeDCtx(d);
	return err;
}

size_t kpayload_size(const uint8_t *p, size_t len)
{
	return len <= 8 ? 0 : le32(p + len - 4);
}

int kpayload_stream(enum kpayload_fmt fmt, const uint8_t *p, size_t len, size_t max,
		    kpayload_sink sink, void *opaque)
{
	struct out o = {.sink = sink, .opaque = opaque, .size = kpayload_size(p, len)};
	int err;

	if (fmt == KPAYLOAD_UNKNOWN || fmt == KPAYLOAD_LZO)
		return -EOPNOTSUPP;
	if (len <= 8 || len > UINT_MAX || o.size == 0)
		return -EBADMSG;
	if (o.size > max)
		return -EFBIG;
	/* An LZ4 block must be decompressed whole; the others go a window at a time. */
	o.cap = fmt == KPAYLOAD_LZ4 ? LZ4_LEGACY_BLOCK : OUT_CHUNK;
	if (o.cap > o.size)
		o.cap = o.size;
	o.buf = malloc(o.cap);
	if (!o.buf)
		return -ENOMEM;
	switch (fmt) {
	case KPAYLOAD_GZIP:
		err = ungzip(p, len, &o); /* the trailer is gzip's own ISIZE */
		break;
	case KPAYLOAD_BZIP2:
		err = unbzip2(p, len - 4, &o);
		break;
	case KPAYLOAD_LZMA:
	case KPAYLOAD_XZ:
		err = unxz(p, len - 4, &o, fmt == KPAYLOAD_LZMA);
		break;
	case KPAYLOAD_LZ4:
		err = unlz4_legacy(p, len - 4, &o);
		break;
	case KPAYLOAD_ZSTD:
		err = unzstd(p, len - 4, &o);
		break;
	default:
		err = -EOPNOTSUPP;
		break;
	}
	free(o.buf);
	if (!err && o.done != o.size)
		err = -EBADMSG;
	return err;
}

struct flat {
	uint8_t *buf;
	size_t off;
};

static int flat_sink(void *opaque, const uint8_t *data, size_t len)
{
	struct flat *f = opaque;

	memcpy(f->buf + f->off, data, len); /* kpayload_stream keeps the total within size */
	f->off += len;
	return 0;
}

int kpayload_decompress(enum kpayload_fmt fmt, const uint8_t *p, size_t len, size_t max,
			uint8_t **out, size_t *outlen)
{
	size_t size = kpayload_size(p, len);
	struct flat f = {0};
	int err;

	*out = NULL;
	*outlen = 0;
	if (fmt == KPAYLOAD_UNKNOWN || fmt == KPAYLOAD_LZO)
		return -EOPNOTSUPP;
	if (size == 0 || len > UINT_MAX)
		return -EBADMSG;
	if (size > max)
		return -EFBIG;
	f.buf = malloc(size);
	if (!f.buf)
		return -ENOMEM;
	err = kpayload_stream(fmt, p, len, max, flat_sink, &f);
	if (err) {
		free(f.buf);
		return err;
	}
	*out = f.buf;
	*outlen = size;
	return 0;
}
