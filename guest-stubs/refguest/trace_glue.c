/* refguest side of the undebug tracing stub (guest-stubs/): the porting
 * interface (CPU index, current thread), set-up, transport choice from the
 * command line, and the trace_bench / trace_flood load generators.
 *
 * Options (-append):
 *   trace=virtio|uart|e9|ring|off   default: virtio if a virtio-serial device
 *                                   is found, else the flight recorder only
 *                                   (ring); off = tracepoints disabled
 *   trace_bench=N   after ready, one thread per CPU emits N 2-argument
 *                   events, waiting for ring room (lossless while the host
 *                   keeps up); prints
 *                   "refguest: trace_bench done events=<n> cycles=<c>"
 *   trace_flood=N   same without waiting (overload: drops are counted);
 *                   prints "refguest: trace_flood done events=<n> cycles=<c> lost=<l> loop_cycles=<s>"
 *                   and, over trace=uart|e9, "refguest: trace flush polls=<p>
 *                   deferred=<d> stalled=<s> bytes=<b> max_poll_us=<u>" (the flusher's
 *                   per-poll budget at work; undebug_trace_flush_stats())
 * cycles: TSC cycles from the first generator thread's start to the last
 * one's end; loop_cycles: sum over threads of their own loop time. */
#include "kernel.h"

enum { TRACE_DEFAULT, TRACE_VIRTIO, TRACE_UART, TRACE_E9, TRACE_RING, TRACE_OFF };
static const char *const trace_names[] = { "default", "virtio", "uart", "e9", "ring", "off" };
int opt_trace = TRACE_DEFAULT;
uint64_t opt_trace_bench, opt_trace_flood;

extern char __build_id_note[];

/* ---- porting interface ------------------------------------------------------ */
unsigned undebug_os_cpu(void)
{
	return this_cpu()->index;
}

uint64_t undebug_os_thread(void)
{
	struct thread *t = this_cpu()->current;
	return t ? t->id : 0;
}

/* ---- options ------------------------------------------------------------------ */
static bool parse_count(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return true;
}

bool trace_parse_option(const char *key, const char *val)
{
	if (!strcmp(key, "trace")) {
		for (unsigned i = 1; i < sizeof trace_names / sizeof *trace_names; i++) {
			if (!strcmp(val, trace_names[i])) {
				opt_trace = (int)i;
				return true;
			}
		}
		kprintf("refguest: warning: bad value '%s' for trace (using default)\n", val);
		return true;
	}
	if (!strcmp(key, "trace_flush_bytes") || !strcmp(key, "trace_flush_ms")) {
		static uint32_t flush[2] = { UNDEBUG_FLUSH_BYTES, UNDEBUG_FLUSH_MS };
		uint64_t v;
		int ms = !strcmp(key, "trace_flush_ms");
		if (parse_count(val, &v) && v <= (ms ? 60000u : (1u << 20)))
			flush[ms] = (uint32_t)v;
		else
			kprintf("refguest: warning: bad value '%s' for %s (using %u)\n", val, key,
				flush[ms]);
		undebug_trace_set_flush(flush[0], flush[1]);
		return true;
	}
	uint64_t *dst = !strcmp(key, "trace_bench") ? &opt_trace_bench :
			!strcmp(key, "trace_flood") ? &opt_trace_flood : NULL;
	if (!dst)
		return false;
	uint64_t v;
	if (parse_count(val, &v) && v < (1ULL << 40))
		*dst = v;
	else
		kprintf("refguest: warning: bad value '%s' for %s (using 0)\n", val, key);
	return true;
}

/* ---- set-up ---------------------------------------------------------------------- */
void trace_setup(void)
{
	/* GNU build-id note: namesz, descsz, type, "GNU\0", descriptor */
	const uint32_t *n = (const uint32_t *)__build_id_note;
	const uint8_t *desc = (const uint8_t *)__build_id_note + 12 + ((n[0] + 3) & ~3u);
	unsigned len = n[2] == 3 ? n[1] : 0;
	if (undebug_trace_init(tsc_khz * 1000, boot_tsc, cpus_found, desc, len))
		return;
	struct thread *main_thread = this_cpu()->current;
	undebug_thread_name(main_thread->id, main_thread->name);   /* created before init */
	switch (opt_trace) {
	case TRACE_OFF:
		undebug_trace_enable(0);
		break;
	case TRACE_RING:
		break;
	case TRACE_UART:
		if (undebug_trace_use_uart(0x2f8))
			kprintf("refguest: warning: trace=uart: no UART at 0x2f8 (flight recorder only)\n");
		break;
	case TRACE_E9:
		if (undebug_trace_use_e9())
			kprintf("refguest: warning: trace=e9: no debugcon at 0xe9 (flight recorder only)\n");
		break;
	case TRACE_VIRTIO:
		if (undebug_trace_use_virtio())
			kprintf("refguest: warning: trace=virtio: no virtio-serial device (flight recorder only)\n");
		break;
	default:
		(void)undebug_trace_use_virtio();
		break;
	}
}

/* ---- load generators ------------------------------------------------------------ */
static volatile unsigned bench_left;
static uint64_t bench_t0 = UINT64_MAX, bench_t1, bench_events, bench_loop_cycles;
static int bench_flood;

static void bench_main(void *arg)
{
	(void)arg;
	uint64_t n = bench_flood ? opt_trace_flood : opt_trace_bench;
	uint64_t t0 = rdtsc();
	uint64_t expected = 0;
	uint64_t prev = __atomic_load_n(&bench_t0, __ATOMIC_RELAXED);
	while (t0 < prev && !__atomic_compare_exchange_n(&bench_t0, &prev, t0, false,
							 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	if (!bench_flood) {
		for (uint64_t i = 0; i < n; i++) {
			if ((i & 63) == 0) {
				/* hand a batch to the transport every 2048 events (64 KiB),
				 * and wait for room for the next 64 events (+ in-band records) */
				if ((i & 2047) == 0)
					undebug_trace_poll();
				while (undebug_trace_room() < 64 * 32 + 1024) {
					undebug_trace_poll();
					cpu_relax();
				}
			}
			UNDEBUG_TRACEPOINT(trace_bench, "i=%lu t0=%lu", i, t0);
		}
	} else {
		for (uint64_t i = 0; i < n; i++)
			UNDEBUG_TRACEPOINT(trace_flood, "i=%lu t0=%lu", i, t0);
	}
	uint64_t t1 = rdtsc();
	expected = n;
	__atomic_fetch_add(&bench_events, expected, __ATOMIC_RELAXED);
	__atomic_fetch_add(&bench_loop_cycles, t1 - t0, __ATOMIC_RELAXED);
	prev = __atomic_load_n(&bench_t1, __ATOMIC_RELAXED);
	while (t1 > prev && !__atomic_compare_exchange_n(&bench_t1, &prev, t1, false,
							 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	if (__atomic_sub_fetch(&bench_left, 1, __ATOMIC_ACQ_REL) == 0) {
		/* cycles: TSC from the first thread's start to the last one's end */
		uint64_t cycles = bench_t1 - bench_t0;
		if (bench_flood)
			kprintf("refguest: trace_flood done events=%lu cycles=%lu lost=%lu loop_cycles=%lu\n",
				bench_events, cycles, undebug_trace_lost_total(), bench_loop_cycles);
		if (bench_flood && (opt_trace == TRACE_UART || opt_trace == TRACE_E9)) {
			struct undebug_trace_flush_stats f;
			undebug_trace_flush_stats(&f);
			kprintf("refguest: trace flush polls=%lu deferred=%lu stalled=%lu bytes=%lu "
				"max_poll_us=%lu\n", f.polls, f.deferred_polls, f.stalled_polls,
				f.bytes_sent, f.max_poll_cycles * 1000 / (tsc_khz ? tsc_khz : 1));
		}
		else
			kprintf("refguest: trace_bench done events=%lu cycles=%lu\n",
				bench_events, cycles);
	}
}

void trace_start_bench(void)
{
	if (!opt_trace_bench && !opt_trace_flood)
		return;
	bench_flood = opt_trace_bench == 0;
	bench_left = cpu_count;
	for (unsigned i = 0; i < cpu_count; i++) {
		char name[32];
		ksnprintf(name, sizeof name, "trace-bench-%u", i);
		thread_create(name, bench_main, NULL, 1);
	}
}
