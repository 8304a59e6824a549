/* Host harness for the portable parts of undebug's Unikraft port
 * (guest-stubs/unikraft/tidmap.c, ukport.h), built and run by
 * tests/test_unikraft_stub.py.  It prints what the functions return, one JSON value per
 * line; the test checks it.
 *
 *   tidmap                       the scenarios below (built with UNDEBUG_TIDMAP_SLOTS=64)
 *   hz DTSC DNS                  undebug_uk_tsc_hz
 *   boot TSC NS HZ               undebug_uk_boot_tsc
 *   buildid FILE                 undebug_uk_build_id over the file's bytes (hex or null) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tidmap.h"
#include "ukport.h"

static char threads[1000][208];      /* stand-ins for struct uk_thread allocations */

static void print_list(const char *name, const uint16_t *ids, unsigned n)
{
	printf("{\"%s\": [", name);
	for (unsigned i = 0; i < n; i++)
		printf("%s%u", i ? ", " : "", ids[i]);
	printf("]}\n");
}

static void count(const void *key, uint16_t id, void *arg)
{
	(void)key;
	(void)id;
	++*(unsigned *)arg;
}

static int tidmap(void)
{
	uint16_t ids[UNDEBUG_TIDMAP_SLOTS + 1], again[UNDEBUG_TIDMAP_SLOTS];
	unsigned n = UNDEBUG_TIDMAP_SLOTS;
	for (unsigned i = 0; i < n; i++)
		ids[i] = undebug_tidmap_add(threads[i]);
	ids[n] = undebug_tidmap_add(threads[n]);            /* every slot live: 0 */
	print_list("added", ids, n + 1);
	for (unsigned i = 0; i < n; i++)
		again[i] = undebug_tidmap_get(threads[i]);
	print_list("found", again, n);
	unsigned live = 0;
	undebug_tidmap_foreach(count, &live);
	printf("{\"live\": %u}\n", live);

	undebug_tidmap_exit(threads[5]);
	printf("{\"exited_still_found\": %u}\n", undebug_tidmap_get(threads[5]));
	live = 0;
	undebug_tidmap_foreach(count, &live);
	printf("{\"live_after_exit\": %u}\n", live);
	uint16_t fresh = undebug_tidmap_add(threads[n + 1]);  /* takes the exited slot */
	printf("{\"fresh\": %u, \"exited_after_reuse\": %u}\n", fresh,
	       undebug_tidmap_get(threads[5]));

	undebug_tidmap_exit(threads[7]);
	printf("{\"readded_old\": %u, \"readded_new\": %u}\n", again[7],
	       undebug_tidmap_add(threads[7]));          /* the same address, a new thread */

	/* 70000 short-lived threads on 8 addresses next to long-lived ones: ids wrap */
	uint16_t churn_min = 65535, churn_max = 0;
	unsigned clashes = 0, zeros = 0;
	for (unsigned i = 0; i < 70000; i++) {
		const void *k = threads[n + 2 + i % 8];
		undebug_tidmap_exit(threads[n + 1]);        /* keep one slot free to churn in */
		uint16_t id = undebug_tidmap_add(k);
		if (!id)
			zeros++;
		for (unsigned j = 0; j < n; j++)
			if (j != 5 && j != 7 && id == again[j])
				clashes++;
		if (id < churn_min)
			churn_min = id;
		if (id > churn_max)
			churn_max = id;
		undebug_tidmap_exit(k);
	}
	printf("{\"churn_zeros\": %u, \"churn_clashes\": %u, \"churn_min\": %u, \"churn_max\": %u}\n",
	       zeros, clashes, churn_min, churn_max);
	printf("{\"null_add\": %u, \"null_get\": %u, \"unknown_get\": %u}\n",
	       undebug_tidmap_add(NULL), undebug_tidmap_get(NULL),
	       undebug_tidmap_get(threads[999]));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "tidmap"))
		return tidmap();
	if (argc == 4 && !strcmp(argv[1], "hz")) {
		printf("%llu\n", (unsigned long long)undebug_uk_tsc_hz(strtoull(argv[2], 0, 0),
								      strtoull(argv[3], 0, 0)));
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "boot")) {
		printf("%llu\n", (unsigned long long)undebug_uk_boot_tsc(
			strtoull(argv[2], 0, 0), strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0)));
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "buildid")) {
		static uint8_t buf[4096];
		FILE *f = fopen(argv[2], "rb");
		if (!f)
			return 2;
		size_t len = fread(buf, 1, sizeof buf, f);
		fclose(f);
		const uint8_t *desc = 0;
		unsigned n = undebug_uk_build_id(buf, len, &desc);
		if (!n) {
			printf("null\n");
			return 0;
		}
		printf("\"");
		for (unsigned i = 0; i < n; i++)
			printf("%02x", desc[i]);
		printf("\"\n");
		return 0;
	}
	return 2;
}
