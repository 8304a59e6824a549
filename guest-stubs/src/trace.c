/* undebug guest stub: per-CPU rings and the producer side (tracepoints,
 * in-band records, OS hooks).  See tracers/FORMAT.md.
 *
 * One ring per CPU.  The only producer of ring i is CPU i; the consumer is
 * whichever CPU holds the transport lock (transport.c).  An emit never
 * blocks and never takes a lock.  An interrupt that arrives while its CPU is
 * inside an emit and emits itself is dropped and counted (`nested_pending`,
 * settled by the interrupted emit when it finishes), so the producer side
 * needs no atomic read-modify-write on its fast path.
 *
 * Positions (head, tail, ctail, spos) are 64-bit byte counters that only
 * grow.  Flight-recorder mode overwrites the oldest records (tail moves over
 * whole records); streaming mode never writes past ctail (what the host has
 * received) and drops the newest instead. */
#include "internal.h"

struct undebug_ring undebug_trace_rings[UNDEBUG_MAX_CPUS];
struct undebug_stream_header undebug_trace_header;
uint8_t undebug_trace_ring_data[UNDEBUG_MAX_CPUS][UNDEBUG_RING_BYTES]
	__attribute__((aligned(4096)));
unsigned undebug__ncpus;
int undebug_trace_active;

__attribute__((weak)) uint64_t undebug_os_thread(void) { return 0; }
__attribute__((weak)) uint64_t undebug_os_virt_to_phys(const void *p) { return (uint64_t)(uintptr_t)p; }
#if defined(UNDEBUG_OS_TIMESTAMP) || !(defined(__x86_64__) || defined(__i386__))
/* the OS must define undebug_os_timestamp() */
#else
__attribute__((weak)) uint64_t undebug_os_timestamp(void) { return undebug__tsc(); }
#endif

extern const struct undebug_tp_meta __start_undebug_tracepoints[];

static void zero(void *p, size_t n)
{
	volatile uint8_t *b = p;
	while (n--)
		*b++ = 0;
}

int undebug_trace_init(uint64_t tsc_hz, uint64_t boot_tsc, unsigned cpu_count,
		       const void *build_id, unsigned build_id_len)
{
	if (!cpu_count || cpu_count > UNDEBUG_MAX_CPUS)
		return -1;
	struct undebug_stream_header *h = &undebug_trace_header;
	zero(h, sizeof *h);
	h->version = UNDEBUG_FORMAT_VERSION;
	h->header_size = sizeof *h;
	h->flags = UNDEBUG_HDR_NESTED_DROP;
	h->tsc_hz = tsc_hz;
	h->boot_tsc = boot_tsc;
	h->cpu_count = (uint16_t)cpu_count;
	if (build_id_len > sizeof h->build_id)
		build_id_len = sizeof h->build_id;
	h->build_id_len = (uint8_t)build_id_len;
	for (unsigned i = 0; i < build_id_len; i++)
		h->build_id[i] = ((const uint8_t *)build_id)[i];
	h->max_slots = UNDEBUG_MAX_SLOTS;
	h->ring_count = UNDEBUG_MAX_CPUS;
	for (unsigned i = 0; i < UNDEBUG_MAX_CPUS; i++) {
		struct undebug_ring *r = &undebug_trace_rings[i];
		zero(r, sizeof *r);
		if (i >= cpu_count)
			continue;
		r->cpu = (uint16_t)i;
		r->data = undebug_trace_ring_data[i];
		r->size = UNDEBUG_RING_BYTES;
		undebug__store8(&r->mode, RING_FLIGHT);
		r->attn = 0;                 /* first emit: SYNC */
		r->magic = UNDEBUG_RING_MAGIC;
	}
	undebug_trace_rings[0].tid = (uint16_t)undebug_os_thread();
	undebug_trace_rings[0].tid_known = 1;
	undebug__ncpus = cpu_count;
	__atomic_store_n(&h->magic, UNDEBUG_STREAM_MAGIC, __ATOMIC_RELEASE);
	__atomic_store_n(&undebug_trace_active, 1, __ATOMIC_RELEASE);
	return 0;
}

void undebug_trace_enable(int on)
{
	__atomic_store_n(&undebug_trace_active, on && undebug__ncpus, __ATOMIC_RELEASE);
}

/* ---- producer ------------------------------------------------------------- */

static inline uint64_t *slot_at(struct undebug_ring *r, uint64_t pos)
{
	return (uint64_t *)(r->data + (pos & (r->size - 1)));
}

/* Make room for `need` bytes at head.  Slow path; busy is set.  Returns 0
 * when the record must be dropped (streaming and the host is behind). */
static __attribute__((noinline)) int make_room(struct undebug_ring *r, uint64_t need)
{
	/* Pairs with the consumer's fence in undebug__try_attach(): either we
	 * see mode == STREAM here or the consumer sees busy and retries. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint64_t head = r->head;
	int flight = undebug__load8(&r->mode) != RING_STREAM;   /* read once */
	if (!flight) {
		uint64_t ct = __atomic_load_n(&r->ctail, __ATOMIC_ACQUIRE);
		if (head + need - ct > r->size)
			return 0;
	}
	uint64_t tail = r->tail;
	/* Free at least 1/16 of the ring at a time (not just `need`), so a full
	 * flight recorder takes this slow path once per ~1/16 ring, not per
	 * event.  In streaming mode stay within what the host released. */
	uint64_t want = need;
	if (flight) {
		if (want < r->size / 16)
			want = r->size / 16;
	} else {
		uint64_t ct = __atomic_load_n(&r->ctail, __ATOMIC_ACQUIRE);
		uint64_t slack = r->size - (head - ct);      /* >= need here */
		want = slack < r->size / 16 ? slack : r->size / 16;
		if (want < need)
			want = need;
	}
	while (head + want - tail > r->size) {
		unsigned n = ((const uint8_t *)slot_at(r, tail))[11];
		if (n == 0 || n > UNDEBUG_MAX_SLOTS || tail + n * UNDEBUG_SLOT > head) {
			tail = head;          /* damaged ring: start over, keep going */
			break;
		}
		tail += n * UNDEBUG_SLOT;
		if (flight)
			r->overwritten++;
	}
	__atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
	return 1;
}

static inline int room(struct undebug_ring *r, uint64_t need)
{
	if (__builtin_expect(r->head + need - r->tail <= r->size, 1))
		return 1;
	return make_room(r, need);
}

/* Write one record of `nslots` slots at head: header + words (nw u64).
 * Room must have been made. */
static inline __attribute__((always_inline)) void
put(struct undebug_ring *r, uint16_t id, unsigned nslots, const uint64_t *w, unsigned nw)
{
	uint64_t pos = r->head;
	uint64_t seq = r->seq;
	uint64_t *d = slot_at(r, pos);
	d[0] = undebug__tsc();
	d[1] = (uint64_t)id | (uint64_t)r->cpu << 16 | (uint64_t)nslots << 24 |
	       (uint64_t)(uint16_t)seq << 32 | (uint64_t)r->tid << 48;
	for (unsigned s = 1; s < nslots; s++) {
		d = slot_at(r, pos + s * UNDEBUG_SLOT);
		unsigned i = 2 * (s - 1);
		d[0] = i < nw ? w[i] : 0;
		d[1] = i + 1 < nw ? w[i + 1] : 0;
	}
	r->seq = seq + 1;
	r->written++;
	__atomic_store_n(&r->head, pos + nslots * UNDEBUG_SLOT, __ATOMIC_RELEASE);
}

static void drop(struct undebug_ring *r, uint64_t n)
{
	if (!r->lost_pending)
		r->lost_first = r->seq;
	r->lost_pending += n;
	/* the only writer; others read it (undebug_trace_lost_total) */
	__atomic_store_n(&r->lost_total, __atomic_load_n(&r->lost_total, __ATOMIC_RELAXED) + n,
			 __ATOMIC_RELAXED);
	r->seq += n;
	r->attn = 0;
}

/* The consumer asked for a SYNC (it attached this ring): only the producer moves
 * sync_at and attn, so it takes the request here. */
static inline int sync_requested(struct undebug_ring *r)
{
	return __atomic_load_n(&r->sync_req, __ATOMIC_RELAXED) != r->sync_seen;
}

/* seq reached attn (or a SYNC was asked for): pending LOST report and/or SYNC.
 * Returns 0 if the caller's record (need bytes) must be dropped. */
static __attribute__((noinline)) int attention(struct undebug_ring *r, uint64_t need)
{
	uint8_t req = __atomic_load_n(&r->sync_req, __ATOMIC_ACQUIRE);
	if (req != r->sync_seen) {
		r->sync_seen = req;
		r->sync_at = r->seq;         /* SYNC soon after attach */
	}
	if (!r->tid_known) {
		r->tid = (uint16_t)undebug_os_thread();
		r->tid_known = 1;
	}
	if (r->lost_pending) {
		if (!room(r, 2 * UNDEBUG_SLOT + need))
			return 0;
		uint64_t w[2] = { r->lost_pending, r->lost_first };
		put(r, UNDEBUG_ID_LOST, 2, w, 2);
		r->lost_pending = 0;
		r->sync_at = r->seq;         /* a SYNC right after every LOST */
	}
	if (r->seq >= r->sync_at) {
		if (room(r, 3 * UNDEBUG_SLOT + need)) {
			uint64_t w[4] = { UNDEBUG_SYNC_MAGIC, ~UNDEBUG_SYNC_MAGIC, r->seq,
					  __atomic_load_n(&r->lost_total, __ATOMIC_RELAXED) };
			put(r, UNDEBUG_ID_SYNC, 3, w, 4);
			r->sync_at = r->seq + UNDEBUG_SYNC_EVERY;
		}
	}
	r->attn = r->sync_at;
	return 1;
}

static __attribute__((noinline)) void settle_nested(struct undebug_ring *r)
{
	do {
		undebug__store8(&r->busy, 1);
		undebug__barrier();
		uint16_t n = __atomic_exchange_n(&r->nested_pending, 0, __ATOMIC_RELAXED);
		if (n)
			drop(r, n);
		undebug__barrier();
		undebug__store8(&r->busy, 0);
		undebug__barrier();
	} while (__atomic_load_n(&r->nested_pending, __ATOMIC_RELAXED));
}

/* Drops are reported by the next emit that finds room; a CPU that went quiet with a
 * full ring never emits again, so its own timer tick reports them (FORMAT.md 3.2).
 * Runs on the ring's own CPU, never inside one of its emits. */
void undebug__settle_lost(void)
{
	unsigned cpu = undebug_os_cpu();
	if (cpu >= undebug__ncpus)
		return;
	struct undebug_ring *r = &undebug_trace_rings[cpu];
	if (undebug__load8(&r->busy) || !r->lost_pending)
		return;
	undebug__store8(&r->busy, 1);
	undebug__barrier();
	attention(r, 0);
	undebug__barrier();
	undebug__store8(&r->busy, 0);
	undebug__barrier();
	if (__atomic_load_n(&r->nested_pending, __ATOMIC_RELAXED))
		settle_nested(r);
}

static inline __attribute__((always_inline)) void
emit(uint16_t id, const uint64_t *w, unsigned nw)
{
	unsigned cpu = undebug_os_cpu();
	if (__builtin_expect(cpu >= undebug__ncpus, 0))
		return;
	struct undebug_ring *r = &undebug_trace_rings[cpu];
	if (__builtin_expect(undebug__load8(&r->busy), 0)) {
		__atomic_fetch_add(&r->nested_pending, 1, __ATOMIC_RELAXED);
		return;
	}
	undebug__store8(&r->busy, 1);
	undebug__barrier();
	unsigned nslots = 1 + (nw + 1) / 2;
	uint64_t need = nslots * UNDEBUG_SLOT;
	int ok = 1;
	if (__builtin_expect(r->seq >= r->attn || sync_requested(r), 0))
		ok = attention(r, need);
	if (__builtin_expect(ok, 1) && room(r, need))
		put(r, id, nslots, w, nw);
	else
		drop(r, 1);
	undebug__barrier();
	undebug__store8(&r->busy, 0);
	undebug__barrier();
	if (__builtin_expect(__atomic_load_n(&r->nested_pending, __ATOMIC_RELAXED) != 0, 0))
		settle_nested(r);
}

static inline uint16_t tp_id(const struct undebug_tp_meta *tp)
{
	return (uint16_t)(tp - __start_undebug_tracepoints);
}

void undebug__emit0(const struct undebug_tp_meta *tp)
{
	emit(tp_id(tp), 0, 0);
}
void undebug__emit1(const struct undebug_tp_meta *tp, uint64_t a)
{
	uint64_t w[1] = { a };
	emit(tp_id(tp), w, 1);
}
void undebug__emit2(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b)
{
	uint64_t w[2] = { a, b };
	emit(tp_id(tp), w, 2);
}
void undebug__emit3(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t w[3] = { a, b, c };
	emit(tp_id(tp), w, 3);
}
void undebug__emit4(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d)
{
	uint64_t w[4] = { a, b, c, d };
	emit(tp_id(tp), w, 4);
}
void undebug__emit5(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d, uint64_t e)
{
	uint64_t w[5] = { a, b, c, d, e };
	emit(tp_id(tp), w, 5);
}
void undebug__emit6(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b, uint64_t c,
		    uint64_t d, uint64_t e, uint64_t f)
{
	uint64_t w[6] = { a, b, c, d, e, f };
	emit(tp_id(tp), w, 6);
}

/* ---- reserved records and OS hooks ----------------------------------------- */

/* A record whose payload is two words then up to `maxlen` string bytes. */
static void emit_str(uint16_t id, uint64_t w0, uint64_t w1, const char *s, unsigned maxlen,
		     int len_first)
{
	uint64_t w[2 + 14];
	unsigned len = 0;
	while (s && len < maxlen && s[len])
		len++;
	for (unsigned i = 0; i < 14; i++)
		w[2 + i] = 0;
	uint8_t *b = (uint8_t *)&w[2];
	for (unsigned i = 0; i < len; i++)
		b[i] = (uint8_t)s[i];
	if (len_first) {
		w[0] = len;
		w[1] = w1;
	} else {
		w[0] = w0;
		w[1] = len;
	}
	emit(id, w, 2 + (len + 7) / 8);
}

void undebug_thread_name(uint64_t id, const char *name)
{
	if (!__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED))
		return;
	emit_str(UNDEBUG_ID_THREAD_NAME, id, 0, name, 31, 0);
}

void undebug_thread_switch(uint64_t from, uint64_t to)
{
	unsigned cpu = undebug_os_cpu();
	if (cpu >= undebug__ncpus)
		return;
	struct undebug_ring *r = &undebug_trace_rings[cpu];
	if (__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED)) {
		if (!r->tid_known) {
			r->tid = (uint16_t)from;
			r->tid_known = 1;
		}
		uint64_t w[2] = { from, to };
		emit(UNDEBUG_ID_THREAD_SWITCH, w, 2);
	}
	/* tid is only written by its own CPU; an emit from an interrupt right
	 * here is attributed to `to`. */
	r->tid = (uint16_t)to;
	r->tid_known = 1;
}

void undebug_fault(uint64_t vector, uint64_t error, uint64_t rip, uint64_t addr)
{
	if (!__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED))
		return;
	uint64_t w[4] = { vector, error, rip, addr };
	emit(UNDEBUG_ID_FAULT, w, 4);
}

void undebug_log_str(int level, const char *msg)
{
	if (!__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED))
		return;
	emit_str(UNDEBUG_ID_LOG_STR, (uint64_t)level, 0, msg, 111, 0);
}

void undebug_span_context(const char *traceparent)
{
	if (!traceparent || !traceparent[0] ||
	    !__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED))
		return;
	emit_str(UNDEBUG_ID_SPAN_CONTEXT, 0, 0, traceparent, 63, 0);
}

void undebug_panic(const char *msg)
{
	if (!undebug__ncpus)
		return;
	if (__atomic_load_n(&undebug_trace_active, __ATOMIC_RELAXED))
		emit_str(UNDEBUG_ID_PANIC, 0, 0, msg, 111, 1);
	uint64_t hz = undebug_trace_header.tsc_hz ? undebug_trace_header.tsc_hz : 1000000000ULL;
	(void)undebug_trace_drain(hz / 20);
}

uint64_t undebug_trace_room(void)
{
	unsigned cpu = undebug_os_cpu();
	if (cpu >= undebug__ncpus)
		return 0;
	struct undebug_ring *r = &undebug_trace_rings[cpu];
	if (undebug__load8(&r->mode) != RING_STREAM)
		return r->size;
	uint64_t used = r->head - __atomic_load_n(&r->ctail, __ATOMIC_ACQUIRE);
	return used >= r->size ? 0 : r->size - used;
}

uint64_t undebug_trace_lost_total(void)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < undebug__ncpus; i++)
		n += __atomic_load_n(&undebug_trace_rings[i].lost_total, __ATOMIC_RELAXED);
	return n;
}

/* ---- consumer-side attach/detach (transport lock held) --------------------- */

/* Switch ring r to streaming from its oldest record.  Returns 0 if its CPU
 * is inside an emit right now (retry later); the ring then stays a flight
 * recorder meanwhile (left in streaming mode unattached, it would drop every
 * record once full, with nobody to release room). */
int undebug__try_attach(struct undebug_ring *r)
{
	__atomic_store_n(&r->ctail, __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
	undebug__store8(&r->mode, RING_STREAM);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (undebug__load8(&r->busy)) {
		undebug__store8(&r->mode, RING_FLIGHT);
		return 0;
	}
	uint64_t t = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
	r->spos = t;
	__atomic_store_n(&r->ctail, t, __ATOMIC_RELEASE);
	/* SYNC soon after attach: the producer moves its own attn/sync_at */
	__atomic_store_n(&r->sync_req, (uint8_t)(r->sync_req + 1), __ATOMIC_RELEASE);
	r->attached = 1;
	return 1;
}

void undebug__attach_all(void)
{
	for (unsigned i = 0; i < undebug__ncpus; i++)
		if (!undebug_trace_rings[i].attached)
			(void)undebug__try_attach(&undebug_trace_rings[i]);
}

void undebug__detach_all(void)
{
	for (unsigned i = 0; i < undebug__ncpus; i++) {
		struct undebug_ring *r = &undebug_trace_rings[i];
		r->attached = 0;
		undebug__store8(&r->mode, RING_FLIGHT);
	}
}
