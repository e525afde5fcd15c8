/*
 * Block layer internals shared by the drivers (not for users of block.h).
 */
#ifndef TERN_BLOCK_BLK_INT_H
#define TERN_BLOCK_BLK_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "block/block.h"

/* Longest backing chain tern follows; deeper chains are refused as hostile. */
#define BLK_MAX_CHAIN_DEPTH 64

/* Read/write exactly len bytes at off, retrying short transfers and EINTR.
 * A read that meets end of file fills the rest with zeroes. */
int blk_fd_pread(int fd, void *buf, size_t len, uint64_t off);
int blk_fd_pwrite(int fd, const void *buf, size_t len, uint64_t off);
int blk_fd_preadv(int fd, const struct iovec *iov, int iovcnt, uint64_t off);
int blk_fd_pwritev(int fd, const struct iovec *iov, int iovcnt, uint64_t off);

/* Total length of an iovec array. */
uint64_t blk_iov_len(const struct iovec *iov, int iovcnt);
/* Copy between a flat buffer and part of an iovec array starting at byte skip. */
void blk_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, size_t len);
void blk_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf,
		      size_t len);
void blk_iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, size_t len);

/* Drivers. depth counts how many overlays sit above this image. */
int raw_open(const char *path, bool readonly, struct blockdev **out);
int qcow2_open(const char *path, bool readonly, int depth, struct blockdev **out);
int blk_open_depth(const char *spec, const char *fmt, bool readonly, int depth,
		   struct blockdev **out);

#endif
