/* lwIP state planted statically, with lwIP's real headers and tests/data/lwip/lwipopts.h
 * (dual-stack, sockets API): tests/test_lwip_layout.py reads it from the linked ELF's
 * data, nothing runs.  Planted: an IPv4 and an IPv6 connection, a listener, a TIME_WAIT
 * pcb with an absurd state (42), a UDP pcb, an interface, and sockets[2] -> the IPv6
 * connection's netconn. */
#include "lwip/api.h"
#include "lwip/netif.h"
#include "lwip/raw.h"
#include "lwip/tcp.h"
#include "lwip/udp.h"
#include "lwip/priv/sockets_priv.h"
#include "lwip/priv/tcp_priv.h"

#define V4(a, b, c, d) { .u_addr = { .ip4 = { .addr = PP_HTONL(LWIP_MAKEU32(a, b, c, d)) } }, \
                         .type = IPADDR_TYPE_V4 }

static struct tcp_pcb conn_v6 = {
	.local_ip = { .u_addr = { .ip6 = { .addr = { PP_HTONL(0x20010db8u), 0, 0, PP_HTONL(1) } } },
		      .type = IPADDR_TYPE_V6 },
	.remote_ip = { .u_addr = { .ip6 = { .addr = { PP_HTONL(0x20010db8u), 0, 0, PP_HTONL(2) } } },
		       .type = IPADDR_TYPE_V6 },
	.state = ESTABLISHED, .local_port = 443, .remote_port = 50001,
	.snd_lbb = 5000, .lastack = 4000, .cwnd = 2920, .rto = 6,
};
static struct tcp_pcb conn_v4 = {
	.next = &conn_v6, .local_ip = V4(192, 168, 1, 10), .remote_ip = V4(192, 168, 1, 20),
	.state = CLOSE_WAIT, .local_port = 80, .remote_port = 50002,
	.snd_lbb = 77, .lastack = 77, .cwnd = 1460, .rto = 3,
};
static struct tcp_pcb weird = {
	.local_ip = V4(192, 168, 1, 10), .state = 42, .local_port = 80, .remote_port = 50003,
};
static struct tcp_pcb_listen listener = { .local_ip = V4(0, 0, 0, 0), .state = LISTEN,
					  .local_port = 80 };
static struct udp_pcb dns = { .local_ip = V4(192, 168, 1, 10), .local_port = 5353 };
static struct netif eth = {
	.ip_addr = V4(192, 168, 1, 10), .netmask = V4(255, 255, 255, 0), .gw = V4(192, 168, 1, 1),
	.mtu = 9000, .hwaddr = { 2, 0, 0, 0, 0, 0x42 }, .hwaddr_len = 6,
	.flags = NETIF_FLAG_UP | NETIF_FLAG_LINK_UP | NETIF_FLAG_ETHARP,
	.name = { 'e', 't' }, .num = 3,
};
static struct netconn conn = { .type = NETCONN_TCP, .pcb = { .tcp = &conn_v6 } };

struct tcp_pcb *tcp_active_pcbs = &conn_v4;
struct tcp_pcb *tcp_bound_pcbs;
struct tcp_pcb *tcp_tw_pcbs = &weird;
union tcp_listen_pcbs_t tcp_listen_pcbs = { .listen_pcbs = &listener };
struct udp_pcb *udp_pcbs = &dns;
struct netif *netif_list = &eth;
static struct raw_pcb *raw_pcbs;
static struct lwip_sock sockets[4] = { [2] = { .conn = &conn } };

struct raw_pcb **keep_raw = &raw_pcbs;      /* statics the compiler must keep */
struct lwip_sock *keep_sockets = sockets;

void _start(void)
{
	for (;;)
		;
}
