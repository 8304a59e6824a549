/* undebug guest stub: private declarations shared by trace.c and the
 * transports.  Layouts here are the ones documented in tracers/FORMAT.md. */
#ifndef UNDEBUG_INTERNAL_H
#define UNDEBUG_INTERNAL_H

#include <undebug/trace.h>

#ifndef UNDEBUG_MAX_CPUS
#define UNDEBUG_MAX_CPUS 16
#endif
#ifndef UNDEBUG_RING_BYTES
#define UNDEBUG_RING_BYTES (512u * 1024u)    /* per CPU, a power of two */
#endif
#define UNDEBUG_SLOT 16u
#define UNDEBUG_MAX_SLOTS 16u
#define UNDEBUG_SYNC_EVERY 4096u
#define UNDEBUG_STREAM_MAGIC 0x4543415254424455ULL   /* "UDBTRACE" */
#define UNDEBUG_SYNC_MAGIC 0x434E595347424455ULL     /* "UDBGSYNC" */
#define UNDEBUG_RING_MAGIC 0x474E5255u               /* "URNG" */
#define UNDEBUG_HDR_STREAMING 1u
#define UNDEBUG_HDR_NESTED_DROP 2u

_Static_assert((UNDEBUG_RING_BYTES & (UNDEBUG_RING_BYTES - 1)) == 0, "ring size: power of two");
/* the slow path may need room for a LOST (2 slots) and a SYNC (3) before the largest
 * record (16): a ring must hold them all at once, or such a record is never written */
_Static_assert(UNDEBUG_RING_BYTES >= (2u + 3u + UNDEBUG_MAX_SLOTS) * UNDEBUG_SLOT,
	       "ring size: too small for the largest record");

struct undebug_stream_header {       /* 80 bytes, FORMAT.md section 1 */
	uint64_t magic;
	uint16_t version, header_size;
	uint32_t flags;
	uint64_t tsc_hz, boot_tsc;
	uint16_t cpu_count;
	uint8_t build_id_len, transport;
	uint16_t max_slots, ring_count;
	uint8_t build_id[32];
	uint64_t header_tsc;
};
_Static_assert(sizeof(struct undebug_stream_header) == 80, "stream header");

enum { RING_FLIGHT = 0, RING_STREAM = 1 };

/* Fields another CPU reads or writes (mode, busy, positions, lost_total, sync_req) are
 * only accessed with __atomic builtins; the rest belong to one side.  attn and sync_at
 * are the producer's: the consumer asks for a SYNC by bumping sync_req. */
struct undebug_ring {                /* 128 bytes, FORMAT.md section 5 */
	uint32_t magic;
	uint16_t cpu;
	uint8_t mode;                    /* consumer writes, producer reads (atomic) */
	uint8_t busy;                    /* producer is inside an emit (atomic) */
	uint8_t *data;
	uint64_t size;
	uint64_t head;                   /* producer, published with release */
	uint64_t tail;                   /* producer */
	uint64_t ctail;                  /* consumer: released by the host */
	uint64_t spos;                   /* consumer: handed to the transport */
	uint64_t seq;
	uint64_t lost_total;             /* producer writes, anyone reads (atomic) */
	uint64_t overwritten;
	uint64_t lost_pending;
	uint64_t lost_first;
	uint64_t written;
	uint16_t tid;
	uint8_t tid_known;
	uint8_t attached;                /* consumer */
	uint16_t nested_pending;         /* interrupts of this CPU add, the emit takes (atomic) */
	uint8_t sync_req;                /* consumer: bumped to ask for a SYNC (atomic) */
	uint8_t sync_seen;               /* producer: the last sync_req it acted on */
	uint64_t attn;                   /* producer: seq at which the slow path runs */
	uint64_t sync_at;                /* producer: seq at which the next SYNC is due */
} __attribute__((aligned(64)));
_Static_assert(sizeof(struct undebug_ring) == 128, "ring header");

extern struct undebug_ring undebug_trace_rings[UNDEBUG_MAX_CPUS];
extern struct undebug_stream_header undebug_trace_header;
extern unsigned undebug__ncpus;

/* ring consumer side (trace.c), called with the transport lock held */
void undebug__attach_all(void);
void undebug__detach_all(void);
int undebug__try_attach(struct undebug_ring *r);
void undebug__settle_lost(void);

static inline void undebug__barrier(void) { __asm__ volatile("" ::: "memory"); }

/* One CPU's own flag, also read by other CPUs: relaxed atomics plus compiler barriers
 * order it against the emit's plain stores on that CPU (an interrupt of the same CPU
 * sees program order); make_room() and undebug__try_attach() pair their fences. */
static inline uint8_t undebug__load8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void undebug__store8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

#if defined(__x86_64__) || defined(__i386__)
static inline void undebug__outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(p)); }
static inline void undebug__outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(p)); }
static inline void undebug__outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(p)); }
static inline uint8_t undebug__inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint16_t undebug__inw(uint16_t p) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint32_t undebug__inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
#define UNDEBUG_HAVE_PIO 1
#endif

static inline uint64_t undebug__tsc(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && !defined(UNDEBUG_OS_TIMESTAMP)
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
#else
	return undebug_os_timestamp();
#endif
}

#endif
