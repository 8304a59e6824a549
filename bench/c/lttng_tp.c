/* LTTng-UST probe for lttng_tp.h (statically linked into lttng_bench). */
#define TRACEPOINT_CREATE_PROBES
#define TRACEPOINT_DEFINE
#include "lttng_tp.h"
