/*
 * The memory overcommit endpoints through the API's router (no socket):
 * GET/PUT /vm/balloon with good and hostile bodies, POST /vm/sweep, the
 * reclaim counters in GET /vm/stats, and 404 on a VM without a balloon.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "api/api_int.h"
#include "hw/pci.h"
#include "test_pci_vm.h"
#include "virtio/balloon.h"

#define RAM (64u << 20)

struct fix {
	struct vm vm;
	struct api api;
};

static int setup_common(void **state, bool balloon)
{
	struct fix *f = calloc(1, sizeof(*f));

	if (!f || test_vm_create(&f->vm, RAM) || pci_init(&f->vm))
		return -1;
	if (balloon && virtio_balloon_add(&f->vm, true))
		return -1;
	f->api.vm = &f->vm;
	pthread_mutex_init(&f->api.action_lock, NULL);
	clock_gettime(CLOCK_MONOTONIC, &f->api.t_start);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_common(state, true);
}

static int setup_none(void **state)
{
	return setup_common(state, false);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	vm_destroy(&f->vm);
	pthread_mutex_destroy(&f->api.action_lock);
	free(f);
	return 0;
}

/* One request; returns the status, *out the parsed body (caller puts it). */
static int call(struct fix *f, const char *method, const char *url, const char *body,
		struct json_object **out)
{
	const char *allow;
	int st = api_dispatch(&f->api, method, url, body ? body : "", body ? strlen(body) : 0, out,
			      &allow);

	assert_non_null(*out);
	return st;
}

static uint64_t get_u64(struct json_object *o, const char *path)
{
	char buf[128], *save = NULL, *k;
	struct json_object *cur = o;

	snprintf(buf, sizeof(buf), "%s", path);
	for (k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save))
		if (!json_object_object_get_ex(cur, k, &cur))
			fail_msg("no field %s in %s", path, json_object_to_json_string(o));
	return json_object_get_uint64(cur);
}

static void expect_status(struct fix *f, const char *method, const char *url, const char *body,
			  int want)
{
	struct json_object *o;

	assert_int_equal(call(f, method, url, body, &o), want);
	json_object_put(o);
}

static void test_no_balloon(void **state)
{
	struct fix *f = *state;
	struct json_object *o;

	expect_status(f, "GET", "/vm/balloon", NULL, 404);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 1}", 404);
	/* The sweep and the counters need no balloon. */
	assert_int_equal(call(f, "POST", "/vm/sweep", NULL, &o), 200);
	assert_int_equal(get_u64(o, "memory.guest_bytes"), RAM);
	json_object_put(o);
	assert_int_equal(call(f, "GET", "/vm/stats", NULL, &o), 200);
	get_u64(o, "memory.released_sweep_bytes");
	get_u64(o, "memory.released_balloon_bytes");
	get_u64(o, "memory.released_free_report_bytes");
	json_object_put(o);
}

static void test_put_get(void **state)
{
	struct fix *f = *state;
	struct json_object *o, *sweep;

	assert_int_equal(call(f, "PUT", "/vm/balloon", "{\"target_mib\": 16}", &o), 200);
	assert_int_equal(get_u64(o, "target_mib"), 16);
	assert_int_equal(get_u64(o, "target_pages"), 16 * 256);
	/* The target rose: a sweep ran first and is reported. */
	assert_true(json_object_object_get_ex(o, "sweep", &sweep) && sweep);
	get_u64(o, "sweep.released_bytes");
	assert_int_equal(get_u64(o, "sweeps"), 1);
	json_object_put(o);
	/* No driver: GET answers at once with what there is, marked not fresh. */
	assert_int_equal(call(f, "GET", "/vm/balloon", NULL, &o), 200);
	assert_int_equal(get_u64(o, "target_pages"), 16 * 256);
	assert_false(json_object_get_boolean(json_object_object_get(o, "stats_fresh")));
	assert_int_equal(get_u64(o, "memory.guest_bytes"), RAM);
	json_object_put(o);
	/* Lowering does not sweep. */
	assert_int_equal(call(f, "PUT", "/vm/balloon", "{\"target_mib\": 0}", &o), 200);
	assert_null(json_object_object_get(o, "sweep"));
	json_object_put(o);
	/* The device's counters show in /vm/stats. */
	assert_int_equal(call(f, "GET", "/vm/stats", NULL, &o), 200);
	assert_non_null(strstr(json_object_to_json_string(o), "\"balloon_pages\""));
	json_object_put(o);
}

static void test_hostile_bodies(void **state)
{
	struct fix *f = *state;

	expect_status(f, "PUT", "/vm/balloon", NULL, 400);
	expect_status(f, "PUT", "/vm/balloon", "{}", 400);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": -1}", 400);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 65}", 400); /* > RAM */
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 1e30}", 400);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 99999999999999999999}", 400);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": \"8\"}", 400);
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 8, \"x\": 1}", 400);
	expect_status(f, "POST", "/vm/balloon", NULL, 405);
	expect_status(f, "POST", "/vm/sweep", "{\"x\": 1}", 400);
	expect_status(f, "GET", "/vm/sweep", NULL, 405);
	/* None of that changed the target. */
	assert_int_equal(balloon_find(&f->vm) != NULL, 1);
	{
		struct balloon_info i;

		assert_int_equal(balloon_get_info(balloon_find(&f->vm), 0, &i), 0);
		assert_int_equal(i.target_pages, 0);
	}
	expect_status(f, "PUT", "/vm/balloon", "{\"target_mib\": 64}", 200);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_no_balloon, setup_none, teardown),
	    cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hostile_bodies, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
