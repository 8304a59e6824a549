/* Options of the lwIP layout tests/test_lwip_layout.py builds: dual-stack (ip_addr_t is a
 * union with a type byte), the sockets API on, window scaling: layouts unlike the
 * reference guest's (IPv4 only, NO_SYS, raw API), from lwIP's own headers. */
#define NO_SYS                 0
#define SYS_LIGHTWEIGHT_PROT   0
#define LWIP_IPV4              1
#define LWIP_IPV6              1
#define LWIP_TCP               1
#define LWIP_UDP               1
#define LWIP_RAW               1
#define LWIP_NETCONN           1
#define LWIP_SOCKET            1
#define LWIP_PROVIDE_ERRNO     1
#define LWIP_TIMEVAL_PRIVATE   1
#define LWIP_WND_SCALE         1
#define TCP_RCV_SCALE          2
#define LWIP_NETIF_HOSTNAME    1
#define LWIP_NETCONN_FULLDUPLEX 0
#define MEMP_NUM_NETCONN       4
