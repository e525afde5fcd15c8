/* Internals of the control API shared by server.c (HTTP) and vm_api.c (endpoints). */
#ifndef TERN_API_API_INT_H
#define TERN_API_API_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <json-c/json.h>

#include "api/api.h"

struct MHD_Daemon;

struct api {
	struct vm *vm;
	char *path;    /* the socket file, removed by api_stop() */
	int listen_fd; /* owned by the daemon once it started */
	struct MHD_Daemon *mhd;
	pthread_mutex_t action_lock; /* one pause/resume/shutdown at a time */
	bool user_paused;	     /* under action_lock: the API holds a vm_pause() */
	struct timespec t_start;     /* CLOCK_MONOTONIC at api_start(): the uptime base */
	uint64_t nrequests, nerrors; /* atomics: requests answered, of which 4xx/5xx */
};

/*
 * Route one complete request. body is len bytes (not NUL-terminated, may be
 * empty). Returns the HTTP status and sets *out to the JSON body to send (the
 * caller puts it); for 405 *allow names the methods the path takes.
 */
int api_dispatch(struct api *api, const char *method, const char *url, const char *body, size_t len,
		 struct json_object **out, const char **allow);

/* /vm/disks and /vm/disks/{id}[/snapshot] (disks.c): arguments as for api_dispatch. */
bool api_is_disks_url(const char *url);
int api_disks(struct api *api, const char *method, const char *url, struct json_object *body,
	      struct json_object **out, const char **allow);

/* Memory overcommit (balloon_api.c): GET/PUT /vm/balloon, POST /vm/sweep. */
int api_balloon(struct api *api, bool put, struct json_object *body, struct json_object **out);
int api_sweep(struct api *api, struct json_object *body, struct json_object **out);
/* Add the reclaim counters (and the balloon's classification) to GET /vm/stats' "memory". */
void api_memory_reclaim(struct api *api, struct json_object *mem);

/* Snapshot and clones of the running VM (snap_api.c): PUT /vm/snapshot, PUT /vm/clone. */
int api_snapshot(struct api *api, struct json_object *body, struct json_object **out);
int api_clone(struct api *api, struct json_object *body, struct json_object **out);

/* Set *out to {"error": "<message>"} and return status. */
int api_error(struct json_object **out, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
