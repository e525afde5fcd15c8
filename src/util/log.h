/* Logging and fatal errors. The logger is the only global state in tern. */
#ifndef TERN_UTIL_LOG_H
#define TERN_UTIL_LOG_H

#include <stdarg.h>
#include <stdnoreturn.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pr_err(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define pr_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define pr_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define pr_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Log once per call site: for guest-triggerable events that must not flood the log. */
#define pr_warn_once(...)                                                                          \
	do {                                                                                       \
		static int warned_;                                                                \
		if (!__atomic_exchange_n(&warned_, 1, __ATOMIC_RELAXED))                           \
			pr_warn(__VA_ARGS__);                                                      \
	} while (0)

/* Only for the top level (main, CLI parsing): everything below returns errors. */
noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
