/* undebug guest stub: the flusher (consumer side) and the synchronous
 * transports (16550 UART, debugcon port 0xE9, an OS-provided write).
 * virtio-serial lives in virtio.c.
 *
 * One consumer at a time: whoever wins the transport try-lock.  The flusher
 * only ever sends a ring up to its committed head, which is a record
 * boundary, so byte streams of different CPUs never interleave mid-record. */
#include "internal.h"

/* virtio.c */
void undebug__virtio_poll(int draining);
int undebug__virtio_idle(void);
int undebug__virtio_connected(void);

static volatile uint32_t tlock;
static enum undebug_transport transport;
static uint16_t uart_base;
static size_t (*custom_write)(const void *, size_t);
static int sync_hdr_sent;

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
static void sync_write(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	switch (transport) {
#ifdef UNDEBUG_HAVE_PIO
	case UNDEBUG_TRANSPORT_E9:
		__asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"((uint16_t)0xe9) : "memory");
		break;
	case UNDEBUG_TRANSPORT_UART:
		for (size_t i = 0; i < n; i++) {
			for (unsigned spins = 0; !(undebug__inb(uart_base + 5) & 0x20) && spins < 100000; spins++)
				__asm__ volatile("pause");
			undebug__outb(uart_base, p[i]);
		}
		break;
#endif
	case UNDEBUG_TRANSPORT_CUSTOM:
		while (n) {
			size_t w = custom_write(p, n);
			if (!w)
				return;               /* the OS gave up: bytes are lost */
			p += w;
			n -= w;
		}
		break;
	default:
		break;
	}
}

static void sync_poll(void)
{
	if (!sync_hdr_sent) {
		struct undebug_stream_header h = undebug_trace_header;
		h.flags |= UNDEBUG_HDR_STREAMING;
		h.transport = (uint8_t)transport;
		h.header_tsc = undebug__tsc();
		sync_write(&h, sizeof h);
		sync_hdr_sent = 1;
	}
	undebug__attach_all();
	for (unsigned i = 0; i < undebug__ncpus; i++) {
		struct undebug_ring *r = &undebug_trace_rings[i];
		if (!r->attached)
			continue;
		uint64_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
		while (r->spos < h) {
			uint64_t off = r->spos & (r->size - 1);
			uint64_t n = h - r->spos;
			if (n > r->size - off)
				n = r->size - off;
			sync_write(r->data + off, n);
			r->spos += n;
		}
		__atomic_store_n(&r->ctail, r->spos, __ATOMIC_RELEASE);
	}
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
