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

/* Legacy LZ4: magic, then blocks of (le32 compressed size, data); a repeated magic
 * starts another concatenated stream. in/len exclude the size trailer. */
static int unlz4_legacy(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	size_t pos = 4, done = 0;

	while (pos < len) {
		uint32_t c;
		int n;

		if (len - pos < 4)
			return -EBADMSG;
		c = le32(in + pos);
		pos += 4;
		if (c == LZ4_LEGACY_MAGIC)
			continue;
		if (c == 0 || c > len - pos || c > (uint32_t)LZ4_compressBound(LZ4_LEGACY_BLOCK) ||
		    done == size)
			return -EBADMSG;
		n = LZ4_decompress_safe(
		    (const char *)in + pos, (char *)out + done, (int)c,
		    (int)(size - done < LZ4_LEGACY_BLOCK ? size - done : LZ4_LEGACY_BLOCK));
		if (n <= 0)
			return -EBADMSG;
		done += (size_t)n;
		pos += c;
	}
	return done == size ? 0 : -EBADMSG;
}

static int ungzip(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	z_stream z = {.next_in = (Bytef *)in,
		      .avail_in = (uInt)len,
		      .next_out = out,
		      .avail_out = (uInt)size};
	int ret;

	if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
		return -ENOMEM;
	ret = inflate(&z, Z_FINISH);
	inflateEnd(&z);
	return ret == Z_STREAM_END && z.total_out == size ? 0 : -EBADMSG;
}

static int unbzip2(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	unsigned int outlen = (unsigned int)size;
	int ret =
	    BZ2_bzBuffToBuffDecompress((char *)out, &outlen, (char *)in, (unsigned int)len, 0, 0);

	if (ret == BZ_MEM_ERROR)
		return -ENOMEM;
	return ret == BZ_OK && outlen == size ? 0 : -EBADMSG;
}

static int unxz(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	uint64_t memlimit = XZ_MEMLIMIT;
	size_t in_pos = 0, out_pos = 0;
	lzma_ret ret =
	    lzma_stream_buffer_decode(&memlimit, 0, NULL, in, &in_pos, len, out, &out_pos, size);

	if (ret == LZMA_MEM_ERROR)
		return -ENOMEM;
	return ret == LZMA_OK && out_pos == size ? 0 : -EBADMSG;
}

static int unlzma(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_ret ret = lzma_alone_decoder(&s, XZ_MEMLIMIT);

	if (ret != LZMA_OK)
		return -ENOMEM;
	s.next_in = in;
	s.avail_in = len;
	s.next_out = out;
	s.avail_out = size;
	ret = lzma_code(&s, LZMA_FINISH);
	lzma_end(&s);
	/* A .lzma stream without an end marker stops once its declared size is out. */
	return ret == LZMA_STREAM_END && s.total_out == size ? 0 : -EBADMSG;
}

static int unzstd(const uint8_t *in, size_t len, uint8_t *out, size_t size)
{
	size_t flen = ZSTD_findFrameCompressedSize(in, len);
	size_t n;

	if (ZSTD_isError(flen))
		return -EBADMSG;
	n = ZSTD_decompress(out, size, in, flen);
	return !ZSTD_isError(n) && n == size ? 0 : -EBADMSG;
}

int kpayload_decompress(enum kpayload_fmt fmt, const uint8_t *p, size_t len, size_t max,
			uint8_t **out, size_t *outlen)
{
	size_t size;
	uint8_t *buf;
	int err;

	*out = NULL;
	*outlen = 0;
	if (fmt == KPAYLOAD_UNKNOWN || fmt == KPAYLOAD_LZO)
		return -EOPNOTSUPP;
	if (len <= 8 || len > UINT_MAX)
		return -EBADMSG;
	size = le32(p + len - 4);
	if (size == 0)
		return -EBADMSG;
	if (size > max)
		return -EFBIG;
	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	switch (fmt) {
	case KPAYLOAD_GZIP:
		err = ungzip(p, len, buf, size); /* the trailer is gzip's own ISIZE */
		break;
	case KPAYLOAD_BZIP2:
		err = unbzip2(p, len - 4, buf, size);
		break;
	case KPAYLOAD_LZMA:
		err = unlzma(p, len - 4, buf, size);
		break;
	case KPAYLOAD_XZ:
		err = unxz(p, len - 4, buf, size);
		break;
	case KPAYLOAD_LZ4:
		err = unlz4_legacy(p, len - 4, buf, size);
		break;
	case KPAYLOAD_ZSTD:
		err = unzstd(p, len - 4, buf, size);
		break;
	default:
		err = -EOPNOTSUPP;
		break;
	}
	if (err) {
		free(buf);
		return err;
	}
	*out = buf;
	*outlen = size;
	return 0;
}
