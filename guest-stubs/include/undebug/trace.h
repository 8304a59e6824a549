/* undebug guest tracing stub: public interface.
 *
 * Freestanding C (gcc/clang, GNU C11).  Wire format and in-memory layout:
 * tracers/FORMAT.md (version 1).  Porting guide: guest-stubs/README.md.
 *
 *   UNDEBUG_TRACEPOINT(name, fmt, args...)   0..6 integer/pointer arguments
 *   UNDEBUG_SPAN_BEGIN(name, args...)        span on the current thread
 *   UNDEBUG_SPAN_END(name, args...)
 *   undebug_log(level, fmt, args...)         level: a constant UNDEBUG_LOG_*
 *
 * `name` is a C identifier (it is stringified).  Metadata (name, format,
 * argument names/types, file, line) goes into the ELF section
 * `undebug_tracepoints`; the wire carries only id, TSC, CPU, thread, seq and
 * the raw 64-bit arguments.  Define UNDEBUG_TRACE_DISABLE before including
 * this header to compile every tracepoint out (arguments are not evaluated).
 * At run time a disabled stub costs one load and one branch per tracepoint.
 *
 * Do not use tracepoints inside non-static `inline` functions (each use
 * defines a static object). */
#ifndef UNDEBUG_TRACE_H
#define UNDEBUG_TRACE_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UNDEBUG_FORMAT_VERSION 1

/* ---- metadata record (FORMAT.md section 6): 64 bytes -------------------- */
#define UNDEBUG_TP_MAGIC 0x4D505455u            /* "UTPM" */
enum {
	UNDEBUG_KIND_EVENT = 1,
	UNDEBUG_KIND_SPAN_BEGIN = 2,
	UNDEBUG_KIND_SPAN_END = 3,
	UNDEBUG_KIND_LOG = 4,
};
enum {
	UNDEBUG_LOG_ERROR = 0,
	UNDEBUG_LOG_WARNING = 1,
	UNDEBUG_LOG_INFO = 2,
	UNDEBUG_LOG_DEBUG = 3,
};
enum {
	UNDEBUG_ARG_UNSIGNED = 1,
	UNDEBUG_ARG_SIGNED = 2,
	UNDEBUG_ARG_POINTER = 3,
	UNDEBUG_ARG_BOOL = 4,
	UNDEBUG_ARG_CHAR = 5,
};

struct undebug_tp_meta {
	uint32_t magic;
	uint8_t kind, nargs, level, version;
	uint32_t line;
	uint32_t arg_types;          /* 4 bits per argument */
	const char *name;
	const char *fmt;
	const char *arg_names;       /* nargs NUL-terminated strings back to back */
	const char *file;
	uint64_t reserved[2];
} __attribute__((aligned(64)));

/* ---- reserved in-band record ids (FORMAT.md section 3) ------------------- */
#define UNDEBUG_ID_SYNC          0xFF00u
#define UNDEBUG_ID_LOST          0xFF01u
#define UNDEBUG_ID_THREAD_NAME   0xFF02u
#define UNDEBUG_ID_THREAD_SWITCH 0xFF03u
#define UNDEBUG_ID_FAULT         0xFF04u
#define UNDEBUG_ID_PANIC         0xFF05u
#define UNDEBUG_ID_LOG_STR       0xFF06u
#define UNDEBUG_ID_SPAN_CONTEXT  0xFF07u

/* ---- transports ------------------------------------------------------------ */
enum undebug_transport {
	UNDEBUG_TRANSPORT_NONE = 0,      /* flight recorder only */
	UNDEBUG_TRANSPORT_VIRTIO = 1,    /* virtio-serial port "undebug.trace" */
	UNDEBUG_TRANSPORT_UART = 2,      /* 16550, COM2 by default */
	UNDEBUG_TRANSPORT_E9 = 3,        /* QEMU debugcon, port 0xE9 */
	UNDEBUG_TRANSPORT_CUSTOM = 4,    /* undebug_trace_use_custom() */
};

/* ---- what the OS provides (porting interface) ------------------------------
 * undebug_os_cpu(): index of the calling CPU, 0..cpu_count-1; must work in
 *   interrupt/exception context.  Required.
 * undebug_os_timestamp(): TSC (x86-64 builds use rdtsc inline unless the
 *   library is built with -DUNDEBUG_OS_TIMESTAMP; then it is called).
 * undebug_os_thread(): id of the running thread; weak default returns 0.  It
 *   is read once per CPU (first emit); afterwards the stub tracks the
 *   current thread through undebug_thread_switch().
 * undebug_os_virt_to_phys(): guest-physical address of stub memory for DMA
 *   (virtio); weak default: identity. */
unsigned undebug_os_cpu(void);
uint64_t undebug_os_timestamp(void);
uint64_t undebug_os_thread(void);
uint64_t undebug_os_virt_to_phys(const void *p);

/* ---- set-up ---------------------------------------------------------------- */
/* Initialise the rings (flight recorder on).  cpu_count <= UNDEBUG_MAX_CPUS
 * (returns -1 otherwise), build_id: GNU build-id bytes (len <= 32).  Call
 * once, on one CPU, before any other CPU emits. */
int undebug_trace_init(uint64_t tsc_hz, uint64_t boot_tsc, unsigned cpu_count,
		       const void *build_id, unsigned build_id_len);
/* Select a transport.  Each returns 0 on success, -1 if the device is absent
 * (then the stub stays a flight recorder).  Call after undebug_trace_init. */
int undebug_trace_use_virtio(void);          /* PCI scan for 1af4:1003 */
int undebug_trace_use_uart(uint16_t io_base);/* e.g. 0x2F8 (COM2) */
int undebug_trace_use_e9(void);
int undebug_trace_use_custom(size_t (*write)(const void *buf, size_t len));
enum undebug_transport undebug_trace_transport(void);
/* 1 while a host reader is attached (virtio: port open; UART/e9/custom:
 * always once selected). */
int undebug_trace_connected(void);

/* The flusher.  Call it often from any CPU (timer tick, idle loop): it never
 * blocks (try-lock; returns at once if another CPU is flushing), reclaims
 * completed buffers, handles host connect/disconnect, and hands new ring
 * data to the transport in batches (virtio: up to 64 KiB per buffer, one
 * notify per call).  Safe in interrupt context. */
void undebug_trace_poll(void);
/* Batching (virtio): a poll hands the rings' new data to the host only once a
 * ring holds `bytes` or its oldest unsent byte is `ms` old (or the ring is half
 * full, or a drain asks), so a quiet guest wakes the host a few times a second
 * instead of at every timer tick.  `ms` is the interval at rest: while a host
 * reader follows the stream live, the host asks (a message on the trace port,
 * tracers/FORMAT.md 7.1) for a shorter one, 20 ms from undebug, and takes it
 * back when the last reader goes; the shorter of the two applies.  Defaults
 * UNDEBUG_FLUSH_BYTES (16 KiB) and UNDEBUG_FLUSH_MS (250 ms: the data waits in
 * the rings, which are the flight recorder too, at most that long); 0 for
 * either sends at every poll.  Any time. */
void undebug_trace_set_flush(uint32_t bytes, uint32_t ms);
#ifndef UNDEBUG_FLUSH_BYTES
#define UNDEBUG_FLUSH_BYTES (16u * 1024u)
#endif
#ifndef UNDEBUG_FLUSH_MS
#define UNDEBUG_FLUSH_MS 250u
#endif
/* Flush until every attached ring is sent and (virtio) every buffer is
 * back from the device, or `max_cycles` TSC cycles passed.  Returns 0 when
 * drained.  For shutdown and panic. */
int undebug_trace_drain(uint64_t max_cycles);

/* Runtime switch (tracepoints cost a load + branch while off). */
void undebug_trace_enable(int on);
extern int undebug_trace_active;

/* Free bytes in the calling CPU's ring in its current mode (streaming: room
 * before drops start; flight recorder: the ring size).  For pacing
 * benchmarks; a tracepoint itself never waits. */
uint64_t undebug_trace_room(void);
/* Records dropped so far on all CPUs (streaming overflow + nested). */
uint64_t undebug_trace_lost_total(void);

/* What the UART / 0xE9 / custom flusher did (not virtio): polls, polls that left
 * bytes for later (the per-poll budget, UNDEBUG_FLUSH_BUDGET), polls the device
 * stopped short (a busy UART, a custom writer taking nothing), bytes sent, and the
 * longest poll in timestamp cycles.  Unsent bytes stay in the rings: nothing is
 * dropped by the flusher; the producers count what they drop (LOST records). */
struct undebug_trace_flush_stats {
	uint64_t polls, deferred_polls, stalled_polls, bytes_sent, max_poll_cycles;
};
void undebug_trace_flush_stats(struct undebug_trace_flush_stats *out);

/* ---- OS hooks ------------------------------------------------------------------ */
/* Call on the CPU doing the switch, right before switching from thread
 * `from` to thread `to` (interrupts off is fine). */
void undebug_thread_switch(uint64_t from, uint64_t to);
/* Call when a thread is created or renamed (name up to 31 bytes kept). */
void undebug_thread_name(uint64_t id, const char *name);
/* Call from the exception handler. */
void undebug_fault(uint64_t vector, uint64_t error, uint64_t rip, uint64_t addr);
/* Call when the OS panics: records the message (up to 111 bytes) and drains
 * what it can (bounded, ~50 ms of TSC at most). */
void undebug_panic(const char *msg);
/* A log line as a string payload (when the text is built at run time). */
void undebug_log_str(int level, const char *msg);
/* A W3C traceparent ("00-<trace id>-<parent id>-<flags>", as received, e.g. from an HTTP
 * header) for the next span this thread begins: the host exports that span as a child of
 * it, in its trace. NULL or "" sends nothing. The host checks the text, not the guest. */
void undebug_span_context(const char *traceparent);

/* ---- emit entry points used by the macros ------------------------------------- */
void undebug__emit0(const struct undebug_tp_meta *tp);
void undebug__emit1(const struct undebug_tp_meta *tp, uint64_t a);
void undebug__emit2(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b);
void undebug__emit3(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c);
void undebug__emit4(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d);
void undebug__emit5(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d, uint64_t e);
void undebug__emit6(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d, uint64_t e, uint64_t f);

/* ---- macro machinery ----------------------------------------------------------- */
#define UNDEBUG__CAT(a, b) UNDEBUG__CAT_(a, b)
#define UNDEBUG__CAT_(a, b) a##b
#define UNDEBUG__NARGS(...) UNDEBUG__NARGS_(0, ##__VA_ARGS__, 6, 5, 4, 3, 2, 1, 0)
#define UNDEBUG__NARGS_(_0, _1, _2, _3, _4, _5, _6, N, ...) N

#define UNDEBUG__T(x) _Generic((x),                                         \
	_Bool: UNDEBUG_ARG_BOOL, char: UNDEBUG_ARG_CHAR,                        \
	signed char: UNDEBUG_ARG_SIGNED, short: UNDEBUG_ARG_SIGNED,             \
	int: UNDEBUG_ARG_SIGNED, long: UNDEBUG_ARG_SIGNED,                      \
	long long: UNDEBUG_ARG_SIGNED,                                          \
	unsigned char: UNDEBUG_ARG_UNSIGNED, unsigned short: UNDEBUG_ARG_UNSIGNED, \
	unsigned int: UNDEBUG_ARG_UNSIGNED, unsigned long: UNDEBUG_ARG_UNSIGNED, \
	unsigned long long: UNDEBUG_ARG_UNSIGNED,                               \
	default: UNDEBUG_ARG_POINTER)

#define UNDEBUG__AT0() 0u
#define UNDEBUG__AT1(a) ((uint32_t)UNDEBUG__T(a))
#define UNDEBUG__AT2(a, b) (UNDEBUG__AT1(a) | (uint32_t)UNDEBUG__T(b) << 4)
#define UNDEBUG__AT3(a, b, c) (UNDEBUG__AT2(a, b) | (uint32_t)UNDEBUG__T(c) << 8)
#define UNDEBUG__AT4(a, b, c, d) (UNDEBUG__AT3(a, b, c) | (uint32_t)UNDEBUG__T(d) << 12)
#define UNDEBUG__AT5(a, b, c, d, e) (UNDEBUG__AT4(a, b, c, d) | (uint32_t)UNDEBUG__T(e) << 16)
#define UNDEBUG__AT6(a, b, c, d, e, f) (UNDEBUG__AT5(a, b, c, d, e) | (uint32_t)UNDEBUG__T(f) << 20)

#define UNDEBUG__AN0() ""
#define UNDEBUG__AN1(a) #a "\0"
#define UNDEBUG__AN2(a, b) #a "\0" #b "\0"
#define UNDEBUG__AN3(a, b, c) #a "\0" #b "\0" #c "\0"
#define UNDEBUG__AN4(a, b, c, d) #a "\0" #b "\0" #c "\0" #d "\0"
#define UNDEBUG__AN5(a, b, c, d, e) #a "\0" #b "\0" #c "\0" #d "\0" #e "\0"
#define UNDEBUG__AN6(a, b, c, d, e, f) #a "\0" #b "\0" #c "\0" #d "\0" #e "\0" #f "\0"

#define UNDEBUG__U(x) ((uint64_t)(x))
#define UNDEBUG__CALL0(tp) undebug__emit0(tp)
#define UNDEBUG__CALL1(tp, a) undebug__emit1(tp, UNDEBUG__U(a))
#define UNDEBUG__CALL2(tp, a, b) undebug__emit2(tp, UNDEBUG__U(a), UNDEBUG__U(b))
#define UNDEBUG__CALL3(tp, a, b, c) \
	undebug__emit3(tp, UNDEBUG__U(a), UNDEBUG__U(b), UNDEBUG__U(c))
#define UNDEBUG__CALL4(tp, a, b, c, d) \
	undebug__emit4(tp, UNDEBUG__U(a), UNDEBUG__U(b), UNDEBUG__U(c), UNDEBUG__U(d))
#define UNDEBUG__CALL5(tp, a, b, c, d, e) \
	undebug__emit5(tp, UNDEBUG__U(a), UNDEBUG__U(b), UNDEBUG__U(c), UNDEBUG__U(d), \
		       UNDEBUG__U(e))
#define UNDEBUG__CALL6(tp, a, b, c, d, e, f) \
	undebug__emit6(tp, UNDEBUG__U(a), UNDEBUG__U(b), UNDEBUG__U(c), UNDEBUG__U(d), \
		       UNDEBUG__U(e), UNDEBUG__U(f))

#define UNDEBUG__V0()
#define UNDEBUG__V1(a) (void)(a)
#define UNDEBUG__V2(a, b) (void)(a), (void)(b)
#define UNDEBUG__V3(a, b, c) (void)(a), (void)(b), (void)(c)
#define UNDEBUG__V4(a, b, c, d) (void)(a), (void)(b), (void)(c), (void)(d)
#define UNDEBUG__V5(a, b, c, d, e) (void)(a), (void)(b), (void)(c), (void)(d), (void)(e)
#define UNDEBUG__V6(a, b, c, d, e, f) \
	(void)(a), (void)(b), (void)(c), (void)(d), (void)(e), (void)(f)

#ifndef UNDEBUG_TRACE_DISABLE
#define UNDEBUG__TP(kind_, level_, name_, fmt_, ...) do {                        \
	static const struct undebug_tp_meta undebug__tp_rec                       \
		__attribute__((section("undebug_tracepoints"), used, aligned(64))) = { \
		.magic = UNDEBUG_TP_MAGIC,                                        \
		.kind = (kind_),                                                  \
		.nargs = UNDEBUG__NARGS(__VA_ARGS__),                             \
		.level = (level_),                                                \
		.version = 1,                                                     \
		.line = __LINE__,                                                 \
		.arg_types = UNDEBUG__CAT(UNDEBUG__AT, UNDEBUG__NARGS(__VA_ARGS__))(__VA_ARGS__), \
		.name = (name_),                                                  \
		.fmt = (fmt_),                                                    \
		.arg_names = UNDEBUG__CAT(UNDEBUG__AN, UNDEBUG__NARGS(__VA_ARGS__))(__VA_ARGS__), \
		.file = __FILE__,                                                 \
		.reserved = { 0, 0 },                                             \
	};                                                                        \
	_Static_assert(UNDEBUG__NARGS(__VA_ARGS__) <= 6, "at most 6 arguments");  \
	if (__builtin_expect(undebug_trace_active, 1))                            \
		UNDEBUG__CAT(UNDEBUG__CALL, UNDEBUG__NARGS(__VA_ARGS__))(&undebug__tp_rec, ##__VA_ARGS__); \
} while (0)
#else
#define UNDEBUG__TP(kind_, level_, name_, fmt_, ...) do {                        \
	if (0) {                                                                  \
		(void)(fmt_);                                                     \
		UNDEBUG__CAT(UNDEBUG__V, UNDEBUG__NARGS(__VA_ARGS__))(__VA_ARGS__); \
	}                                                                         \
} while (0)
#endif

#define UNDEBUG_TRACEPOINT(name, fmt, ...) \
	UNDEBUG__TP(UNDEBUG_KIND_EVENT, 0, #name, fmt, ##__VA_ARGS__)
#define UNDEBUG_SPAN_BEGIN(name, ...) \
	UNDEBUG__TP(UNDEBUG_KIND_SPAN_BEGIN, 0, #name, "", ##__VA_ARGS__)
#define UNDEBUG_SPAN_END(name, ...) \
	UNDEBUG__TP(UNDEBUG_KIND_SPAN_END, 0, #name, "", ##__VA_ARGS__)
/* A span that joins the distributed trace of `traceparent` (see undebug_span_context). */
#define UNDEBUG_SPAN_BEGIN_CTX(name, traceparent, ...) do {                      \
	undebug_span_context(traceparent);                                        \
	UNDEBUG_SPAN_BEGIN(name, ##__VA_ARGS__);                                  \
} while (0)
/* level must be a compile-time constant (it is stored in the metadata). */
#define undebug_log(level, fmt, ...) \
	UNDEBUG__TP(UNDEBUG_KIND_LOG, (level), "log", fmt, ##__VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
