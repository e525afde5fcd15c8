/*
 * Replication authentication primitives: the key file, HMAC-SHA256 on
 * OpenSSL's libcrypto, nonces from the kernel (replicate_auth.h).
 *
 * libcrypto is loaded the first time a tag is computed, not linked:
 * linked, its relocations and start-up leave about 400 KiB of private
 * memory in every tern process, every clone included, and only
 * replication uses it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "block/replicate_auth.h"
#include "util/dl.h"
#include "util/log.h"

#define CRYPTO_SONAME "libcrypto.so.3"

static struct {
	__typeof__(OSSL_PARAM_construct_utf8_string) *param_utf8;
	__typeof__(OSSL_PARAM_construct_end) *param_end;
	__typeof__(EVP_MAC_fetch) *mac_fetch;
	__typeof__(EVP_MAC_free) *mac_free;
	__typeof__(EVP_MAC_CTX_new) *ctx_new;
	__typeof__(EVP_MAC_CTX_free) *ctx_free;
	__typeof__(EVP_MAC_init) *init;
	__typeof__(EVP_MAC_update) *update;
	__typeof__(EVP_MAC_final) *final;
} crypto;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static bool crypto_ok;

static void crypto_load(void)
{
	const struct dl_sym syms[] = {
	    {"OSSL_PARAM_construct_utf8_string", (void **)&crypto.param_utf8},
	    {"OSSL_PARAM_construct_end", (void **)&crypto.param_end},
	    {"EVP_MAC_fetch", (void **)&crypto.mac_fetch},
	    {"EVP_MAC_free", (void **)&crypto.mac_free},
	    {"EVP_MAC_CTX_new", (void **)&crypto.ctx_new},
	    {"EVP_MAC_CTX_free", (void **)&crypto.ctx_free},
	    {"EVP_MAC_init", (void **)&crypto.init},
	    {"EVP_MAC_update", (void **)&crypto.update},
	    {"EVP_MAC_final", (void **)&crypto.final},
	};

	crypto_ok = dl_load("replicate (libcrypto, Debian package libssl3)", CRYPTO_SONAME, syms,
			    sizeof(syms) / sizeof(syms[0]));
}

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
		explicit_bzero(key, sizeof(*key));
	return r;
}

int rauth_hmac(const uint8_t *key, size_t klen, const struct iovec *parts, int nparts,
	       uint8_t tag[RAUTH_TAG])
{
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx;
	size_t out = 0;
	int ok;

	pthread_once(&crypto_once, crypto_load);
	if (!crypto_ok)
		return -ENOSYS;
	OSSL_PARAM params[] = {crypto.param_utf8(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
			       crypto.param_end()};
	mac = crypto.mac_fetch(NULL, "HMAC", NULL);
	ctx = mac ? crypto.ctx_new(mac) : NULL;
	ok = ctx && crypto.init(ctx, key, klen, params);
	for (int i = 0; ok && i < nparts; i++)
		ok = crypto.update(ctx, parts[i].iov_base, parts[i].iov_len);
	ok = ok && crypto.final(ctx, tag, &out, RAUTH_TAG) && out == RAUTH_TAG;
	crypto.ctx_free(ctx);
	crypto.mac_free(mac);
	return ok ? 0 : -EIO;
}

int rauth_random(uint8_t *buf, size_t len)
{
	/* The kernel's CSPRNG; blocks only until it is seeded, once per boot. */
	while (len) {
		ssize_t n = getrandom(buf, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int rauth_tag_equal(const uint8_t *a, const uint8_t *b, size_t len)
{
	/* Constant time: how much of a forged tag matched must not show. */
	volatile uint8_t diff = 0;

	for (size_t i = 0; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
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
