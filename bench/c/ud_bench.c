/* trace_cost host microbenchmark: the undebug guest stub's ring code
 * (guest-stubs/src/trace.c etc., unmodified) vs a bare rdtsc + 32-byte store.
 *
 *   ud_bench MODE N REPS [PRODUCER_CPU [CONSUMER_CPU [POLL_GAP_CYCLES]]]
 *
 * MODE:
 *   bare      inline loop: rdtsc + 32-byte store (4 x u64) into a 512 KiB ring
 *   flight    UNDEBUG_TRACEPOINT with 2 args, flight recorder (no transport:
 *             the ring overwrites its oldest records, 1/16 ring at a time)
 *   stream    same, streaming mode: custom transport that discards the bytes;
 *             a consumer thread on CONSUMER_CPU calls undebug_trace_poll(),
 *             then waits POLL_GAP_CYCLES TSC cycles (default 20000, 0 = poll
 *             back to back).  If that thread is descheduled for longer than
 *             one ring (16384 events) records are dropped: "check": "lossy".  Without a
 *             CONSUMER_CPU the producer polls inline every 2048 events.
 *   disabled  UNDEBUG_TRACEPOINT after undebug_trace_enable(0)
 *
 * Prints one JSON object: ns/event (CLOCK_MONOTONIC) and TSC cycles/event
 * for each of REPS repetitions of N events, after one warm-up repetition. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

#include <undebug/trace.h>
#include "../../guest-stubs/src/internal.h"   /* ring header layout, for checks */

size_t host_port_nop_write(const void *buf, size_t len);

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int pin(int cpu)
{
	if (cpu < 0)
		return 0;
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

/* ---- bare floor: rdtsc + one 32-byte record store per event ------------------ */
#define BARE_BYTES (512u * 1024u)
static uint64_t bare_ring[BARE_BYTES / 8] __attribute__((aligned(4096)));
static uint64_t bare_pos;

static __attribute__((noinline)) void run_bare(uint64_t n, uint64_t t0)
{
	uint64_t pos = bare_pos;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t *d = (uint64_t *)((char *)bare_ring + (pos & (BARE_BYTES - 1)));
		d[0] = __rdtsc();
		d[1] = 7u | (uint64_t)4 << 24 | (uint64_t)(uint16_t)i << 32;
		d[2] = i;
		d[3] = t0;
		pos += 32;
		__asm__ volatile("" ::: "memory");
	}
	bare_pos = pos;
}

/* ---- the stub ----------------------------------------------------------------- */
static __attribute__((noinline)) void run_tp(uint64_t n, uint64_t t0)
{
	for (uint64_t i = 0; i < n; i++)
		UNDEBUG_TRACEPOINT(host_bench, "i=%lu t0=%lu", i, t0);
}

/* inline-consumer variant (single CPU): poll every 2048 events, as refguest's
 * trace_bench does */
static __attribute__((noinline)) void run_tp_inline_poll(uint64_t n, uint64_t t0)
{
	for (uint64_t i = 0; i < n; i++) {
		if ((i & 2047) == 0)
			undebug_trace_poll();
		UNDEBUG_TRACEPOINT(host_bench, "i=%lu t0=%lu", i, t0);
	}
}

static volatile int consumer_stop;
static int consumer_cpu = -1;
static uint64_t consumer_gap = 20000;         /* TSC cycles between polls */

static void *consumer_main(void *arg)
{
	(void)arg;
	pin(consumer_cpu);
	while (!__atomic_load_n(&consumer_stop, __ATOMIC_ACQUIRE)) {
		undebug_trace_poll();
		uint64_t end = __rdtsc() + consumer_gap;
		while (__rdtsc() < end)
			_mm_pause();
	}
	undebug_trace_poll();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s bare|flight|stream|disabled N REPS [CPU [CONSUMER_CPU]]\n",
			argv[0]);
		return 2;
	}
	const char *mode = argv[1];
	uint64_t n = strtoull(argv[2], NULL, 0);
	int reps = atoi(argv[3]);
	int cpu = argc > 4 ? atoi(argv[4]) : -1;
	consumer_cpu = argc > 5 ? atoi(argv[5]) : -1;
	if (argc > 6)
		consumer_gap = strtoull(argv[6], NULL, 0);
	if (pin(cpu)) {
		fprintf(stderr, "cannot pin to cpu %d\n", cpu);
		return 1;
	}
	int bare = !strcmp(mode, "bare"), flight = !strcmp(mode, "flight"),
	    stream = !strcmp(mode, "stream"), disabled = !strcmp(mode, "disabled");
	if (!(bare || flight || stream || disabled)) {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	static const uint8_t build_id[20] = { 1, 2, 3 };
	if (undebug_trace_init(2000000000ull, __rdtsc(), 1, build_id, sizeof build_id)) {
		fprintf(stderr, "undebug_trace_init failed\n");
		return 1;
	}
	pthread_t consumer;
	int have_consumer = 0;
	if (stream) {
		if (undebug_trace_use_custom(host_port_nop_write)) {
			fprintf(stderr, "undebug_trace_use_custom failed\n");
			return 1;
		}
		if (consumer_cpu >= 0) {
			pthread_create(&consumer, NULL, consumer_main, NULL);
			have_consumer = 1;
			while (!__atomic_load_n(&undebug_trace_rings[0].attached, __ATOMIC_ACQUIRE))
				_mm_pause();
		} else {
			undebug_trace_poll();
		}
		if (undebug_trace_rings[0].mode != RING_STREAM) {
			fprintf(stderr, "ring not in streaming mode\n");
			return 1;
		}
	}
	if (disabled)
		undebug_trace_enable(0);

	struct undebug_ring *r = &undebug_trace_rings[0];
	uint64_t t0 = __rdtsc();
	double ns[64], cyc[64];
	if (reps > 64)
		reps = 64;
	uint64_t written0 = 0, lost0 = 0;
	for (int rep = -1; rep < reps; rep++) {       /* rep -1: warm-up */
		if (rep == 0) {
			written0 = r->written;
			lost0 = undebug_trace_lost_total();
		}
		uint64_t a = now_ns(), c0 = __rdtsc();
		if (bare)
			run_bare(n, t0);
		else if (stream && !have_consumer)
			run_tp_inline_poll(n, t0);
		else
			run_tp(n, t0);
		uint64_t c1 = __rdtsc(), b = now_ns();
		if (rep >= 0) {
			ns[rep] = (double)(b - a) / (double)n;
			cyc[rep] = (double)(c1 - c0) / (double)n;
		}
	}
	if (have_consumer) {
		__atomic_store_n(&consumer_stop, 1, __ATOMIC_RELEASE);
		pthread_join(consumer, NULL);
	}

	/* sanity: the last record in the ring is ours, with our arguments */
	const char *check = "n/a";
	uint64_t written = r->written - written0, lost = undebug_trace_lost_total() - lost0;
	if (flight || stream) {
		const uint64_t *d = (const uint64_t *)(r->data + ((r->head - 32) & (r->size - 1)));
		unsigned nslots = (unsigned)(d[1] >> 24) & 0xff;
		if (lost)       /* streaming: the consumer fell a whole ring behind (the
				 * last event may be among the dropped ones) */
			check = written + lost >= (uint64_t)reps * n ? "lossy" : "MISMATCH";
		else if (!(nslots == 2 && d[2] == n - 1 && d[3] == t0))
			check = "MISMATCH";
		else
			check = written >= (uint64_t)reps * n ? "ok" : "MISMATCH";
	} else if (disabled) {
		check = r->written == 0 ? "ok" : "MISMATCH";
	} else {
		const uint64_t *d = (const uint64_t *)((char *)bare_ring + ((bare_pos - 32) & (BARE_BYTES - 1)));
		check = (d[2] == n - 1 && d[3] == t0) ? "ok" : "MISMATCH";
	}
	printf("{\"mode\": \"%s\", \"n\": %llu, \"cpu\": %d, \"consumer_cpu\": %d, "
	       "\"consumer\": \"%s\", \"records_written\": %llu, \"lost\": %llu, "
	       "\"check\": \"%s\", \"ns_per_event\": [",
	       mode, (unsigned long long)n, cpu, consumer_cpu,
	       stream ? (have_consumer ? "thread" : "inline") : "none",
	       (unsigned long long)written, (unsigned long long)lost, check);
	for (int i = 0; i < reps; i++)
		printf("%s%.4f", i ? ", " : "", ns[i]);
	printf("], \"tsc_cycles_per_event\": [");
	for (int i = 0; i < reps; i++)
		printf("%s%.3f", i ? ", " : "", cyc[i]);
	printf("]}\n");
	return strcmp(check, "MISMATCH") ? 0 : 1;
}
