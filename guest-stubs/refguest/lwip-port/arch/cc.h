/* refguest: lwIP's compiler/platform port (freestanding, x86-64). */
#ifndef REFGUEST_LWIP_CC_H
#define REFGUEST_LWIP_CC_H

#include <stdint.h>
#include <stddef.h>

#define LWIP_NO_INTTYPES_H 1
#define LWIP_NO_CTYPE_H    1
#define LWIP_NO_UNISTD_H   1
#define LWIP_NO_LIMITS_H   1   /* lwIP then defines ssize_t as int itself */
#define INT_MAX            0x7fffffff
#define X8_F  "02x"
#define U16_F "u"
#define S16_F "d"
#define X16_F "x"
#define U32_F "u"
#define S32_F "d"
#define X32_F "x"
#define SZT_F "lu"
#define BYTE_ORDER LITTLE_ENDIAN
#define LWIP_RAND() ((u32_t)refguest_lwip_rand())

void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned refguest_lwip_rand(void);

#define LWIP_PLATFORM_DIAG(x) do { kprintf x; } while (0)
#define LWIP_PLATFORM_ASSERT(x) panic("lwip assertion \"%s\" at %s:%d", x, __FILE__, __LINE__)

#endif
