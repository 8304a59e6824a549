/* refguest main: command line, boot sequence, the worker and planted
 * threads, heartbeat / run_for supervisor (the `main` thread) and the
 * planted crash kinds. */
#include "kernel.h"

/* ---- planted globals (read by the host debugger) -------------------------- */
/* The two globals the tests watch live alone on their page (refguest.ld): QEMU 7.2
 * under TCG with -smp > 1 aborted ("qemu_mutex_lock_iothread_impl: assertion failed")
 * when, after a write watchpoint was hit and deleted, another watchpoint was set on the
 * page that also held the IDT (most likely a second vCPU's stale hit met an interrupt
 * reading the IDT); with the IDT beside these counters, ~1 test run in 4 lost its QEMU.
 * docs/cli.md (watch) tells users. */
#define WATCHED __attribute__((section(".bss.watched")))
WATCHED volatile uint64_t planted_counter; /* 0x5eed000000000000 at boot, +1 per request */
WATCHED uint64_t requests_handled;
#define PLANTED_COUNTER_SEED 0x5eed000000000000ULL

enum crash_kind {
	CRASH_NONE, CRASH_NULL, CRASH_PANIC, CRASH_ASSERT, CRASH_STACK_OVERFLOW,
	CRASH_DIV0, CRASH_TRIPLE_FAULT, CRASH_HANG, CRASH_OOM,
};
static const char *const crash_names[] = {
	"none", "null", "panic", "assert", "stack-overflow", "div0",
	"triple-fault", "hang", "oom",
};

/* parsed command line */
char boot_cmdline[1024];
#define CMDLINE_SCAN_MAX (64u << 10)     /* how far past it we look for the given one's end */
unsigned opt_threads = 4;
enum crash_kind opt_crash = CRASH_NONE;
uint64_t opt_crash_after = 500;
uint64_t opt_run_for = 0;
int opt_corrupt_cyclic;
char opt_traceparent[64];                /* traceparent=TP: each request's remote parent */

volatile int crash_now;                  /* set by main when the crash is due */
static int crash_claimed;
volatile unsigned workers_started;
uint64_t ready_uptime_ms;

struct thread *sleeper_thread, *blocked_thread, *short_lived_thread, *evil_thread;
static const char evil_name[] = "evil\x1b]0;owned\x07";

/* ---- command line ---------------------------------------------------------- */
static bool parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return true;
}

static void parse_option(char *tok)
{
	char *val = tok;
	while (*val && *val != '=')
		val++;
	bool has_val = *val == '=';
	if (has_val)
		*val++ = 0;
	uint64_t v;
	if (!strcmp(tok, "threads") && has_val) {
		if (!parse_u64(val, &v)) {
			kprintf("refguest: warning: bad value '%s' for threads (using %u)\n", val, opt_threads);
		} else if (v > MAX_WORKERS) {
			kprintf("refguest: warning: threads=%s too large, clamped to %u\n", val, MAX_WORKERS);
			opt_threads = MAX_WORKERS;
		} else {
			opt_threads = (unsigned)v;
		}
	} else if (!strcmp(tok, "crash") && has_val) {
		for (unsigned i = 0; i < sizeof crash_names / sizeof *crash_names; i++) {
			if (!strcmp(val, crash_names[i])) {
				opt_crash = (enum crash_kind)i;
				return;
			}
		}
		kprintf("refguest: warning: bad value '%s' for crash (using none)\n", val);
		opt_crash = CRASH_NONE;
	} else if (!strcmp(tok, "crash_after") && has_val) {
		if (parse_u64(val, &v) && v < (1ULL << 40))
			opt_crash_after = v;
		else
			kprintf("refguest: warning: bad value '%s' for crash_after (using %lu)\n",
				val, opt_crash_after);
	} else if (!strcmp(tok, "run_for") && has_val) {
		if (parse_u64(val, &v) && v < (1ULL << 40))
			opt_run_for = v;
		else
			kprintf("refguest: warning: bad value '%s' for run_for (using %lu)\n",
				val, opt_run_for);
	} else if (!strcmp(tok, "traceparent") && has_val) {
		/* kept as given (at most 63 bytes): the host checks it, as for a header */
		unsigned n = 0;
		while (val[n] && n < sizeof opt_traceparent - 1) {
			opt_traceparent[n] = val[n];
			n++;
		}
		opt_traceparent[n] = 0;
	} else if (has_val && trace_parse_option(tok, val)) {
		/* trace=..., trace_bench=N, trace_flood=N (trace_glue.c) */
	} else if (!strcmp(tok, "corrupt") && has_val) {
		if (!strcmp(val, "cyclic-threads"))
			opt_corrupt_cyclic = 1;
		else if (!strcmp(val, "cyclic-pcbs"))
			opt_corrupt_cyclic_pcbs = 1;
		else
			kprintf("refguest: warning: bad value '%s' for corrupt (ignored)\n", val);
	} else if (!strcmp(tok, "net") && has_val) {
		if (!strcmp(val, "auto"))
			opt_net = NET_AUTO;
		else if (!strcmp(val, "on"))
			opt_net = NET_ON;
		else if (!strcmp(val, "off"))
			opt_net = NET_OFF;
		else
		{
			kprintf("refguest: warning: bad value '%s' for net (using auto)\n", val);
			opt_net = NET_AUTO;
		}
	} else {
		kprintf("refguest: warning: unknown option '%s'\n", tok);
	}
}

static void parse_cmdline(void)
{
	static char copy[sizeof boot_cmdline];
	memcpy(copy, boot_cmdline, sizeof copy);
	char *p = copy;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		if (!*p)
			break;
		char *tok = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
		if (*p)
			*p++ = 0;
		parse_option(tok);
	}
}

/* ---- workers ------------------------------------------------------------------ */
struct worker {
	unsigned index;
	uint8_t *buf;            /* heap buffer checksummed by every request */
	size_t len;
	uint64_t rng;
	uint64_t last_sum;
};
#define WORKER_BUF_LEN 512

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}


void crash_null(void);
void crash_panic(void);
void crash_assert(void);
void crash_stack_overflow(void);
void crash_div0(void);
void crash_triple_fault(void);
void crash_hang(void);
void crash_oom(void);

__attribute__((noinline)) uint64_t checksum_block(const uint8_t *p, size_t n)
{
	uint64_t a = 1, b = 0;
	for (size_t i = 0; i < n; i++) {
		a = (a + p[i]) % 65521;
		b = (b + a) % 65521;
	}
	return (b << 16) | a;
}

static uint64_t next_request_id;

__attribute__((noinline)) void handle_request(struct worker *w)
{
	uint64_t req_id = __atomic_fetch_add(&next_request_id, 1, __ATOMIC_RELAXED);
	/* as a server would with a request's traceparent header: the span joins its trace */
	UNDEBUG_SPAN_BEGIN_CTX(handle_request, opt_traceparent, req_id);
	/* the planted crash: worker_main -> handle_request -> crash_<kind> */
	if (crash_now && !__atomic_exchange_n(&crash_claimed, 1, __ATOMIC_SEQ_CST)) {
		switch (opt_crash) {
		case CRASH_NULL: crash_null(); break;
		case CRASH_PANIC: crash_panic(); break;
		case CRASH_ASSERT: crash_assert(); break;
		case CRASH_STACK_OVERFLOW: crash_stack_overflow(); break;
		case CRASH_DIV0: crash_div0(); break;
		case CRASH_TRIPLE_FAULT: crash_triple_fault(); break;
		case CRASH_HANG: crash_hang(); break;
		case CRASH_OOM: crash_oom(); break;
		case CRASH_NONE: break;
		}
	}
	uint64_t *req = kmalloc(64);          /* a short-lived request object */
	UNDEBUG_SPAN_BEGIN(checksum, w->len);  /* a child span of every request */
	w->last_sum = checksum_block(w->buf, w->len);
	UNDEBUG_SPAN_END(checksum);
	if (req) {
		req[0] = w->last_sum;
		kfree(req);
	}
	__atomic_fetch_add(&requests_handled, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&planted_counter, 1, __ATOMIC_RELAXED);
	UNDEBUG_SPAN_END(handle_request, req_id);
}

__attribute__((noinline)) void worker_main(void *arg)
{
	struct worker *w = arg;
	w->buf = kmalloc(WORKER_BUF_LEN);
	if (!w->buf)
		panic("out of memory for worker buffer");
	w->len = WORKER_BUF_LEN;
	w->rng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)w->index * 0x100000001b3ULL + 1);
	for (size_t i = 0; i < w->len; i++)
		w->buf[i] = (uint8_t)xorshift(&w->rng);
	__atomic_fetch_add(&workers_started, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		handle_request(w);
		sleep_ms(1 + xorshift(&w->rng) % 20);
	}
}

/* ---- planted threads -------------------------------------------------------- */
static int planted_event;   /* never signalled */

__attribute__((noinline)) void nap(uint64_t ms)
{
	for (;;)
		sleep_ms(ms);
}

__attribute__((noinline)) void sleeper_main(void *arg)
{
	(void)arg;
	nap(1000000000ULL);    /* ~11.6 days per sleep */
}

__attribute__((noinline)) void wait_for_event(int *event)
{
	while (!__atomic_load_n(event, __ATOMIC_ACQUIRE))
		block("event");
}

__attribute__((noinline)) void blocker_main(void *arg)
{
	(void)arg;
	wait_for_event(&planted_event);
}

__attribute__((noinline)) void short_lived_main(void *arg)
{
	(void)arg;
	static uint8_t scratch[256];
	for (unsigned i = 0; i < sizeof scratch; i++)
		scratch[i] = (uint8_t)i;
	(void)checksum_block(scratch, sizeof scratch);
	/* returns: thread_exit() marks it EXITED; it stays on thread_list */
}

__attribute__((noinline)) void evil_main(void *arg)
{
	(void)arg;
	for (;;)
		sleep_ms(1000000000ULL);
}

/* ---- crash kinds ---------------------------------------------------------------- */
__attribute__((noinline)) void crash_null(void)
{
	uint64_t *volatile p = NULL;
	*p = 0xdeadULL;
}

__attribute__((noinline)) void crash_panic(void)
{
	panic("planted panic (crash=panic)");
}

__attribute__((noinline)) void crash_assert(void)
{
	volatile int refcount = 0;
	ASSERT(refcount > 0);
}

static volatile int keep_recursing = 1;

__attribute__((noinline)) uint64_t recurse_forever(uint64_t depth)
{
	volatile uint8_t pad[256];
	pad[0] = (uint8_t)depth;
	pad[255] = (uint8_t)(depth >> 8);
	if (!keep_recursing)
		return depth;
	return recurse_forever(depth + 1) + pad[0] + pad[255];
}

__attribute__((noinline)) void crash_stack_overflow(void)
{
	(void)recurse_forever(0);
}

__attribute__((noinline)) void crash_div0(void)
{
	volatile int zero = 0;
	volatile int r = 1000 / zero;
	(void)r;
}

__attribute__((noinline)) void crash_triple_fault(void)
{
	struct { uint16_t lim; uint64_t base; } __attribute__((packed)) empty = { 0, 0 };
	__asm__ volatile("cli; lidt %0; ud2" : : "m"(empty));
}

__attribute__((noinline)) void crash_hang(void)
{
	kprintf("refguest: hanging\n");
	__asm__ volatile("cli");
	halt_all = 2;
	if (cpu_count > 1)
		send_nmi_all_but_self();
	for (;;)
		__asm__ volatile("pause");
}

__attribute__((noinline)) void crash_oom(void)
{
	for (;;) {
		void *p = kmalloc(64 * 1024);
		if (!p)
			break;
		memset(p, 0xa5, 64);
	}
	panic("out of memory (heap used=%lu total=%lu)",
	      heap_stats.used_bytes, heap_stats.total_bytes);
}

/* ---- boot ------------------------------------------------------------------------- */
static bool planted_ready(void)
{
	return workers_started == opt_threads &&
	       sleeper_thread->state == THREAD_SLEEPING &&
	       blocked_thread->state == THREAD_BLOCKED &&
	       evil_thread->state == THREAD_SLEEPING &&
	       short_lived_thread->state == THREAD_EXITED;
}

/* After "ready" the boot thread `main` stays alive as the supervisor: it
 * sleeps in main_loop() and wakes for heartbeats, the planted crash and
 * run_for. */
__attribute__((noinline)) static void main_loop(void)
{
	uint64_t next_hb = ready_uptime_ms + 1000;
	uint64_t crash_at = ready_uptime_ms + opt_crash_after;
	uint64_t end_at = ready_uptime_ms + opt_run_for;
	bool crash_pending = opt_crash != CRASH_NONE;
	static struct worker main_worker;
	for (;;) {
		uint64_t now = uptime_ms();
		if (crash_pending && now >= crash_at) {
			crash_pending = false;
			kprintf("refguest: crashing kind=%s\n", crash_names[opt_crash]);
			crash_now = 1;
			if (opt_threads == 0) {
				static uint8_t buf[64];
				main_worker.buf = buf;
				main_worker.len = sizeof buf;
				handle_request(&main_worker);
			}
		}
		if (opt_run_for && now >= end_at) {
			kprintf("refguest: shutdown code=0\n");
			(void)undebug_trace_drain(tsc_khz * 1000);   /* <= 1 s */
			exit_qemu(0);
		}
		if (now >= next_hb) {
			uint64_t reqs = __atomic_load_n(&requests_handled, __ATOMIC_RELAXED);
			kprintf("refguest: heartbeat uptime_ms=%lu requests=%lu\n", now, reqs);
			UNDEBUG_TRACEPOINT(heartbeat, "uptime_ms=%lu requests=%lu", now, reqs);
			next_hb += 1000;
			if (next_hb <= now)
				next_hb = now + 1000;
		}
		uint64_t wake = next_hb;
		if (crash_pending && crash_at < wake)
			wake = crash_at;
		if (opt_run_for && end_at < wake)
			wake = end_at;
		now = uptime_ms();
		sleep_ms(wake > now ? wake - now : 1);
	}
}

void kmain(struct hvm_start_info *si)
{
	boot_tsc = rdtsc();
	percpu[0].self = &percpu[0];
	percpu[0].index = 0;
	percpu[0].online = 1;
	wrmsr(0xc0000101, (uint64_t)&percpu[0]);      /* GS base */
	planted_counter = PLANTED_COUNTER_SEED; scrub_planted();
	serial_init();

	size_t cmdline_len = 0;
	if (si && si->magic == 0x336ec578 && si->cmdline_paddr) {
		const char *given = (const char *)si->cmdline_paddr;
		strlcpy0(boot_cmdline, given, sizeof boot_cmdline);
		while (cmdline_len < CMDLINE_SCAN_MAX && given[cmdline_len])
			cmdline_len++;
	}
	kprintf("refguest: boot cmdline=\"%s\"\n", boot_cmdline);
	if (cmdline_len >= sizeof boot_cmdline)  /* never silently: the rest is not parsed */
		kprintf("refguest: warning: command line too long: %s%lu bytes, only the first %lu "
			"are used\n", cmdline_len == CMDLINE_SCAN_MAX ? "at least " : "",
			(unsigned long)cmdline_len, (unsigned long)(sizeof boot_cmdline - 1));
	parse_cmdline();

	acpi_init(si && si->magic == 0x336ec578 ? si->rsdp_paddr : 0);
	mm_init(si && si->magic == 0x336ec578 ? si : NULL);
	gdt_init_cpu(0);
	idt_init();
	pic_disable();
	tsc_calibrate();
	lapic_init_cpu();
	percpu[0].apic_id = lapic_id();
	lapic_timer_calibrate();
	kprintf("refguest: cpus=%u tsc_khz=%lu mem_mb=%lu\n", cpus_found, tsc_khz, mem_mb);

	sched_init_boot_thread((uint64_t)boot_stack_bottom, (uint64_t)boot_stack_top);
	thread_print(percpu[0].current);
	trace_setup();
	for (unsigned i = 0; i < cpus_found; i++) {
		percpu[i].self = &percpu[i];
		percpu[i].index = i;
		if (i)
			percpu[i].apic_id = cpu_apic_ids[i];
		idle_create(i);
	}
	percpu[0].idle->cpu = 0;
	lapic_timer_start();
	__asm__ volatile("sti");
	smp_boot();

	sleeper_thread = thread_create("sleeper", sleeper_main, NULL, 1);
	blocked_thread = thread_create("blocked", blocker_main, NULL, 1);
	short_lived_thread = thread_create("short-lived", short_lived_main, NULL, 1);
	evil_thread = thread_create(evil_name, evil_main, NULL, 1);
	for (unsigned i = 0; i < opt_threads; i++) {
		struct worker *w = kmalloc(sizeof *w);
		if (!w)
			panic("out of memory creating workers");
		memset(w, 0, sizeof *w);
		w->index = i;
		char name[32];
		ksnprintf(name, sizeof name, "worker-%u", i);
		thread_create(name, worker_main, w, 1);
	}
	net_start();
	while (!planted_ready())
		sleep_ms(1);
	ready_uptime_ms = uptime_ms();
	kprintf("refguest: ready threads=%u workers=%u\n", thread_count, opt_threads);
	if (opt_corrupt_cyclic) {
		extern struct thread *thread_list_tail;
		/* tail -> second thread: a cycle that does not contain the head */
		thread_list_tail->next = thread_list->next ? thread_list->next : thread_list;
		kprintf("refguest: corrupt=cyclic-threads planted\n");
	}
	trace_start_bench();
	main_loop();
}

/* A page of .data the guest zeroes at boot (scrub_planted, from kmain): its ELF bytes are
 * stale at run time, and a sparse dump leaves the all-zero page out (it must still read
 * as zero, not as .data). At the end of the file: the line numbers above stay put. */
#define PLANTED_SCRUBBED_SEED 0x5c7bbed05c7bbed0ULL
volatile uint64_t planted_scrubbed[512] __attribute__((aligned(4096))) = {
	[0 ... 511] = PLANTED_SCRUBBED_SEED,
};

/* A page of .bss the guest writes then zeroes at boot: its RAM page has been written (it
 * is not a hole of the guest's memory) but is all zero, so a sparse dump must find it by
 * reading it, and leave it out. */
volatile uint64_t planted_bss_scrubbed[512] __attribute__((aligned(4096)));

void scrub_planted(void)
{
	for (unsigned i = 0; i < 512; i++)
		planted_scrubbed[i] = 0;
	for (unsigned i = 0; i < 512; i++)
		planted_bss_scrubbed[i] = PLANTED_SCRUBBED_SEED;
	for (unsigned i = 0; i < 512; i++)
		planted_bss_scrubbed[i] = 0;
}
