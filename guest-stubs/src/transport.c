/* undebug guest stub: the flusher (consumer side) and the synchronous
 * transports (16550 UART, debugcon port 0xE9, an OS-provided write).
 * virtio-serial lives in virtio.c.
 *
 * One consumer at a time: whoever wins the transport try-lock.  The flusher
 * only ever sends a ring up to its committed head, which is a record
 * boundary, so byte streams of different CPUs never interleave mid-record.
 *
 * The byte transports write a byte at a time from the poll (a timer tick), so
 * a poll sends at most UNDEBUG_FLUSH_BUDGET bytes, whole records, rings in
 * turn; a UART that stays busy or a custom writer that takes nothing ends the
 * poll and the next one resumes that record first.  Nothing is dropped here:
 * what is not sent stays in the ring, whose producer drops (and counts, in
 * LOST records) what no longer fits. */
#include "internal.h"

#ifndef UNDEBUG_FLUSH_BUDGET
#define UNDEBUG_FLUSH_BUDGET 2048u       /* bytes per poll over UART / 0xE9 / custom */
#endif
#define UART_SPINS 2000u                 /* pauses waiting for the THR before giving up */

/* virtio.c */
void undebug__virtio_poll(int draining);
int undebug__virtio_idle(void);
int undebug__virtio_connected(void);

static volatile uint32_t tlock;
static enum undebug_transport transport;
static uint16_t uart_base;
static size_t (*custom_write)(const void *, size_t);
static int sync_hdr_sent;                /* 0, then 1 + header bytes sent */
static struct undebug_trace_flush_stats flush_stats;
static unsigned sync_next;               /* ring the next poll starts with */
static uint64_t sync_rest;               /* bytes of a record a stall left unsent, ring sync_next */

static int trylock(void)
{
	return !__atomic_exchange_n(&tlock, 1, __ATOMIC_ACQUIRE);
}
static void unlock(void)
{
	__atomic_store_n(&tlock, 0, __ATOMIC_RELEASE);
}

enum undebug_transport undebug_trace_transport(void) { return transport; }

void undebug__set_transport(enum undebug_transport t)
{
	transport = t;
}

int undebug_trace_connected(void)
{
	switch (transport) {
	case UNDEBUG_TRANSPORT_VIRTIO: return undebug__virtio_connected();
	case UNDEBUG_TRANSPORT_UART:
	case UNDEBUG_TRANSPORT_E9:
	case UNDEBUG_TRANSPORT_CUSTOM: return 1;
	default: return 0;
	}
}

/* ---- synchronous byte transports ----------------------------------------------- */
/* Bytes written, < n when the device stays busy (the rest is for a later poll). */
static size_t sync_write(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	size_t done = 0;
	switch (transport) {
#ifdef UNDEBUG_HAVE_PIO
	case UNDEBUG_TRANSPORT_E9: {
		size_t left = n;
		__asm__ volatile("rep outsb" : "+S"(p), "+c"(left) : "d"((uint16_t)0xe9) : "memory");
		done = n;
		break;
	}
	case UNDEBUG_TRANSPORT_UART:
		for (; done < n; done++) {
			unsigned spins = 0;
			while (!(undebug__inb(uart_base + 5) & 0x20)) {
				if (++spins > UART_SPINS)
					return done;          /* the THR stays full: not now */
				__asm__ volatile("pause");
			}
			undebug__outb(uart_base, p[done]);
		}
		break;
#endif
	case UNDEBUG_TRANSPORT_CUSTOM:
		while (done < n) {
			size_t w = custom_write(p + done, n - done);
			if (!w)
				break;                /* the OS takes nothing now: later */
			done += w;
		}
		break;
	default:
		done = n;
		break;
	}
	return done;
}

/* Send [spos, end) of ring r; false when the transport stopped short (the rest of
 * that record is sent first by the next poll). */
static int sync_send(struct undebug_ring *r, uint64_t end)
{
	while (r->spos < end) {
		uint64_t off = r->spos & (r->size - 1);
		uint64_t n = end - r->spos;
		if (n > r->size - off)
			n = r->size - off;
		size_t w = sync_write(r->data + off, n);
		r->spos += w;
		flush_stats.bytes_sent += w;
		if (w < n)
			return 0;
	}
	return 1;
}

/* Where whole records from spos up to head fit in `budget` bytes (at least one). */
static uint64_t sync_records_end(struct undebug_ring *r, uint64_t head, uint64_t budget)
{
	uint64_t end = r->spos;
	while (end < head) {
		unsigned k = r->data[(end & (r->size - 1)) + 11];
		uint64_t len = (uint64_t)k * UNDEBUG_SLOT;
		if (k == 0 || k > UNDEBUG_MAX_SLOTS || end + len > head)
			return head;              /* a damaged ring: send what is there */
		if (end + len - r->spos > budget && end > r->spos)
			break;
		end += len;
	}
	return end;
}

static void sync_poll(void)
{
	static struct undebug_stream_header h;
	if (!sync_hdr_sent) {
		h = undebug_trace_header;
		h.flags |= UNDEBUG_HDR_STREAMING;
		h.transport = (uint8_t)transport;
		h.header_tsc = undebug__tsc();
		sync_hdr_sent = 1;
	}
	if (sync_hdr_sent <= (int)sizeof h) {     /* the header first, whole */
		size_t at = (size_t)sync_hdr_sent - 1;
		size_t w = sync_write((const uint8_t *)&h + at, sizeof h - at);
		flush_stats.bytes_sent += w;
		sync_hdr_sent += (int)w;
		if (sync_hdr_sent <= (int)sizeof h)
			return;
	}
	undebug__attach_all();
	uint64_t t0 = undebug__tsc();
	uint64_t budget = UNDEBUG_FLUSH_BUDGET;
	unsigned n = undebug__ncpus, first = sync_next < n ? sync_next : 0;
	int stalled = 0;
	flush_stats.polls++;
	for (unsigned j = 0; j < n && budget && !stalled; j++) {
		unsigned i = (first + j) % n;
		struct undebug_ring *r = &undebug_trace_rings[i];
		if (!r->attached)
			continue;
		uint64_t before = r->spos;
		if (sync_rest) {                  /* finish the record a stall cut */
			stalled = !sync_send(r, r->spos + sync_rest);
			sync_rest -= r->spos - before;
		}
		if (!stalled) {
			uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
			uint64_t end = sync_records_end(r, head, budget);
			if (!sync_send(r, end)) {
				stalled = 1;
				sync_rest = end - r->spos;
			}
		}
		uint64_t sent = r->spos - before;
		budget = sent >= budget ? 0 : budget - sent;
		__atomic_store_n(&r->ctail, r->spos, __ATOMIC_RELEASE);
		sync_next = stalled ? i : (i + 1) % n;
	}
	if (stalled)
		flush_stats.stalled_polls++;
	for (unsigned i = 0; i < n; i++) {
		struct undebug_ring *r = &undebug_trace_rings[i];
		if (r->attached && r->spos != __atomic_load_n(&r->head, __ATOMIC_ACQUIRE)) {
			flush_stats.deferred_polls++;     /* bytes left for a later poll */
			break;
		}
	}
	uint64_t took = undebug__tsc() - t0;
	if (took > flush_stats.max_poll_cycles)
		flush_stats.max_poll_cycles = took;
}

void undebug_trace_flush_stats(struct undebug_trace_flush_stats *out)
{
	*out = flush_stats;
}

int undebug_trace_use_uart(uint16_t io_base)
{
	if (!undebug__ncpus)
		return -1;
#ifdef UNDEBUG_HAVE_PIO
	undebug__outb(io_base + 7, 0x5a);          /* scratch register: present? */
	if (undebug__inb(io_base + 7) != 0x5a)
		return -1;
	undebug__outb(io_base + 1, 0x00);
	undebug__outb(io_base + 3, 0x80);
	undebug__outb(io_base + 0, 0x01);          /* 115200 */
	undebug__outb(io_base + 1, 0x00);
	undebug__outb(io_base + 3, 0x03);
	undebug__outb(io_base + 2, 0xc7);
	undebug__outb(io_base + 4, 0x03);
	uart_base = io_base;
	transport = UNDEBUG_TRANSPORT_UART;
	undebug_trace_header.transport = UNDEBUG_TRANSPORT_UART;
	return 0;
#else
	(void)io_base;
	return -1;
#endif
}

int undebug_trace_use_e9(void)
{
	if (!undebug__ncpus)
		return -1;
#ifdef UNDEBUG_HAVE_PIO
	if (undebug__inb(0xe9) != 0xe9)            /* QEMU debugcon reads back 0xE9 */
		return -1;
	transport = UNDEBUG_TRANSPORT_E9;
	undebug_trace_header.transport = UNDEBUG_TRANSPORT_E9;
	return 0;
#else
	return -1;
#endif
}

int undebug_trace_use_custom(size_t (*write)(const void *buf, size_t len))
{
	if (!undebug__ncpus || !write)
		return -1;
	custom_write = write;
	transport = UNDEBUG_TRANSPORT_CUSTOM;
	undebug_trace_header.transport = UNDEBUG_TRANSPORT_CUSTOM;
	return 0;
}

/* ---- flusher ------------------------------------------------------------------ */
static void poll_locked(int draining)
{
	switch (transport) {
	case UNDEBUG_TRANSPORT_VIRTIO:
		undebug__virtio_poll(draining);
		break;
	case UNDEBUG_TRANSPORT_UART:
	case UNDEBUG_TRANSPORT_E9:
	case UNDEBUG_TRANSPORT_CUSTOM:
		sync_poll();
		break;
	default:
		break;
	}
}

void undebug_trace_poll(void)
{
	if (!undebug__ncpus || transport == UNDEBUG_TRANSPORT_NONE)
		return;
	undebug__settle_lost();
	if (!trylock())
		return;
	poll_locked(0);
	unlock();
}

static int all_sent(void)
{
	for (unsigned i = 0; i < undebug__ncpus; i++) {
		struct undebug_ring *r = &undebug_trace_rings[i];
		if (r->attached && r->spos != __atomic_load_n(&r->head, __ATOMIC_ACQUIRE))
			return 0;
	}
	return 1;
}

int undebug_trace_drain(uint64_t max_cycles)
{
	if (!undebug__ncpus || transport == UNDEBUG_TRANSPORT_NONE)
		return -1;
	uint64_t end = undebug__tsc() + max_cycles;
	while (!trylock()) {
		if (undebug__tsc() > end)
			return -1;
		__asm__ volatile("" ::: "memory");
	}
	int rc = -1;
	for (;;) {
		poll_locked(1);
		int idle = transport != UNDEBUG_TRANSPORT_VIRTIO || undebug__virtio_idle();
		if (!undebug_trace_connected() || (all_sent() && idle)) {
			rc = undebug_trace_connected() ? 0 : -1;
			break;
		}
		if (undebug__tsc() > end)
			break;
	}
	unlock();
	return rc;
}
