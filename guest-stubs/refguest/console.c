/* COM1 console (16550 at 0x3F8), a small printf and the string/memory
 * functions gcc may call. */
#include "kernel.h"

#define COM1 0x3f8

static spinlock_t console_lock;

void serial_init(void)
{
	outb(COM1 + 1, 0x00);    /* no interrupts */
	outb(COM1 + 3, 0x80);    /* DLAB */
	outb(COM1 + 0, 0x01);    /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);    /* 8N1 */
	outb(COM1 + 2, 0xc7);    /* FIFO on */
	outb(COM1 + 4, 0x03);    /* DTR, RTS */
}

static void serial_putc(char c)
{
	unsigned spins = 0;
	while (!(inb(COM1 + 5) & 0x20) && ++spins < 100000)
		cpu_relax();
	outb(COM1, (uint8_t)c);
}

/* Writes under the console lock so lines from different CPUs do not mix.
 * While panicking the lock is taken with a bounded wait (the holder may be
 * stopped). */
void console_write(const char *s, size_t n)
{
	uint64_t f = irq_save();
	bool locked = true;
	if (panicking) {
		unsigned spins = 0;
		while (!spin_trylock(&console_lock)) {
			if (++spins > 2000000) { locked = false; break; }
			cpu_relax();
		}
	} else {
		spin_lock(&console_lock);
	}
	for (size_t i = 0; i < n; i++)
		serial_putc(s[i]);
	if (locked)
		spin_unlock(&console_lock);
	irq_restore(f);
}

struct outbuf { char *buf; size_t n, len; };

static void out_c(struct outbuf *o, char c)
{
	if (o->len + 1 < o->n)
		o->buf[o->len] = c;
	o->len++;
}

static void out_num(struct outbuf *o, uint64_t v, unsigned base, bool neg,
		    int width, char pad)
{
	char tmp[24];
	int i = 0;
	do {
		unsigned d = v % base;
		tmp[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	while (i < width--)
		out_c(o, pad);
	while (i)
		out_c(o, tmp[--i]);
}

/* Supports %[0][width][l|ll|z]{d,i,u,x,p,s,c,%}. */
int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct outbuf o = { buf, n, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') { out_c(&o, *fmt); continue; }
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') { pad = '0'; fmt++; }
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') { lng++; fmt++; }
		switch (*fmt) {
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			out_num(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad);
			break;
		}
		case 'u': case 'x': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			out_num(&o, v, *fmt == 'u' ? 10 : 16, false, width, pad);
			break;
		}
		case 'p':
			out_c(&o, '0'); out_c(&o, 'x');
			out_num(&o, (uint64_t)va_arg(ap, void *), 16, false, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s) s = "(null)";
			int l = (int)strlen(s);
			while (l < width--) out_c(&o, ' ');
			while (*s) out_c(&o, *s++);
			break;
		}
		case 'c':
			out_c(&o, (char)va_arg(ap, int));
			break;
		case '%':
			out_c(&o, '%');
			break;
		case 0:
			fmt--;
			break;
		default:
			out_c(&o, '%'); out_c(&o, *fmt);
		}
	}
	if (n)
		buf[o.len < n ? o.len : n - 1] = 0;
	return (int)o.len;
}

int ksnprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = kvsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

void kprintf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int r = kvsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (r > (int)sizeof buf - 1) {  /* cut short: say so, and keep the line a line */
		r = sizeof buf - 1;
		memcpy(buf + r - 4, "...\n", 4);
	}
	console_write(buf, (size_t)r);
}

void *memset(void *d, int c, size_t n)
{
	void *r = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *r = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return r;
}

void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) { a++; b++; }
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (a[i] != b[i] || !a[i])
			return (unsigned char)a[i] - (unsigned char)b[i];
	}
	return 0;
}

/* Copies at most n-1 bytes and always terminates. */
char *strlcpy0(char *d, const char *s, size_t n)
{
	size_t i = 0;
	if (!n)
		return d;
	for (; i + 1 < n && s[i]; i++)
		d[i] = s[i];
	d[i] = 0;
	return d;
}
