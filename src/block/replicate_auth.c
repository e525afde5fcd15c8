/*
 * Replication authentication primitives on OpenSSL's libcrypto: the key
 * file, HMAC-SHA256, nonces (replicate_auth.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "block/replicate_auth.h"
#include "util/log.h"

static int key_read(int fd, const char *path, struct replicate_key *key)
{
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return -errno;
	/* A key others can read is no secret; one others can write is not ours. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		pr_err("%s: a key file must be a regular file only its owner may read "
		       "(chmod 600)",
		       path);
		return -EPERM;
	}
	if (st.st_size > RAUTH_KEY_MAX + 2) {
		pr_err("%s: a key is at most %d bytes", path, RAUTH_KEY_MAX);
		return -EFBIG;
	}
	do {
		n = pread(fd, key->bytes, sizeof(key->bytes), 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	key->len = (size_t)n;
	while (key->len && strchr("\n\r \t", key->bytes[key->len - 1]))
		key->len--;
	if (key->len < RAUTH_KEY_MIN) {
		pr_err("%s: a key is at least %d bytes (e.g. head -c 32 /dev/urandom | "
		       "base64 > FILE)",
		       path, RAUTH_KEY_MIN);
		return -EINVAL;
	}
	return 0;
}

int replicate_key_load(const char *path, struct replicate_key *key)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0) {
		r = -errno;
		pr_err("%s: cannot open the key file: %s", path, strerror(errno));
		return r;
	}
	r = key_read(fd, path, key);
	close(fd);
	if (r < 0)
		OPENSSL_cleanse(key, sizeof(*key));
	return r;
}

int rauth_hmac(const uint8_t *key, size_t klen, const struct iovec *parts, int nparts,
	       uint8_t tag[RAUTH_TAG])
{
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	    OSSL_PARAM_construct_end()};
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
	size_t out = 0;
	int ok = ctx && EVP_MAC_init(ctx, key, klen, params);

	for (int i = 0; ok && i < nparts; i++)
		ok = EVP_MAC_update(ctx, parts[i].iov_base, parts[i].iov_len);
	ok = ok && EVP_MAC_final(ctx, tag, &out, RAUTH_TAG) && out == RAUTH_TAG;
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	return ok ? 0 : -EIO;
}

int rauth_random(uint8_t *buf, size_t len)
{
	return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

int rauth_tag_equal(const uint8_t *a, const uint8_t *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

void rauth_hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = 0;
}

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int rauth_unhex(const char *in, uint8_t *out, size_t len)
{
	if (strlen(in) != 2 * len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		int hi = nibble(in[2 * i]), lo = nibble(in[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}
