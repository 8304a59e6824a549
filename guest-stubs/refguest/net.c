/* refguest network: a legacy virtio-net PCI driver (polled, no interrupts) under
 * lwIP 2.1 in NO_SYS mode, driven by one thread, `net`, which alone ever calls
 * into lwIP.  Services: TCP echo on port 7, UDP echo on port 7 (RFC 862), a raw
 * ICMP pcb that only watches.  Address: QEMU user networking's defaults
 * (10.0.2.15/24, gateway 10.0.2.2).  lwIP itself is Debian's source package,
 * fetched at build time (fetch-lwip.py), never kept in the repository. */
#include "kernel.h"

#include "lwip/etharp.h"
#include "lwip/init.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/raw.h"
#include "lwip/tcp.h"
#include "lwip/timeouts.h"
#include "lwip/udp.h"
#include "lwip/priv/tcp_priv.h"
#include "netif/ethernet.h"

/* ---- PCI and legacy virtio registers ---------------------------------------- */
#define VIRTIO_VENDOR      0x1af4u
#define VIRTIO_NET_LEGACY  0x1000u
#define VIO_DEV_FEATURES   0x00
#define VIO_DRV_FEATURES   0x04
#define VIO_QUEUE_PFN      0x08
#define VIO_QUEUE_SIZE     0x0c
#define VIO_QUEUE_SEL      0x0e
#define VIO_QUEUE_NOTIFY   0x10
#define VIO_STATUS         0x12
#define VIO_ISR            0x13
#define VIO_CONFIG         0x14     /* without MSI-X: mac[6], status */
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FAILED 128
#define NET_F_MAC (1u << 5)
#define DESC_F_WRITE 2
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1

#define VQ_MAX   256u
#define VQ_BYTES (3u * 4096u)
#define BUF_LEN  2048u
#define HDR_LEN  10u                /* struct virtio_net_hdr, no mergeable buffers */
#define RX_BUFS  128u
#define TX_BUFS  128u

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vavail { uint16_t flags, idx, ring[]; };
struct vused_elem { uint32_t id, len; };
struct vused { uint16_t flags, idx; struct vused_elem ring[]; };
struct vq {
	uint16_t index, size, last_used, avail_idx;
	volatile struct vdesc *desc;
	volatile struct vavail *avail;
	volatile struct vused *used;
};

static uint8_t vq_mem[2][VQ_BYTES] __attribute__((aligned(4096)));
static uint8_t rx_buf[RX_BUFS][BUF_LEN] __attribute__((aligned(64)));
static uint8_t tx_buf[TX_BUFS][BUF_LEN] __attribute__((aligned(64)));
static uint8_t tx_busy[TX_BUFS];
static unsigned tx_inflight;
static struct vq rxq, txq;
static uint16_t io;

/* options (main.c parses net= and corrupt=) */
int opt_net = NET_AUTO;
int opt_corrupt_cyclic_pcbs;

struct netif refguest_netif;         /* the one interface, "en0" */
uint64_t net_rx_frames, net_tx_frames, net_tx_dropped;

static uint32_t pci_read(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
	outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc));
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"((uint16_t)0xcfc));
	return v;
}
static void pci_write(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint32_t v)
{
	outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc));
	outl(0xcfc, v);
}
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(p)); }
static inline uint16_t inw(uint16_t p) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint32_t inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }

/* the legacy I/O BAR of the first virtio-net device, or 0 */
static uint16_t pci_find_net(void)
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
				if (id == (VIRTIO_NET_LEGACY << 16 | VIRTIO_VENDOR)) {
					uint32_t bar0 = pci_read(bus, dev, fn, 0x10);
					if (!(bar0 & 1))
						return 0;
					uint32_t cmd = pci_read(bus, dev, fn, 0x04);
					pci_write(bus, dev, fn, 0x04, cmd | 0x5);   /* I/O + bus master */
					return (uint16_t)(bar0 & ~3u);
				}
				if (fn == 0 && !(pci_read(bus, dev, 0, 0x0c) & 0x00800000u))
					break;
			}
	return 0;
}

static int vq_setup(struct vq *q, uint16_t index, uint8_t *mem)
{
	outw(io + VIO_QUEUE_SEL, index);
	uint16_t n = inw(io + VIO_QUEUE_SIZE);
	if (!n || n > VQ_MAX)
		return -1;
	memset(mem, 0, VQ_BYTES);
	q->index = index;
	q->size = n;
	q->desc = (volatile struct vdesc *)mem;
	q->avail = (volatile struct vavail *)(mem + 16u * n);
	uint64_t used_off = (16u * n + 6u + 2u * n + 4095u) & ~4095u;
	if (used_off + 6u + 8u * n > VQ_BYTES)
		return -1;
	q->used = (volatile struct vused *)(mem + used_off);
	q->last_used = q->avail_idx = 0;
	q->avail->flags = AVAIL_F_NO_INTERRUPT;
	outl(io + VIO_QUEUE_PFN, (uint32_t)((uint64_t)mem >> 12));
	return 0;
}

/* descriptor d (fixed: d carries buffer d) made available */
static void vq_post(struct vq *q, uint16_t d, void *buf, uint32_t len, uint16_t flags)
{
	q->desc[d].addr = (uint64_t)buf;    /* identity-mapped */
	q->desc[d].len = len;
	q->desc[d].flags = flags;
	q->desc[d].next = 0;
	q->avail->ring[q->avail_idx % q->size] = d;
	q->avail_idx++;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	q->avail->idx = q->avail_idx;
}

static void vq_kick(struct vq *q)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!(q->used->flags & USED_F_NO_NOTIFY))
		outw(io + VIO_QUEUE_NOTIFY, q->index);
}

static int vq_get_used(struct vq *q, uint32_t *len)
{
	uint16_t u = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	if (u == q->last_used)
		return -1;
	volatile struct vused_elem *e = &q->used->ring[q->last_used % q->size];
	uint32_t id = e->id;
	*len = e->len;
	q->last_used++;
	return id < q->size ? (int)id : -1;
}

/* ---- lwIP netif -------------------------------------------------------------- */
static void tx_reclaim(void)
{
	uint32_t len;
	int d;
	while ((d = vq_get_used(&txq, &len)) >= 0)
		if ((unsigned)d < TX_BUFS && tx_busy[d]) {
			tx_busy[d] = 0;
			tx_inflight--;
		}
}

static err_t en_linkoutput(struct netif *nif, struct pbuf *p)
{
	(void)nif;
	tx_reclaim();
	unsigned slot = 0;
	while (slot < TX_BUFS && slot < txq.size && tx_busy[slot])
		slot++;
	if (slot >= TX_BUFS || slot >= txq.size || p->tot_len > BUF_LEN - HDR_LEN) {
		net_tx_dropped++;
		return ERR_MEM;
	}
	uint8_t *b = tx_buf[slot];
	memset(b, 0, HDR_LEN);
	u16_t n = pbuf_copy_partial(p, b + HDR_LEN, p->tot_len, 0);
	tx_busy[slot] = 1;
	tx_inflight++;
	vq_post(&txq, (uint16_t)slot, b, HDR_LEN + n, 0);
	vq_kick(&txq);
	net_tx_frames++;
	return ERR_OK;
}

static err_t en_init(struct netif *nif)
{
	nif->name[0] = 'e';
	nif->name[1] = 'n';
	nif->mtu = 1500;
	nif->hwaddr_len = ETH_HWADDR_LEN;
	for (unsigned i = 0; i < ETH_HWADDR_LEN; i++)
		nif->hwaddr[i] = inb((uint16_t)(io + VIO_CONFIG + i));
	nif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET;
	nif->output = etharp_output;
	nif->linkoutput = en_linkoutput;
	return ERR_OK;
}

static void rx_poll(void)
{
	uint32_t len;
	int d;
	int reposted = 0;
	while ((d = vq_get_used(&rxq, &len)) >= 0) {
		if ((unsigned)d >= RX_BUFS)
			continue;
		if (len > HDR_LEN && len <= BUF_LEN) {
			struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)(len - HDR_LEN), PBUF_POOL);
			if (p) {
				pbuf_take(p, rx_buf[d] + HDR_LEN, (u16_t)(len - HDR_LEN));
				if (refguest_netif.input(p, &refguest_netif) != ERR_OK)
					pbuf_free(p);
				net_rx_frames++;
			}
		}
		vq_post(&rxq, (uint16_t)d, rx_buf[d], BUF_LEN, DESC_F_WRITE);
		reposted = 1;
	}
	if (reposted)
		vq_kick(&rxq);
}

/* ---- services ------------------------------------------------------------------ */
static err_t echo_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
	(void)arg;
	if (!p) {                                   /* the peer closed */
		tcp_arg(pcb, NULL);
		tcp_recv(pcb, NULL);
		if (tcp_close(pcb) != ERR_OK)
			tcp_abort(pcb);
		return err == ERR_OK ? ERR_OK : ERR_ABRT;
	}
	for (struct pbuf *q = p; q; q = q->next)
		if (tcp_write(pcb, q->payload, q->len, TCP_WRITE_FLAG_COPY) != ERR_OK)
			break;
	tcp_output(pcb);
	tcp_recved(pcb, p->tot_len);
	pbuf_free(p);
	return ERR_OK;
}

static err_t echo_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
	(void)arg;
	if (err != ERR_OK || !pcb)
		return ERR_VAL;
	tcp_recv(pcb, echo_recv);
	return ERR_OK;
}

static void udp_echo_recv(void *arg, struct udp_pcb *pcb, struct pbuf *p,
			  const ip_addr_t *addr, u16_t port)
{
	(void)arg;
	udp_sendto(pcb, p, addr, port);
	pbuf_free(p);
}

static u8_t icmp_watch(void *arg, struct raw_pcb *pcb, struct pbuf *p, const ip_addr_t *addr)
{
	(void)arg; (void)pcb; (void)p; (void)addr;
	return 0;                                   /* not eaten: icmp.c answers pings */
}

static void services_start(void)
{
	struct tcp_pcb *l = tcp_new();
	if (!l || tcp_bind(l, IP_ANY_TYPE, 7) != ERR_OK || !(l = tcp_listen(l)))
		panic("net: cannot listen on tcp port 7");
	tcp_accept(l, echo_accept);
	struct udp_pcb *u = udp_new();
	if (!u || udp_bind(u, IP_ANY_TYPE, 7) != ERR_OK)
		panic("net: cannot bind udp port 7");
	udp_recv(u, udp_echo_recv, NULL);
	struct raw_pcb *r = raw_new(IP_PROTO_ICMP);
	if (r)
		raw_recv(r, icmp_watch, NULL);
}

/* corrupt=cyclic-pcbs: two pcbs bound to ports 1001 and 1002 (tcp_bound_pcbs =
 * 1002 -> 1001), then 1001 -> 1002.  The running stack never walks the bound
 * list again (no bind or connect follows), so it keeps serving. */
static void plant_cyclic_pcbs(void)
{
	struct tcp_pcb *a = tcp_new(), *b = tcp_new();
	if (!a || !b || tcp_bind(a, IP_ANY_TYPE, 1001) != ERR_OK ||
	    tcp_bind(b, IP_ANY_TYPE, 1002) != ERR_OK) {
		kprintf("refguest: warning: corrupt=cyclic-pcbs: could not bind\n");
		return;
	}
	a->next = b;
	kprintf("refguest: corrupt=cyclic-pcbs planted\n");
}

/* ---- the net thread --------------------------------------------------------------- */
u32_t sys_now(void)
{
	return (u32_t)uptime_ms();
}

unsigned refguest_lwip_rand(void)
{
	static uint64_t s;
	if (!s)
		s = rdtsc() | 1;
	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return (unsigned)s;
}

int atoi(const char *s)
{
	int v = 0;
	while (*s >= '0' && *s <= '9' && v < 100000000)
		v = v * 10 + (*s++ - '0');
	return v;
}

static void net_main(void *arg)
{
	(void)arg;
	for (;;) {
		(void)inb((uint16_t)(io + VIO_ISR));    /* ack a (masked) interrupt */
		rx_poll();
		tx_reclaim();
		sys_check_timeouts();
		sleep_ms(1);
	}
}

/* Bring up the device and lwIP; start the `net` thread.  Called by kmain after
 * the workers, so the network adds no thread when it is off. */
void net_start(void)
{
	if (opt_net == NET_OFF)
		return;
	io = pci_find_net();
	if (!io) {
		if (opt_net == NET_ON)
			kprintf("refguest: warning: net=on: no virtio-net PCI device (network off)\n");
		return;
	}
	outb(io + VIO_STATUS, 0);
	outb(io + VIO_STATUS, ST_ACK);
	outb(io + VIO_STATUS, ST_ACK | ST_DRIVER);
	uint32_t feat = inl(io + VIO_DEV_FEATURES);
	outl(io + VIO_DRV_FEATURES, feat & NET_F_MAC);
	if (!(feat & NET_F_MAC) || vq_setup(&rxq, 0, vq_mem[0]) || vq_setup(&txq, 1, vq_mem[1])) {
		outb(io + VIO_STATUS, ST_FAILED);
		kprintf("refguest: warning: virtio-net: unusable device (network off)\n");
		return;
	}
	outb(io + VIO_STATUS, ST_ACK | ST_DRIVER | ST_DRIVER_OK);
	for (unsigned i = 0; i < RX_BUFS && i < rxq.size; i++)
		vq_post(&rxq, (uint16_t)i, rx_buf[i], BUF_LEN, DESC_F_WRITE);
	vq_kick(&rxq);

	lwip_init();
	ip4_addr_t addr, mask, gw;
	IP4_ADDR(&addr, 10, 0, 2, 15);
	IP4_ADDR(&mask, 255, 255, 255, 0);
	IP4_ADDR(&gw, 10, 0, 2, 2);
	if (!netif_add(&refguest_netif, &addr, &mask, &gw, NULL, en_init, ethernet_input))
		panic("net: netif_add failed");
	netif_set_default(&refguest_netif);
	netif_set_up(&refguest_netif);
	netif_set_link_up(&refguest_netif);
	services_start();
	if (opt_corrupt_cyclic_pcbs)
		plant_cyclic_pcbs();
	const uint8_t *m = refguest_netif.hwaddr;
	kprintf("refguest: net en0 mac=%02x:%02x:%02x:%02x:%02x:%02x ipv4=10.0.2.15/24 "
		"services=tcp:7,udp:7\n", m[0], m[1], m[2], m[3], m[4], m[5]);
	thread_create("net", net_main, NULL, 1);
}
