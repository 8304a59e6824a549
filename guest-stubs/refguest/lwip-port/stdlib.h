/* refguest: the <stdlib.h> lwIP includes (netif_find's atoi, in net.c). */
#ifndef REFGUEST_LWIP_STDLIB_H
#define REFGUEST_LWIP_STDLIB_H
int atoi(const char *s);
#endif
