/* undebug tracing stub on Unikraft (0.17): the OS port of guest-stubs/README.md and
 * the hooks into Unikraft.
 *
 *   timestamp   the inline TSC; its frequency and time 0 measured against Unikraft's
 *               clock (ukplat_monotonic_clock), so guest time 0 = Unikraft's boot clock
 *   CPU         ukplat_lcpu_idx(): uksched never migrates a thread, and ukschedcoop only
 *               switches when a thread yields, so an emit stays on its CPU; an interrupt
 *               that emits inside an emit on the same CPU is dropped and counted (the
 *               stub's rule, FORMAT.md 3.4).  A preemptive scheduler (none in 0.17) must
 *               keep preemption off around emits.
 *   thread id   a small id per struct uk_thread (tidmap.c), given in the uksched thread
 *               init table (UK_THREAD_INIT_PRIO) with the thread's name
 *   switches    the linker's --wrap=ukarch_ctx_switch (Makefile.uk): 0.17 has no switch
 *               hook, and every switch (uk_sched_thread_switch) calls it
 *   crashes     UK_EVENT_HANDLER on the trap events (UKARCH_TRAP_*: 0.17 has no
 *               UK_CRASH_EVENT), at the latest priority: a trap no handler took is fatal;
 *               UK_CRASH / UK_ASSERT outside the platform library and the clean halt via
 *               --wrap=ukplat_terminate
 *   poll        a thread "undebug-poll" (CONFIG_LIBUNDEBUG_POLL_MS): 0.17 has no timer
 *               callback for libraries; it also moves Unikraft's own tracepoint samples
 *               (uk_trace_buffer) into the stream (CONFIG_LIBUNDEBUG_UKTRACE)
 *   port I/O, virt_to_phys   the stub's own port I/O; ukplat_virt_to_phys for DMA */
#include <stdint.h>
#include <stddef.h>
#include <uk/config.h>
#include <uk/essentials.h>
#include <uk/init.h>
#include <uk/event.h>
#include <uk/print.h>
#include <uk/sched.h>
#include <uk/thread.h>
#include <uk/arch/ctx.h>
#include <uk/arch/traps.h>
#include <uk/plat/bootstrap.h>
#include <uk/plat/io.h>
#include <uk/plat/lcpu.h>
#include <uk/plat/time.h>
#include <undebug/trace.h>
#include "tidmap.h"
#include "ukport.h"

#ifndef CONFIG_UKPLAT_LCPU_MAXCOUNT
#define CONFIG_UKPLAT_LCPU_MAXCOUNT 1
#endif

/* ---- the porting interface ------------------------------------------------- */
unsigned undebug_os_cpu(void)
{
	return (unsigned)ukplat_lcpu_idx();
}

static uint16_t tid_of(const struct uk_thread *t)
{
	uint16_t id = undebug_tidmap_get(t);
	return id || !t ? id : undebug_tidmap_add(t);   /* a thread the init table missed */
}

uint64_t undebug_os_thread(void)
{
	return tid_of(uk_thread_current());
}

uint64_t undebug_os_virt_to_phys(const void *p)
{
	return (uint64_t)ukplat_virt_to_phys(p);
}

/* ---- threads ------------------------------------------------------------------ */
static int thread_init(struct uk_thread *child, struct uk_thread *parent __unused)
{
	uint16_t id = undebug_tidmap_add(child);
	if (id && child->name)
		undebug_thread_name(id, child->name);   /* a no-op before undebug_trace_init */
	return 0;
}

static void thread_term(struct uk_thread *child)
{
	undebug_tidmap_exit(child);
}

/* flags 0: every thread, whatever its ECTX/TLS features */
UK_THREAD_INIT_PRIO_FLAGS(thread_init, thread_term, UK_PRIO_EARLIEST, 0);

void __real_ukarch_ctx_switch(struct ukarch_ctx *store, struct ukarch_ctx *load);

/* uk_sched_thread_switch(): ctx is the first member of struct uk_thread */
void __wrap_ukarch_ctx_switch(struct ukarch_ctx *store, struct ukarch_ctx *load)
{
	const struct uk_thread *prev = __containerof(store, struct uk_thread, ctx);
	const struct uk_thread *next = __containerof(load, struct uk_thread, ctx);
	undebug_thread_switch(tid_of(prev), tid_of(next));
	__real_ukarch_ctx_switch(store, load);
}

/* ---- Unikraft's tracepoints ------------------------------------------------------ */
#if CONFIG_LIBUNDEBUG_UKTRACE
extern size_t uk_trace_buffer_free;
extern char *uk_trace_buffer_writep;

/* Each complete sample of uk_trace_buffer (struct uk_tracepoint_header {u32 'TRhd',
 * u32 size, u64 ns, u64 cookie} + size payload bytes, packed) becomes one uk_tracepoint
 * record: the cookie (its definition in the .dbg), Unikraft's time, the payload size and
 * the payload's first 24 bytes (the host decodes them by the definition and says when a
 * payload was longer).  Then the buffer is emptied, so Unikraft's tracing, which stops
 * for good when its linear buffer is full, goes on.  IRQs off: Unikraft's tracepoints
 * write with IRQs off on this CPU. */
static void bridge_uk_trace(void)
{
	unsigned long flags = ukplat_lcpu_save_irqf();
	size_t used = CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE - uk_trace_buffer_free, at = 0;
	const char *base = uk_trace_buffer_writep - used;

	while (used <= CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE && at + 24 <= used) {
		struct { uint32_t magic, size; uint64_t ns, cookie; } h;
		uint64_t w[3] = { 0, 0, 0 };
		__builtin_memcpy(&h, base + at, sizeof h);
		if (h.magic != UNDEBUG_UK_SAMPLE_MAGIC || h.size > used - at - 24)
			break;                    /* an unfinished sample: Unikraft gave up on it */
		__builtin_memcpy(w, base + at + 24, h.size < sizeof w ? h.size : sizeof w);
		const void *cookie = (const void *)(uintptr_t)h.cookie;
		unsigned long ns = h.ns, size = h.size, w0 = w[0], w1 = w[1], w2 = w[2];
		UNDEBUG_TRACEPOINT(uk_tracepoint, "cookie=%p ns=%lu size=%lu", cookie, ns, size,
				   w0, w1, w2);
		at += 24 + h.size;
	}
	if (used && used <= CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE) {
		uk_trace_buffer_writep = (char *)base;
		uk_trace_buffer_free = CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE;
	}
	ukplat_lcpu_restore_irqf(flags);
}
#else
static void bridge_uk_trace(void) {}
#endif

/* ---- crash and halt ------------------------------------------------------------- */
static uint64_t tsc_hz;

static int on_trap(void *data)
{
	const struct ukarch_trap_ctx *ctx = data;
	undebug_fault((uint64_t)ctx->trapnr, (uint64_t)(unsigned)ctx->error_code,
		      ctx->regs ? ctx->regs->rip : 0, ctx->fault_address);
	bridge_uk_trace();                        /* Unikraft's samples since the last poll */
	undebug_panic("unhandled trap");          /* and drain: the crash follows */
	return UK_EVENT_NOT_HANDLED;
}

UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_PAGE_FAULT, on_trap, UK_PRIO_LATEST);
UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_X86_GP, on_trap, UK_PRIO_LATEST);
UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_INVALID_OP, on_trap, UK_PRIO_LATEST);
UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_MATH, on_trap, UK_PRIO_LATEST);
UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_BUS_ERROR, on_trap, UK_PRIO_LATEST);
UK_EVENT_HANDLER_PRIO(UKARCH_TRAP_SECURITY, on_trap, UK_PRIO_LATEST);

void __real_ukplat_terminate(enum ukplat_gstate request) __noreturn;

void __noreturn __wrap_ukplat_terminate(enum ukplat_gstate request)
{
	if (request == UKPLAT_CRASH) {
		bridge_uk_trace();
		undebug_panic("UK_CRASH");
	} else {
		bridge_uk_trace();
		undebug_trace_poll();                 /* a LOST record for pending drops */
		(void)undebug_trace_drain(tsc_hz);    /* at most 1 s */
	}
	__real_ukplat_terminate(request);
}

/* ---- set-up and the poll thread ------------------------------------------------ */
static __noreturn void poll_main(void *arg __unused)
{
	for (;;) {
		bridge_uk_trace();
		undebug_trace_poll();
		uk_sched_thread_sleep((__nsec)CONFIG_LIBUNDEBUG_POLL_MS * 1000000L);
	}
}

static void name_thread(const void *key, uint16_t id, void *arg __unused)
{
	const struct uk_thread *t = key;
	if (t->name)
		undebug_thread_name(id, t->name);
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

/* the GNU build-id note extra.ld keeps in the image */
extern const uint8_t undebug_build_id_note[] __weak;
extern const uint8_t undebug_build_id_note_end[] __weak;

static int undebug_uk_init(struct uk_init_ctx *ictx __unused)
{
	/* the TSC against Unikraft's clock over UNDEBUG_UK_CAL_NS */
	__nsec n0 = ukplat_monotonic_clock(), n1;
	uint64_t t0 = rdtsc(), t1;
	do {
		n1 = ukplat_monotonic_clock();
		t1 = rdtsc();
	} while (n1 - n0 < UNDEBUG_UK_CAL_NS);
	tsc_hz = undebug_uk_tsc_hz(t1 - t0, n1 - n0);
	uint64_t boot_tsc = undebug_uk_boot_tsc(t1, n1, tsc_hz);

	const uint8_t *bid = 0;
	unsigned bid_len = undebug_uk_build_id(undebug_build_id_note,
					       (size_t)(undebug_build_id_note_end -
							undebug_build_id_note), &bid);
	if (undebug_trace_init(tsc_hz, boot_tsc, CONFIG_UKPLAT_LCPU_MAXCOUNT, bid, bid_len)) {
		uk_pr_err("undebug: tracing not initialised\n");
		return 0;
	}
	undebug_trace_set_flush(CONFIG_LIBUNDEBUG_FLUSH_BYTES, CONFIG_LIBUNDEBUG_FLUSH_MS);
	undebug_tidmap_foreach(name_thread, 0);   /* created before us: init, idle */
#if CONFIG_LIBUNDEBUG_TRANSPORT_VIRTIO
	if (undebug_trace_use_virtio() == 0)
		uk_pr_info("undebug: tracing over virtio-serial\n");
#if CONFIG_LIBUNDEBUG_UART_FALLBACK
	else if (undebug_trace_use_uart(CONFIG_LIBUNDEBUG_UART_BASE) == 0)
		uk_pr_info("undebug: tracing over the UART at %#x\n", CONFIG_LIBUNDEBUG_UART_BASE);
#endif
	else
		uk_pr_info("undebug: no transport: flight recorder only\n");
#elif CONFIG_LIBUNDEBUG_TRANSPORT_UART
	if (undebug_trace_use_uart(CONFIG_LIBUNDEBUG_UART_BASE))
		uk_pr_info("undebug: no UART at %#x: flight recorder only\n",
			   CONFIG_LIBUNDEBUG_UART_BASE);
#endif
	if (undebug_trace_transport() != UNDEBUG_TRANSPORT_NONE &&
	    !uk_sched_thread_create(uk_sched_current(), poll_main, NULL, "undebug-poll"))
		uk_pr_err("undebug: cannot create the poll thread\n");
	return 0;
}

uk_lib_initcall_prio(undebug_uk_init, 0x0, UK_PRIO_EARLIEST);
