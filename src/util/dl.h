/*
 * Libraries loaded on first use instead of linked: a linked library costs
 * every tern process its relocations and start-up (restores and clones
 * included), though only some commands use it.
 */
#ifndef TERN_UTIL_DL_H
#define TERN_UTIL_DL_H

#include <stdbool.h>
#include <stddef.h>

struct dl_sym {
	const char *name;
	void **slot; /* where the symbol's address goes */
};

/*
 * dlopen(soname) and fill every slot; logs what is missing, prefixed by who.
 * True if all were found. The library stays loaded for the process's
 * lifetime. Call once (e.g. from pthread_once).
 */
bool dl_load(const char *who, const char *soname, const struct dl_sym *syms, size_t n);

#endif
