/*
 * Image locks: OFD byte locks in QEMU's layout (lock.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "block/lock.h"
#include "util/log.h"

enum { PERM_READ = 1, PERM_WRITE = 2, PERM_WRITE_UNCHANGED = 4, PERM_RESIZE = 8 };

static const char *const perm_names[IMG_LOCK_NPERMS] = {"consistent read", "write",
							"write unchanged", "resize"};

struct img_lock {
	int fd;
	bool held; /* false: the file system has no OFD locks */
	enum img_lock_mode mode;
	char *path;
};

/* What a mode uses, and what it does not let others use. */
static void mode_perms(enum img_lock_mode mode, unsigned *perm, unsigned *unshared)
{
	*perm = PERM_READ;
	*unshared = PERM_WRITE | PERM_RESIZE;
	if (mode == IMG_LOCK_WRITE)
		*perm |= PERM_WRITE | PERM_RESIZE;
	else if (mode == IMG_LOCK_SHARED)
		*unshared = 0;
}

static int byte_lock(int fd, off_t off, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 when another open file description holds a lock on byte off. */
static int byte_taken(int fd, off_t off)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}

/* Hold exactly the bytes of mode: a shared lock on each, the others released. */
static int apply_bytes(int fd, enum img_lock_mode mode)
{
	unsigned perm, unshared;
	int r = 0;

	mode_perms(mode, &perm, &unshared);
	for (int i = 0; i < IMG_LOCK_NPERMS && r == 0; i++) {
		r = byte_lock(fd, IMG_LOCK_PERM_BASE + i, (perm >> i) & 1 ? F_RDLCK : F_UNLCK);
		if (r == 0)
			r = byte_lock(fd, IMG_LOCK_SHARED_BASE + i,
				      (unshared >> i) & 1 ? F_RDLCK : F_UNLCK);
	}
	return r;
}

/*
 * Find a lock of another holder that conflicts with mode: a permission we
 * use that someone does not share, or one we do not share that someone
 * uses. Returns 1 and the byte, 0 for none, or -errno.
 */
static int find_conflict(int fd, enum img_lock_mode mode, off_t *byte)
{
	unsigned perm, unshared;

	mode_perms(mode, &perm, &unshared);
	for (int i = 0; i < IMG_LOCK_NPERMS; i++) {
		off_t offs[2] = {IMG_LOCK_SHARED_BASE + i, IMG_LOCK_PERM_BASE + i};
		bool want[2] = {(perm >> i) & 1, (unshared >> i) & 1};

		for (int k = 0; k < 2; k++) {
			int r = want[k] ? byte_taken(fd, offs[k]) : 0;

			if (r != 0) {
				*byte = offs[k];
				return r;
			}
		}
	}
	return 0;
}

static void report_conflict(const struct img_lock *l, enum img_lock_mode mode, off_t byte)
{
	int i = (int)(byte % 100);
	const char *perm = i < IMG_LOCK_NPERMS ? perm_names[i] : "?";
	pid_t pid = img_lock_holder(l->fd, byte);
	char who[64] = "another process", why[64];

	if (pid == getpid())
		snprintf(who, sizeof(who), "another open in this process (pid %d)", (int)pid);
	else if (pid > 0)
		snprintf(who, sizeof(who), "another process (pid %d)", (int)pid);
	if (byte >= IMG_LOCK_SHARED_BASE)
		snprintf(why, sizeof(why), "it does not share '%s'", perm);
	else
		snprintf(why, sizeof(why), "it has it open for '%s'", perm);
	if (mode == IMG_LOCK_WRITE)
		pr_err("%s: image is in use by %s (%s): refusing to write it", l->path, who, why);
	else
		pr_err("%s: image is in use by %s (%s); use --force-share (-U) to open it "
		       "read-only anyway",
		       l->path, who, why);
}

/* Move the held bytes to mode, or leave them as they were and return -EBUSY. */
static int set_mode(struct img_lock *l, enum img_lock_mode mode)
{
	off_t byte = 0;
	int r;

	/* Lock first, then test: of two racing openers, at least one sees the other. */
	r = apply_bytes(l->fd, mode);
	if (r == 0)
		r = find_conflict(l->fd, mode, &byte);
	if (r == 0) {
		l->mode = mode;
		return 0;
	}
	if (r > 0) {
		report_conflict(l, mode, byte);
		r = -EBUSY;
	} else {
		pr_err("%s: cannot lock the image: %s", l->path, strerror(-r));
	}
	apply_bytes(l->fd, l->mode);
	return r;
}

/* EINVAL: a kernel without OFD locks; ENOLCK/EOPNOTSUPP: a file system without locks. */
static bool no_lock_support(int err)
{
	return err == -EINVAL || err == -ENOLCK || err == -EOPNOTSUPP;
}

int img_lock_take(const char *path, enum img_lock_mode mode, struct img_lock **out)
{
	struct img_lock *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return -ENOMEM;
	l->path = strdup(path);
	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0 || !l->path) {
		r = l->path ? -errno : -ENOMEM;
		if (r != -ENOMEM)
			pr_err("%s: cannot open: %s", path, strerror(-r));
		goto fail;
	}
	/* Start from "holds nothing", so a refusal can fall back to it. */
	l->mode = IMG_LOCK_SHARED;
	r = byte_taken(l->fd, IMG_LOCK_PERM_BASE);
	if (r < 0 && no_lock_support(r)) {
		pr_warn("%s: the file system has no OFD locks: the image is not locked", path);
		l->mode = mode;
		*out = l;
		return 0;
	}
	l->held = true;
	r = set_mode(l, mode);
	if (r < 0)
		goto fail;
	*out = l;
	return 0;
fail:
	img_lock_release(l);
	return r;
}

int img_lock_change(struct img_lock *l, enum img_lock_mode mode)
{
	if (!l->held) {
		l->mode = mode;
		return 0;
	}
	return l->mode == mode ? 0 : set_mode(l, mode);
}

enum img_lock_mode img_lock_mode(const struct img_lock *l)
{
	return l->mode;
}

void img_lock_release(struct img_lock *l)
{
	if (!l)
		return;
	/* Closing the only descriptor of the description drops its locks. */
	if (l->fd >= 0)
		close(l->fd);
	free(l->path);
	free(l);
}

/* ---- who holds it ---- */

/* Does an fdinfo file list a lock on file id covering byte off? */
static bool fdinfo_has_lock(const char *path, const char *id, off_t off)
{
	char line[256];
	bool found = false;
	FILE *f = fopen(path, "re");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *p = strstr(line, id), end[24];
		long long start;

		if (strncmp(line, "lock:", 5) || !p)
			continue;
		if (sscanf(p + strlen(id), "%lld %23s", &start, end) != 2)
			continue;
		found = start <= off && (!strcmp(end, "EOF") || atoll(end) >= off);
	}
	fclose(f);
	return found;
}

/* Scan one process's descriptors; own is the descriptor to ignore (ours). */
static bool pid_holds(pid_t pid, const char *id, off_t off, int own)
{
	char dir[64], path[96];
	struct dirent *e;
	bool found = false;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fdinfo", (int)pid);
	d = opendir(dir);
	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] == '.' || (pid == getpid() && atoi(e->d_name) == own))
			continue;
		snprintf(path, sizeof(path), "%s/%.20s", dir, e->d_name);
		found = fdinfo_has_lock(path, id, off);
	}
	closedir(d);
	return found;
}

pid_t img_lock_holder(int fd, off_t off)
{
	char id[64];
	struct stat st;
	struct dirent *e;
	pid_t found = 0;
	DIR *proc;

	if (fstat(fd, &st) < 0)
		return 0;
	/* The form /proc/locks and fdinfo use: " MAJ:MIN:INODE " in hex and decimal. */
	snprintf(id, sizeof(id), " %02x:%02x:%llu ", major(st.st_dev), minor(st.st_dev),
		 (unsigned long long)st.st_ino);
	proc = opendir("/proc");
	if (!proc)
		return 0;
	while (!found && (e = readdir(proc))) {
		pid_t pid = (pid_t)atoi(e->d_name);

		if (pid > 0 && pid_holds(pid, id, off, fd))
			found = pid;
	}
	closedir(proc);
	return found;
}
