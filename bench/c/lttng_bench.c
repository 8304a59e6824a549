/* trace_cost host microbenchmark, LTTng-UST side: N calls of a tracepoint
 * with a 2 x u64 payload (lttng_tp.h), timed like ud_bench.c.
 *
 *   lttng_bench enabled|disabled N REPS [CPU]
 *
 * enabled:  run under an active session with `ud_bench:ev` enabled
 *           (bench/trace_cost.py: lttng create / enable-event -u / start);
 *           waits up to 5 s for the tracepoint to become enabled and reports
 *           "enabled": false if it never did.
 * disabled: no session (the tracepoint's enabled check only). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

#include "lttng_tp.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __attribute__((noinline)) void run_tp(uint64_t n, uint64_t t0)
{
	for (uint64_t i = 0; i < n; i++)
		tracepoint(ud_bench, ev, i, t0);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s enabled|disabled N REPS [CPU]\n", argv[0]);
		return 2;
	}
	int want_enabled = !strcmp(argv[1], "enabled");
	uint64_t n = strtoull(argv[2], NULL, 0);
	int reps = atoi(argv[3]);
	if (reps > 64)
		reps = 64;
	if (argc > 4) {
		cpu_set_t s;
		CPU_ZERO(&s);
		CPU_SET(atoi(argv[4]), &s);
		if (pthread_setaffinity_np(pthread_self(), sizeof s, &s)) {
			fprintf(stderr, "cannot pin\n");
			return 1;
		}
	}
	int enabled = tracepoint_enabled(ud_bench, ev) ? 1 : 0;
	if (want_enabled) {
		uint64_t end = now_ns() + 5000000000ull;
		while (!(enabled = tracepoint_enabled(ud_bench, ev) ? 1 : 0) && now_ns() < end) {
			struct timespec d = { 0, 1000000 };
			nanosleep(&d, NULL);
		}
	}
	uint64_t t0 = __rdtsc();
	double ns[64], cyc[64];
	for (int rep = -1; rep < reps; rep++) {
		uint64_t a = now_ns(), c0 = __rdtsc();
		run_tp(n, t0);
		uint64_t c1 = __rdtsc(), b = now_ns();
		if (rep >= 0) {
			ns[rep] = (double)(b - a) / (double)n;
			cyc[rep] = (double)(c1 - c0) / (double)n;
		}
	}
	printf("{\"mode\": \"lttng_%s\", \"n\": %llu, \"enabled\": %s, \"ns_per_event\": [",
	       argv[1], (unsigned long long)n, enabled ? "true" : "false");
	for (int i = 0; i < reps; i++)
		printf("%s%.4f", i ? ", " : "", ns[i]);
	printf("], \"tsc_cycles_per_event\": [");
	for (int i = 0; i < reps; i++)
		printf("%s%.3f", i ? ", " : "", cyc[i]);
	printf("]}\n");
	return want_enabled && !enabled ? 1 : 0;
}
