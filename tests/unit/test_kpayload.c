/* Host-side decompression of bzImage payloads: every format round trips, hostile input fails. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <cmocka.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "arch/x86/kpayload.h"

#define MiB (1024u * 1024)
#define LZ4_BLOCK (8u * MiB)

/* Data that compresses but not to nothing: a vmlinux-like mix of text and zeroes. */
static uint8_t *sample(size_t n)
{
	uint8_t *p = malloc(n);
	uint32_t x = 12345;

	assert_non_null(p);
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (i / 4096) % 3 == 0 ? 0 : (uint8_t)((x >> 16) & 0x3f);
	}
	return p;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Like the kernel build: compressed stream, then the uncompressed size (le32). */
static size_t append_size(uint8_t *buf, size_t clen, size_t n)
{
	put_le32(buf + clen, (uint32_t)n);
	return clen + 4;
}

static size_t make_gzip(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	z_stream z = {
	    .next_in = (Bytef *)in, .avail_in = (uInt)n, .next_out = out, .avail_out = (uInt)cap};

	assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY),
			 Z_OK);
	assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
	deflateEnd(&z);
	return z.total_out; /* gzip's ISIZE trailer is the size */
}

static size_t make_bzip2(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	unsigned int len = (unsigned int)cap;

	assert_int_equal(
	    BZ2_bzBuffToBuffCompress((char *)out, &len, (char *)in, (unsigned int)n, 9, 0, 0),
	    BZ_OK);
	return append_size(out, len, n);
}

static size_t make_xz(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	size_t pos = 0;

	assert_int_equal(lzma_easy_buffer_encode(1, LZMA_CHECK_CRC32, NULL, in, n, out, &pos, cap),
			 LZMA_OK);
	return append_size(out, pos, n);
}

static size_t make_lzma(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_options_lzma opt;

	assert_false(lzma_lzma_preset(&opt, 1));
	assert_int_equal(lzma_alone_encoder(&s, &opt), LZMA_OK);
	s.next_in = in;
	s.avail_in = n;
	s.next_out = out;
	s.avail_out = cap;
	assert_int_equal(lzma_code(&s, LZMA_FINISH), LZMA_STREAM_END);
	lzma_end(&s);
	return append_size(out, s.total_out, n);
}

/* The legacy LZ4 frame: magic, then (le32 size, block) for every 8 MiB of input. */
static size_t make_lz4(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	size_t o = 4;

	put_le32(out, 0x184c2102);
	for (size_t i = 0; i < n; i += LZ4_BLOCK) {
		int chunk = (int)(n - i < LZ4_BLOCK ? n - i : LZ4_BLOCK);
		int c = LZ4_compress_default((const char *)in + i, (char *)out + o + 4, chunk,
					     (int)(cap - o - 4));

		assert_true(c > 0);
		put_le32(out + o, (uint32_t)c);
		o += 4 + (size_t)c;
	}
	return append_size(out, o, n);
}

static size_t make_zstd(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	size_t c = ZSTD_compress(out, cap, in, n, 3);

	assert_false(ZSTD_isError(c));
	return append_size(out, c, n);
}

typedef size_t (*maker)(const uint8_t *, size_t, uint8_t *, size_t);

static void round_trip(maker make, enum kpayload_fmt fmt, size_t n)
{
	uint8_t *in = sample(n), *out;
	size_t cap = n + n / 2 + 65536, len, outlen;
	uint8_t *c = malloc(cap);

	assert_non_null(c);
	len = make(in, n, c, cap);
	assert_int_equal(kpayload_detect(c, len), fmt);
	assert_int_equal(kpayload_decompress(fmt, c, len, 64 * MiB, &out, &outlen), 0);
	assert_int_equal(outlen, n);
	assert_memory_equal(out, in, n);
	free(out);

	/* The size trailer bounds the output: over the caller's limit is refused up front. */
	assert_int_equal(kpayload_decompress(fmt, c, len, n - 1, &out, &outlen), -EFBIG);
	assert_null(out);
	/* A trailer that disagrees with the stream, either way, is corrupt. */
	put_le32(c + len - 4, (uint32_t)n - 1);
	assert_int_equal(kpayload_decompress(fmt, c, len, 64 * MiB, &out, &outlen), -EBADMSG);
	put_le32(c + len - 4, (uint32_t)n + 4096);
	assert_int_equal(kpayload_decompress(fmt, c, len, 64 * MiB, &out, &outlen), -EBADMSG);
	put_le32(c + len - 4, (uint32_t)n);
	/* Truncated in the middle (size trailer kept): corrupt. */
	memmove(c + len / 2, c + len - 4, 4);
	assert_int_equal(kpayload_decompress(fmt, c, len / 2 + 4, 64 * MiB, &out, &outlen),
			 -EBADMSG);
	assert_null(out);
	free(c);
	free(in);
}

static void test_gzip(void **state)
{
	round_trip(make_gzip, KPAYLOAD_GZIP, 3 * MiB + 17);
}

static void test_bzip2(void **state)
{
	round_trip(make_bzip2, KPAYLOAD_BZIP2, 1 * MiB + 5);
}

static void test_xz(void **state)
{
	round_trip(make_xz, KPAYLOAD_XZ, 2 * MiB + 3);
}

static void test_lzma(void **state)
{
	round_trip(make_lzma, KPAYLOAD_LZMA, 1 * MiB + 9);
}

/* More than two legacy blocks, so the block loop and the short last block are exercised. */
static void test_lz4(void **state)
{
	round_trip(make_lz4, KPAYLOAD_LZ4, 2 * LZ4_BLOCK + 12345);
}

static void test_zstd(void **state)
{
	round_trip(make_zstd, KPAYLOAD_ZSTD, 3 * MiB + 1);
}

static void test_lz4_hostile_blocks(void **state)
{
	size_t n = LZ4_BLOCK + 100, cap = 2 * n, len, outlen;
	uint8_t *in = sample(n), *c = malloc(cap), *out;
	uint32_t first;

	assert_non_null(c);
	len = make_lz4(in, n, c, cap);
	memcpy(&first, c + 4, 4);
	/* A block size running past the end of the input. */
	put_le32(c + 4, (uint32_t)len);
	assert_int_equal(kpayload_decompress(KPAYLOAD_LZ4, c, len, 64 * MiB, &out, &outlen),
			 -EBADMSG);
	/* A zero-length block. */
	put_le32(c + 4, 0);
	assert_int_equal(kpayload_decompress(KPAYLOAD_LZ4, c, len, 64 * MiB, &out, &outlen),
			 -EBADMSG);
	/* Garbage inside a block. */
	put_le32(c + 4, first);
	memset(c + 8, 0xff, 64);
	assert_int_equal(kpayload_decompress(KPAYLOAD_LZ4, c, len, 64 * MiB, &out, &outlen),
			 -EBADMSG);
	assert_null(out);
	free(c);
	free(in);
}

static void test_detect_and_unsupported(void **state)
{
	static const uint8_t lzo[] = {0x89, 'L', 'Z', 'O', 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
	static const uint8_t junk[] = {'M', 'Z', 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
	uint8_t *out = (uint8_t *)1;
	size_t outlen = 1;

	assert_int_equal(kpayload_detect(lzo, sizeof(lzo)), KPAYLOAD_LZO);
	assert_string_equal(kpayload_name(KPAYLOAD_LZO), "lzo");
	assert_int_equal(
	    kpayload_decompress(KPAYLOAD_LZO, lzo, sizeof(lzo), 64 * MiB, &out, &outlen),
	    -EOPNOTSUPP);
	assert_null(out);
	assert_int_equal(outlen, 0);
	assert_int_equal(kpayload_detect(junk, sizeof(junk)), KPAYLOAD_UNKNOWN);
	assert_int_equal(
	    kpayload_decompress(KPAYLOAD_UNKNOWN, junk, sizeof(junk), 64 * MiB, &out, &outlen),
	    -EOPNOTSUPP);
	/* Too short to hold a stream and its size; a magic alone is not a format. */
	assert_int_equal(kpayload_detect(lzo, 2), KPAYLOAD_UNKNOWN);
	assert_int_equal(kpayload_decompress(KPAYLOAD_GZIP, lzo, 6, 64 * MiB, &out, &outlen),
			 -EBADMSG);
	/* A zero size trailer. */
	assert_int_equal(kpayload_decompress(KPAYLOAD_ZSTD, junk, 12, 64 * MiB, &out, &outlen),
			 -EBADMSG);
}

struct collect {
	uint8_t *buf;
	size_t off, cap, chunks, max_chunk;
	int fail_at; /* chunk number whose sink call fails, or -1 */
};

static int collect_sink(void *opaque, const uint8_t *data, size_t len)
{
	struct collect *c = opaque;

	if ((int)c->chunks == c->fail_at)
		return -EIO;
	assert_true(len <= c->cap - c->off);
	memcpy(c->buf + c->off, data, len);
	c->off += len;
	c->chunks++;
	if (len > c->max_chunk)
		c->max_chunk = len;
	return 0;
}

/* The stream comes in bounded chunks, in order; a sink's error stops it and is returned. */
static void test_stream_chunks(void **state)
{
	static const maker makers[] = {make_gzip, make_bzip2, make_xz, make_lz4, make_zstd};
	size_t n = 3 * MiB + 77, cap = 2 * n;
	uint8_t *in = sample(n), *c = malloc(cap);
	struct collect col = {.buf = malloc(n), .cap = n};

	assert_non_null(c);
	assert_non_null(col.buf);
	for (size_t m = 0; m < sizeof(makers) / sizeof(makers[0]); m++) {
		size_t len = makers[m](in, n, c, cap);
		enum kpayload_fmt fmt = kpayload_detect(c, len);

		assert_int_equal(kpayload_size(c, len), n);
		col.off = col.chunks = col.max_chunk = 0;
		col.fail_at = -1;
		assert_int_equal(kpayload_stream(fmt, c, len, n, collect_sink, &col), 0);
		assert_int_equal(col.off, n);
		assert_memory_equal(col.buf, in, n);
		assert_true(col.chunks >= 1);
		assert_true(col.max_chunk <= 8 * MiB);
		if (fmt != KPAYLOAD_LZ4)
			assert_true(col.chunks >= 3); /* a window at a time, not all at once */
		/* Fail mid-stream where there is more than one chunk. */
		col.fail_at = col.chunks > 1 ? 1 : 0;
		col.off = col.chunks = 0;
		assert_int_equal(kpayload_stream(fmt, c, len, n, collect_sink, &col), -EIO);
	}
	free(col.buf);
	free(c);
	free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_gzip),
	    cmocka_unit_test(test_bzip2),
	    cmocka_unit_test(test_xz),
	    cmocka_unit_test(test_lzma),
	    cmocka_unit_test(test_lz4),
	    cmocka_unit_test(test_zstd),
	    cmocka_unit_test(test_lz4_hostile_blocks),
	    cmocka_unit_test(test_stream_chunks),
	    cmocka_unit_test(test_detect_and_unsupported),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
