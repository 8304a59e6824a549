/* undebug guest stub: virtio-serial (virtio console with MULTIPORT) over the
 * legacy/transitional virtio PCI interface, polled (no interrupts).
 *
 * Found by a PCI configuration scan (ports 0xCF8/0xCFC) for vendor 0x1af4,
 * device 0x1003.  Queues used: 2 (control receive), 3 (control transmit) and
 * the receive and transmit queues of the port named "undebug.trace" (port n >= 1
 * -> queues 2n+2 and 2n+3; port 1 -> 4 and 5).  The receive queue carries the
 * host's control messages (hostmsg.h: how often to flush), polled like the rest.
 * Data buffers point straight into the
 * per-CPU rings (zero copy): ring memory is released to the producer
 * (ctail) only when the device has returned the buffer, so an in-flight
 * buffer is never rewritten. */
#include "internal.h"
#include "hostmsg.h"

void undebug__set_transport(enum undebug_transport t);

#ifdef UNDEBUG_HAVE_PIO

/* legacy virtio PCI I/O registers */
#define VIO_DEV_FEATURES  0x00
#define VIO_DRV_FEATURES  0x04
#define VIO_QUEUE_PFN     0x08
#define VIO_QUEUE_SIZE    0x0c
#define VIO_QUEUE_SEL     0x0e
#define VIO_QUEUE_NOTIFY  0x10
#define VIO_STATUS        0x12
#define VIO_ISR           0x13
#define VIO_CONFIG        0x14      /* without MSI-X */

#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FAILED 128

#define F_MULTIPORT (1u << 1)

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1

/* control events */
#define C_DEVICE_READY 0
#define C_PORT_ADD 1
#define C_PORT_REMOVE 2
#define C_PORT_READY 3
#define C_CONSOLE_PORT 4
#define C_RESIZE 5
#define C_PORT_OPEN 6
#define C_PORT_NAME 7

#define PORT_NAME "undebug.trace"
#define MAX_BUF (64u * 1024u)
#define VQ_MAX 256u
#define VQ_BYTES (3u * 4096u)
#define CTRL_RX_BUFS 16u
#define CTRL_RX_LEN 128u
#define CTRL_TX_BUFS 16u
#define DATA_RX_BUFS 4u
#define DATA_RX_LEN 64u

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vavail { uint16_t flags, idx, ring[]; };
struct vused_elem { uint32_t id, len; };
struct vused { uint16_t flags, idx; struct vused_elem ring[]; };

struct vq {
	uint16_t index, size;
	uint16_t free_head, nfree;
	uint16_t last_used, avail_idx;
	volatile struct vdesc *desc;
	volatile struct vavail *avail;
	volatile struct vused *used;
	int pending_notify;
};

static uint8_t vq_mem[4][VQ_BYTES] __attribute__((aligned(4096)));
static struct vq q_crx, q_ctx, q_dtx, q_drx;
static uint16_t io;
static int present;
static uint32_t our_port = 1;
static int port_named;
static int host_open;             /* host side of our port is connected */
static int hdr_pending;           /* stream header still to be queued */
static unsigned inflight;         /* data buffers at the device */

/* data buffer bookkeeping, by descriptor index, plus the submission FIFO */
struct dinfo { uint64_t end; uint8_t ring; uint8_t done; };
static struct dinfo dinfo[VQ_MAX];
static uint16_t fifo[VQ_MAX];
static unsigned fifo_head, fifo_n;

static uint8_t ctrl_rx_buf[CTRL_RX_BUFS][CTRL_RX_LEN] __attribute__((aligned(64)));
static uint8_t data_rx_buf[DATA_RX_BUFS][DATA_RX_LEN] __attribute__((aligned(64)));
/* the host's last word on flushing (a symbol: a debugger or a dump reads it) */
struct undebug_hostmsg_parser undebug_trace_hostmsg;
struct ctrl_msg { uint32_t id; uint16_t event, value; };
static struct ctrl_msg ctrl_tx_buf[VQ_MAX] __attribute__((aligned(64)));
static struct undebug_stream_header wire_hdr __attribute__((aligned(64)));

/* ---- PCI --------------------------------------------------------------------- */
static uint32_t pci_read(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	undebug__outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc));
	return undebug__inl(0xcfc);
}
static void pci_write(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint32_t v)
{
	undebug__outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc));
	undebug__outl(0xcfc, v);
}

static int pci_find(unsigned *b, unsigned *d, unsigned *f)
{
	for (unsigned bus = 0; bus < 4; bus++)
		for (unsigned dev = 0; dev < 32; dev++)
			for (unsigned fn = 0; fn < 8; fn++) {
				uint32_t id = pci_read(bus, dev, fn, 0);
				if ((id & 0xffff) == 0xffff) {
					if (fn == 0)
						break;
					continue;
				}
				if (id == (0x1003u << 16 | 0x1af4u)) {
					*b = bus; *d = dev; *f = fn;
					return 1;
				}
				if (fn == 0 && !(pci_read(bus, dev, 0, 0x0c) & 0x00800000u))
					break;            /* not multi-function */
			}
	return 0;
}

/* ---- virtqueues ---------------------------------------------------------------- */
static int vq_setup(struct vq *q, uint16_t index, uint8_t *mem)
{
	undebug__outw(io + VIO_QUEUE_SEL, index);
	uint16_t n = undebug__inw(io + VIO_QUEUE_SIZE);
	if (!n || n > VQ_MAX)
		return -1;
	for (unsigned i = 0; i < VQ_BYTES; i++)
		((volatile uint8_t *)mem)[i] = 0;
	q->index = index;
	q->size = n;
	q->desc = (volatile struct vdesc *)mem;
	q->avail = (volatile struct vavail *)(mem + 16u * n);
	uint64_t used_off = (16u * n + 6u + 2u * n + 4095u) & ~4095u;
	if (used_off + 6u + 8u * n > VQ_BYTES)
		return -1;
	q->used = (volatile struct vused *)(mem + used_off);
	for (uint16_t i = 0; i < n; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->nfree = n;
	q->last_used = 0;
	q->avail_idx = 0;
	q->avail->flags = AVAIL_F_NO_INTERRUPT;
	undebug__outl(io + VIO_QUEUE_PFN, (uint32_t)(undebug_os_virt_to_phys(mem) >> 12));
	return 0;
}

static int vq_add(struct vq *q, const void *buf, uint32_t len, uint16_t flags)
{
	if (!q->nfree)
		return -1;
	uint16_t d = q->free_head;
	q->free_head = q->desc[d].next;
	q->nfree--;
	q->desc[d].addr = undebug_os_virt_to_phys(buf);
	q->desc[d].len = len;
	q->desc[d].flags = flags;
	q->avail->ring[q->avail_idx % q->size] = d;
	q->avail_idx++;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	q->avail->idx = q->avail_idx;
	q->pending_notify = 1;
	return d;
}

static void vq_free(struct vq *q, uint16_t d)
{
	q->desc[d].next = q->free_head;
	q->free_head = d;
	q->nfree++;
}

/* next used descriptor index, or -1 */
static int vq_get_used(struct vq *q, uint32_t *len)
{
	uint16_t u = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	if (u == q->last_used)
		return -1;
	volatile struct vused_elem *e = &q->used->ring[q->last_used % q->size];
	uint32_t id = e->id;
	if (len)
		*len = e->len;
	q->last_used++;
	if (id >= q->size)
		return -1;
	return (int)id;
}

static void vq_kick(struct vq *q)
{
	if (!q->pending_notify)
		return;
	q->pending_notify = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!(q->used->flags & USED_F_NO_NOTIFY))
		undebug__outw(io + VIO_QUEUE_NOTIFY, q->index);
}

/* ---- control queue ------------------------------------------------------------- */
static void ctrl_send(uint32_t id, uint16_t event, uint16_t value)
{
	uint32_t len;
	int d;
	while ((d = vq_get_used(&q_ctx, &len)) >= 0)
		vq_free(&q_ctx, (uint16_t)d);
	if (!q_ctx.nfree)
		return;
	uint16_t slot = q_ctx.free_head;
	ctrl_tx_buf[slot].id = id;
	ctrl_tx_buf[slot].event = event;
	ctrl_tx_buf[slot].value = value;
	(void)vq_add(&q_ctx, &ctrl_tx_buf[slot], sizeof ctrl_tx_buf[slot], 0);
	vq_kick(&q_ctx);
}

static int streq(const char *a, const char *b, size_t alen)
{
	size_t i = 0;
	for (; i < alen && a[i] && b[i]; i++)
		if (a[i] != b[i])
			return 0;
	return (i == alen || !a[i]) && !b[i];
}

static void set_host_open(int open)
{
	if (open == host_open)
		return;
	host_open = open;
	if (open) {
		hdr_pending = 1;
	} else {
		hdr_pending = 0;
		undebug__detach_all();
		/* whoever asked for live flushing is gone with the connection */
		undebug_trace_hostmsg.live_ms = 0;
		undebug_trace_hostmsg.n = 0;
	}
}

/* ---- host -> guest: the trace port's receive queue ---------------------------- */
static void data_rx_post(void)
{
	for (unsigned i = 0; i < DATA_RX_BUFS && q_drx.nfree; i++) {
		uint16_t nd = q_drx.free_head;
		(void)vq_add(&q_drx, data_rx_buf[nd % DATA_RX_BUFS], DATA_RX_LEN, DESC_F_WRITE);
	}
	vq_kick(&q_drx);
}

/* Give used receive descriptor d back with the buffer of its slot (a queue's
 * descriptor d always carries buffer d % nbufs), so the host can always send again. */
static void rx_repost(struct vq *q, uint8_t *bufs, unsigned nbufs, uint32_t buflen, int d)
{
	vq_free(q, (uint16_t)d);
	uint16_t nd = q->free_head;
	(void)vq_add(q, bufs + (nd % nbufs) * buflen, buflen, DESC_F_WRITE);
}

/* What the host sent: fed to the parser (which trusts none of it), each buffer given
 * back in its descriptor slot so the host can always send again. */
static void data_rx_poll(void)
{
	uint32_t len;
	int d;
	int reposted = 0;
	if (!q_drx.size)
		return;
	while ((d = vq_get_used(&q_drx, &len)) >= 0) {
		/* descriptor d always carries buffer d % DATA_RX_BUFS */
		(void)undebug__hostmsg_feed(&undebug_trace_hostmsg,
					    data_rx_buf[(unsigned)d % DATA_RX_BUFS],
					    len < DATA_RX_LEN ? len : DATA_RX_LEN);
		rx_repost(&q_drx, &data_rx_buf[0][0], DATA_RX_BUFS, DATA_RX_LEN, d);
		reposted = 1;
	}
	if (reposted)
		vq_kick(&q_drx);
}

static void ctrl_poll(void)
{
	uint32_t len;
	int d;
	int reposted = 0;
	while ((d = vq_get_used(&q_crx, &len)) >= 0) {
		/* descriptor d always carries buffer d % CTRL_RX_BUFS */
		const uint8_t *b = ctrl_rx_buf[(unsigned)d % CTRL_RX_BUFS];
		if (len >= sizeof(struct ctrl_msg)) {
			const struct ctrl_msg *m = (const struct ctrl_msg *)b;
			switch (m->event) {
			case C_PORT_ADD:
				ctrl_send(m->id, C_PORT_READY, 1);
				break;
			case C_PORT_NAME:
				if (len > sizeof *m &&
				    streq((const char *)b + sizeof *m, PORT_NAME, len - sizeof *m)) {
					our_port = m->id;
					port_named = 1;
					/* port n transmits on queue 2n+3 (port 1: queue 5) */
					if (m->id != 1 && m->id < 64 && !fifo_n) {
						(void)vq_setup(&q_dtx, (uint16_t)(2 * m->id + 3), vq_mem[2]);
						if (!vq_setup(&q_drx, (uint16_t)(2 * m->id + 2), vq_mem[3]))
							data_rx_post();
					}
					ctrl_send(m->id, C_PORT_OPEN, 1);
				}
				break;
			case C_PORT_OPEN:
				if (m->id == our_port)
					set_host_open(m->value != 0);
				break;
			case C_PORT_REMOVE:
				if (m->id == our_port)
					set_host_open(0);
				break;
			default:
				break;
			}
		}
		rx_repost(&q_crx, &ctrl_rx_buf[0][0], CTRL_RX_BUFS, CTRL_RX_LEN, d);
		reposted = 1;
	}
	if (reposted)
		vq_kick(&q_crx);
}

/* ---- data ------------------------------------------------------------------------ */
static void reclaim(void)
{
	uint32_t len;
	int d;
	while ((d = vq_get_used(&q_dtx, &len)) >= 0)
		dinfo[d].done = 1;
	/* release ring memory in submission order */
	while (fifo_n) {
		uint16_t d2 = fifo[fifo_head];
		if (!dinfo[d2].done)
			break;
		if (dinfo[d2].ring != 0xff) {
			struct undebug_ring *r = &undebug_trace_rings[dinfo[d2].ring];
			if (dinfo[d2].end > r->ctail)
				__atomic_store_n(&r->ctail, dinfo[d2].end, __ATOMIC_RELEASE);
		}
		dinfo[d2].done = 0;
		vq_free(&q_dtx, d2);
		fifo_head = (fifo_head + 1) % VQ_MAX;
		fifo_n--;
		inflight--;
	}
}

static int submit(const void *buf, uint32_t len, uint8_t ring, uint64_t end)
{
	int d = vq_add(&q_dtx, buf, len, 0);
	if (d < 0)
		return -1;
	dinfo[d].end = end;
	dinfo[d].ring = ring;
	dinfo[d].done = 0;
	fifo[(fifo_head + fifo_n) % VQ_MAX] = (uint16_t)d;
	fifo_n++;
	inflight++;
	return 0;
}

/* ---- batching ------------------------------------------------------------------- */
static uint32_t flush_bytes = UNDEBUG_FLUSH_BYTES;
static uint32_t flush_ms = UNDEBUG_FLUSH_MS;       /* at rest: nobody follows live */
static uint64_t pending_since[UNDEBUG_MAX_CPUS];   /* tsc of a ring's oldest unsent data */

void undebug_trace_set_flush(uint32_t bytes, uint32_t ms)
{
	__atomic_store_n(&flush_bytes, bytes, __ATOMIC_RELAXED);
	__atomic_store_n(&flush_ms, ms, __ATOMIC_RELAXED);
}

/* The age limit now: the rest interval, or the host's LIVE one while someone follows
 * the stream live, whichever is shorter (a guest told to flush often stays so). */
static uint64_t flush_age_ms(void)
{
	uint32_t rest = __atomic_load_n(&flush_ms, __ATOMIC_RELAXED);
	uint32_t live = undebug_trace_hostmsg.live_ms;
	return live && live < rest ? live : rest;
}

/* Is ring idx's unsent data [spos, h) worth a buffer now: big, old, a half-full
 * ring (streaming must never wait for the age limit to lose nothing), or a drain. */
static int batch_ready(const struct undebug_ring *r, unsigned idx, uint64_t h, int draining)
{
	uint64_t n = h - r->spos, now = undebug__tsc();
	uint32_t bytes = __atomic_load_n(&flush_bytes, __ATOMIC_RELAXED);
	uint64_t ms = flush_age_ms();
	if (!pending_since[idx])
		pending_since[idx] = now ? now : 1;
	if (draining || n >= bytes || n >= r->size / 2 || !ms ||
	    now - pending_since[idx] >= undebug_trace_header.tsc_hz / 1000 * ms)
		return 1;
	return 0;
}

/* Queue ring r's data [spos, head) if enough descriptors are free for all
 * of it (the cut must be at a record boundary). */
static void send_ring(struct undebug_ring *r, unsigned idx)
{
	uint64_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
	if (h == r->spos)
		return;
	uint64_t n = h - r->spos;
	unsigned need = (unsigned)((n + MAX_BUF - 1) / MAX_BUF) + 1;
	if (q_dtx.nfree < need)
		return;
	uint64_t p = r->spos;
	while (p < h) {
		uint64_t off = p & (r->size - 1);
		uint64_t len = h - p;
		if (len > r->size - off)
			len = r->size - off;
		if (len > MAX_BUF)
			len = MAX_BUF;
		(void)submit(r->data + off, (uint32_t)len, (uint8_t)idx, p + len);
		p += len;
	}
	r->spos = h;
	pending_since[idx] = 0;
}

void undebug__virtio_poll(int draining)
{
	if (!present)
		return;
	(void)undebug__inb(io + VIO_ISR);      /* ack a (masked) interrupt */
	ctrl_poll();
	data_rx_poll();
	reclaim();
	if (host_open) {
		if (hdr_pending && !inflight) {
			wire_hdr = undebug_trace_header;
			wire_hdr.flags |= UNDEBUG_HDR_STREAMING;
			wire_hdr.transport = UNDEBUG_TRANSPORT_VIRTIO;
			wire_hdr.header_tsc = undebug__tsc();
			if (submit(&wire_hdr, sizeof wire_hdr, 0xff, 0) == 0)
				hdr_pending = 0;
		}
		if (!hdr_pending) {
			undebug__attach_all();
			/* one ring ready sends them all: one wake-up of the host, not one per CPU */
			int ready = draining;
			for (unsigned i = 0; i < undebug__ncpus && !ready; i++) {
				struct undebug_ring *r = &undebug_trace_rings[i];
				uint64_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
				if (r->attached && h != r->spos)
					ready = batch_ready(r, i, h, 0);
			}
			for (unsigned i = 0; ready && i < undebug__ncpus; i++) {
				struct undebug_ring *r = &undebug_trace_rings[i];
				if (r->attached)
					send_ring(r, i);
			}
		}
	}
	vq_kick(&q_dtx);
}

int undebug__virtio_idle(void)
{
	return !present || (!inflight && !hdr_pending);
}

int undebug__virtio_connected(void)
{
	return present && host_open;
}

int undebug_trace_use_virtio(void)
{
	if (!undebug__ncpus || present)
		return present ? 0 : -1;
	unsigned b, d, f;
	if (!pci_find(&b, &d, &f))
		return -1;
	uint32_t bar0 = pci_read(b, d, f, 0x10);
	if (!(bar0 & 1))
		return -1;                      /* not the legacy I/O BAR */
	io = (uint16_t)(bar0 & ~3u);
	uint32_t cmd = pci_read(b, d, f, 0x04);
	pci_write(b, d, f, 0x04, (cmd & 0xffff0000u) | (cmd & 0xffff) | 0x5);  /* I/O + bus master */

	undebug__outb(io + VIO_STATUS, 0);
	undebug__outb(io + VIO_STATUS, ST_ACK);
	undebug__outb(io + VIO_STATUS, ST_ACK | ST_DRIVER);
	uint32_t feat = undebug__inl(io + VIO_DEV_FEATURES);
	if (!(feat & F_MULTIPORT)) {
		undebug__outb(io + VIO_STATUS, ST_FAILED);
		return -1;
	}
	undebug__outl(io + VIO_DRV_FEATURES, F_MULTIPORT);
	if (vq_setup(&q_crx, 2, vq_mem[0]) || vq_setup(&q_ctx, 3, vq_mem[1]) ||
	    vq_setup(&q_dtx, 5, vq_mem[2]) || vq_setup(&q_drx, 4, vq_mem[3])) {
		undebug__outb(io + VIO_STATUS, ST_FAILED);
		return -1;
	}
	q_dtx.avail->flags = AVAIL_F_NO_INTERRUPT;
	undebug__outb(io + VIO_STATUS, ST_ACK | ST_DRIVER | ST_DRIVER_OK);
	for (unsigned i = 0; i < CTRL_RX_BUFS && i < q_crx.size; i++) {
		uint16_t nd = q_crx.free_head;
		(void)vq_add(&q_crx, ctrl_rx_buf[nd % CTRL_RX_BUFS], CTRL_RX_LEN, DESC_F_WRITE);
	}
	vq_kick(&q_crx);
	data_rx_post();
	present = 1;
	undebug__set_transport(UNDEBUG_TRANSPORT_VIRTIO);
	undebug_trace_header.transport = UNDEBUG_TRANSPORT_VIRTIO;
	ctrl_send(0, C_DEVICE_READY, 1);
	ctrl_poll();                           /* QEMU answers synchronously */
	ctrl_poll();
	return 0;
}

#else  /* no port I/O on this architecture */
int undebug_trace_use_virtio(void) { return -1; }
void undebug_trace_set_flush(uint32_t bytes, uint32_t ms) { (void)bytes; (void)ms; }
void undebug__virtio_poll(int draining) { (void)draining; }
int undebug__virtio_idle(void) { return 1; }
int undebug__virtio_connected(void) { return 0; }
#endif
