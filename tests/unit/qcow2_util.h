/* Shared helpers for the qcow2 tests: scratch directories, shell-outs, PRNG. */
#ifndef TERN_TESTS_QCOW2_UTIL_H
#define TERN_TESTS_QCOW2_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static inline char *qt_mkdtemp(void)
{
	char *d = NULL;

	if (asprintf(&d, "%s/tern-qcow2-XXXXXX", P_tmpdir) < 0 || !mkdtemp(d)) {
		free(d);
		return NULL;
	}
	return d;
}

static inline void qt_rmrf(char *dir)
{
	char *cmd = NULL;

	if (dir && asprintf(&cmd, "rm -rf '%s'", dir) > 0 && system(cmd)) {
		/* leftover scratch files are harmless */
	}
	free(cmd);
	free(dir);
}

/* Run a shell command built from a format; returns its exit status. */
__attribute__((format(printf, 1, 2))) static inline int qt_sh(const char *fmt, ...)
{
	char *cmd = NULL;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	if (r < 0)
		return -1;
	r = system(cmd);
	free(cmd);
	return r == -1 ? -1 : WEXITSTATUS(r);
}

static inline bool qt_have_qemu_img(void)
{
	return qt_sh("qemu-img --version >/dev/null 2>&1") == 0 &&
	       qt_sh("qemu-io --version >/dev/null 2>&1") == 0;
}

static inline uint64_t qt_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static inline char *qt_path(const char *dir, const char *name)
{
	char *p = NULL;

	return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

#endif
