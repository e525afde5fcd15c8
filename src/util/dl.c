#include "util/dl.h"

#include <dlfcn.h>

#include "util/log.h"

bool dl_load(const char *who, const char *soname, const struct dl_sym *syms, size_t n)
{
	void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	bool ok = true;

	if (!lib) {
		pr_err("%s: cannot load %s: %s", who, soname, dlerror());
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		*syms[i].slot = dlsym(lib, syms[i].name);
		if (!*syms[i].slot) {
			pr_err("%s: %s has no %s", who, soname, syms[i].name);
			ok = false;
		}
	}
	return ok;
}
