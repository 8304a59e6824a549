/* A MIRROR of Unikraft 0.17's tracepoint format for undebug's tests, NOT Unikraft's code:
 * the TPde records in .uk_tracepoints_list, the keyvals, struct uk_tracepoint_header and the
 * buffer variables of lib/ukdebug (RELEASE-0.17.0), written here from that format. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BUFSZ
#define BUFSZ 4096
#endif
#define TRHD 0x64685254
#define TPDE 0x65645054

typedef uint64_t __nsec;
struct uk_tracepoint_header { uint32_t magic; uint32_t size; __nsec time; void *cookie; };

char uk_trace_buffer[BUFSZ];
size_t uk_trace_buffer_free = BUFSZ;
char *uk_trace_buffer_writep = uk_trace_buffer;

#define SECT(s) __attribute__((section(s ",\"\",@note#"), used))
SECT(".uk_trace_keyvals") static const char format_version[] = "format_version = 1";

#define TP(var, NR, tname, fmt, SIZES, TYPES) \
	SECT(".uk_tracepoints_list") static struct { \
		uint32_t magic, size; uint64_t cookie; \
		uint8_t args_nr, name_len, format_len, sizes[NR], types[NR]; \
		char name[sizeof(tname)]; char format[sizeof(fmt)]; \
	} var = { TPDE, sizeof(var), (uint64_t)&var, NR, sizeof(tname), sizeof(fmt), \
		  SIZES, TYPES, tname, fmt }; \
	static const struct info var##_info = { NR, SIZES, TYPES }
#define L(...) { __VA_ARGS__ }
/* what the inline tracepoint function knows at compile time (the records are not loaded) */
struct info { int n; uint8_t sizes[7], types[7]; };

TP(tp_work, 2, "trace_work", "%d %lu", L(4, 8), L(0, 0));
TP(tp_small, 2, "small", "%c %hd", L(1, 2), L(0, 0));
TP(tp_str, 2, "named_thing_with_a_long_name", "%s %ld", L(8, 8), L(1, 0));
TP(tp_tick, 0, "tk", "", L(), L());

static uint64_t clock_ns;

static void emit(void *cookie, int n, const uint8_t *sizes, const uint8_t *types, const long *args)
{
	struct uk_tracepoint_header h;
	char *p;
	size_t free;
	int i;

	if (uk_trace_buffer_free < sizeof(h))
		return;
	memset(uk_trace_buffer_writep, 0, 4);  /* magic 0 until the sample is complete */
	free = uk_trace_buffer_free - sizeof(h);
	p = uk_trace_buffer_writep + sizeof(h);
	for (i = 0; i < n; i++) {
		size_t len = types[i] ? strnlen((const char *)args[i], 80) : 0;
		size_t size = types[i] ? len + 1 : sizes[i];

		if (free < size) {
			uk_trace_buffer_free = 0;
			return;
		}
		if (types[i]) {
			*p = (char)len;
			memcpy(p + 1, (const char *)args[i], len);
		} else {
			memcpy(p, &args[i], size);
		}
		p += size;
		free -= size;
	}
	h.size = (uint32_t)(p - uk_trace_buffer_writep - sizeof(h));
	h.time = clock_ns += 1000;
	h.cookie = cookie;
	h.magic = TRHD;
	memcpy(uk_trace_buffer_writep, &h, sizeof(h));
	uk_trace_buffer_free -= p - uk_trace_buffer_writep;
	uk_trace_buffer_writep = p;
}

#define EMIT(var, ...) do { long a_[] = { __VA_ARGS__ }; \
	emit(&var, var##_info.n, var##_info.sizes, var##_info.types, a_); } while (0)

int main(int argc, char **argv)
{
	static const char words[] = "abcdefghij";
	long i, n = argc > 2 ? atol(argv[2]) : 0;

	if (argc > 1 && !strcmp(argv[1], "fill")) {
		for (i = 0; uk_trace_buffer_free; i++)
			EMIT(tp_work, (int)(i - 3), (long)(i * 1000 + 1));
	} else {
		for (i = 0; i < n; i++) {
			EMIT(tp_work, (int)(i - 3), i == 4 ? (long)TRHD : (long)(i * 1000 + 1));
			if (i % 3 == 0)
				EMIT(tp_small, (char)('a' + i % 26), (short)-i);
			if (i % 5 == 0)
				EMIT(tp_str, (long)(words + i % 10), -i);
			if (i % 7 == 0)
				EMIT(tp_tick, 0);
		}
	}
	printf("ready\n");
	fflush(stdout);
	while (getchar() != EOF)
		;
	return 0;
}
