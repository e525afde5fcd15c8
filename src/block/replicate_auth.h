/*
 * Authentication of the replication protocol (docs/replication.md): a
 * pre-shared key, an HMAC-SHA256 challenge-response in both directions,
 * and a session key that tags every message and data chunk afterwards.
 */
#ifndef TERN_BLOCK_REPLICATE_AUTH_H
#define TERN_BLOCK_REPLICATE_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define RAUTH_KEY_MIN 16   /* bytes: shorter keys are guessable */
#define RAUTH_KEY_MAX 4096 /* bytes */
#define RAUTH_NONCE 32
#define RAUTH_TAG 32 /* HMAC-SHA256 */

struct replicate_key {
	size_t len;
	uint8_t bytes[RAUTH_KEY_MAX];
};

/*
 * Read a key file: its bytes, trailing newlines and spaces dropped. Refused
 * (with a message) when shorter than RAUTH_KEY_MIN, longer than
 * RAUTH_KEY_MAX, or readable or writable by others than its owner.
 */
int replicate_key_load(const char *path, struct replicate_key *key);

/* HMAC-SHA256 over the concatenation of parts. */
int rauth_hmac(const uint8_t *key, size_t klen, const struct iovec *parts, int nparts,
	       uint8_t tag[RAUTH_TAG]);
/* Unpredictable bytes for a nonce. */
int rauth_random(uint8_t *buf, size_t len);
/* Equal tags, in time that does not depend on where they differ. */
int rauth_tag_equal(const uint8_t *a, const uint8_t *b, size_t len);

/* Lower-case hex of len bytes into out (2 * len + 1 bytes). */
void rauth_hex(const uint8_t *in, size_t len, char *out);
/* Exactly 2 * len hex digits into len bytes; -EINVAL otherwise. */
int rauth_unhex(const char *in, uint8_t *out, size_t len);

#endif
