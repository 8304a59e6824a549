/* LTTng-UST tracepoint provider for the trace_cost benchmark: one event with
 * the same payload as an undebug 2-argument tracepoint (2 x u64). */
#undef TRACEPOINT_PROVIDER
#define TRACEPOINT_PROVIDER ud_bench

#undef TRACEPOINT_INCLUDE
#define TRACEPOINT_INCLUDE "./lttng_tp.h"

#if !defined(UD_BENCH_LTTNG_TP_H) || defined(TRACEPOINT_HEADER_MULTI_READ)
#define UD_BENCH_LTTNG_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

TRACEPOINT_EVENT(
	ud_bench,
	ev,
	TP_ARGS(uint64_t, i, uint64_t, t0),
	TP_FIELDS(
		ctf_integer(uint64_t, i, i)
		ctf_integer(uint64_t, t0, t0)
	)
)

#endif

#include <lttng/tracepoint-event.h>
