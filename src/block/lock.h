/*
 * Image locks (docs/qcow2.md, "Image locking"): advisory open file
 * description (OFD) locks on single bytes of an image file, in the layout
 * QEMU uses, so tern and qemu-img/qemu-system see each other's locks.
 *
 * Byte 100 + i is held by whoever uses permission i, byte 200 + i by
 * whoever does not let others use it (permissions: 0 consistent read,
 * 1 write, 2 unchanged write, 3 resize). All bytes are taken as shared
 * read locks; a conflict is found by testing for an exclusive lock, which
 * only another open file description's lock can block. Two opens of one
 * image in the same process are two descriptions: they conflict like two
 * processes do.
 */
#ifndef TERN_BLOCK_LOCK_H
#define TERN_BLOCK_LOCK_H

#include <sys/types.h>

enum img_lock_mode {
	IMG_LOCK_SHARED, /* read, and let anyone write meanwhile (--force-share) */
	IMG_LOCK_READ,	 /* read: nobody may write or resize the image meanwhile */
	IMG_LOCK_WRITE,	 /* read, write, resize: nobody else may write or resize */
};

#define IMG_LOCK_PERM_BASE 100
#define IMG_LOCK_SHARED_BASE 200
#define IMG_LOCK_NPERMS 4

struct img_lock;

/*
 * Lock the image at path in mode, through a descriptor of its own. -EBUSY
 * (with a message naming the image and, when it can be found, the other
 * process) when another holder's locks conflict. A file system without OFD
 * locks gives a warning and a lock that holds nothing.
 */
int img_lock_take(const char *path, enum img_lock_mode mode, struct img_lock **out);
/* Change the mode of a held lock; on -EBUSY the lock keeps its old mode. */
int img_lock_change(struct img_lock *l, enum img_lock_mode mode);
enum img_lock_mode img_lock_mode(const struct img_lock *l);
void img_lock_release(struct img_lock *l);

/*
 * Process id of another holder of lock byte off on the file open as fd, or 0
 * when it cannot be found (OFD locks record none; found through
 * /proc/PID/fdinfo, so only processes this user may inspect).
 */
pid_t img_lock_holder(int fd, off_t off);

#endif
