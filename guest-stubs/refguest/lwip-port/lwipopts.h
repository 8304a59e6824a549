/* refguest: lwIP 2.1 options.  NO_SYS, polled from the `net` thread only (lwIP is
 * never entered from two threads), IPv4 only, raw/UDP/TCP APIs (no netconn or
 * sockets API).  Pools are static (.bss); MEMP_NUM_TCP_PCB allows the 1,000
 * connections bench/net.py opens. */
#ifndef REFGUEST_LWIPOPTS_H
#define REFGUEST_LWIPOPTS_H

#define NO_SYS                     1
#define SYS_LIGHTWEIGHT_PROT       0
#define LWIP_TIMERS                1
#define LWIP_NETCONN               0
#define LWIP_SOCKET                0
#define LWIP_IPV4                  1
#define LWIP_IPV6                  0
#define LWIP_ARP                   1
#define LWIP_ETHERNET              1
#define LWIP_ICMP                  1
#define LWIP_RAW                   1
#define LWIP_UDP                   1
#define LWIP_TCP                   1
#define LWIP_DHCP                  0
#define LWIP_DNS                   0
#define LWIP_IGMP                  0
#define LWIP_STATS                 0
#define LWIP_NETIF_LINK_CALLBACK   0
#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_SINGLE_NETIF          0
#define LWIP_CHECKSUM_ON_COPY      0

#define MEM_ALIGNMENT              8
#define MEM_SIZE                   (4 * 1024 * 1024)
#define MEMP_NUM_PBUF              256
#define MEMP_NUM_RAW_PCB           4
#define MEMP_NUM_UDP_PCB           8
#define MEMP_NUM_TCP_PCB           1100
#define MEMP_NUM_TCP_PCB_LISTEN    4
#define MEMP_NUM_TCP_SEG           2048
#define MEMP_NUM_SYS_TIMEOUT       16
#define PBUF_POOL_SIZE             512
#define PBUF_POOL_BUFSIZE          1536

#define TCP_MSS                    1460
#define TCP_WND                    (8 * TCP_MSS)
#define TCP_SND_BUF                (8 * TCP_MSS)
#define TCP_SND_QUEUELEN           (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_LISTEN_BACKLOG         0
#define LWIP_TCP_KEEPALIVE         0

#define LWIP_NETIF_HOSTNAME        0
#define ETH_PAD_SIZE               0

#endif
