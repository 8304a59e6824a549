/* Two tracepoints and the symbols guest-stubs/unikraft/extra.ld provides, linked by
 * tests/test_unikraft_stub.py with a mirror of Unikraft's linker script. */
#include <undebug/trace.h>

extern const struct undebug_tp_meta __start_undebug_tracepoints[];
extern const struct undebug_tp_meta __stop_undebug_tracepoints[];
extern const unsigned char undebug_build_id_note[], undebug_build_id_note_end[];

int undebug_trace_active = 1;
const void *volatile seen[4];
void undebug__emit1(const struct undebug_tp_meta *tp, uint64_t a) { seen[0] = tp; (void)a; }
void undebug__emit2(const struct undebug_tp_meta *tp, uint64_t a, uint64_t b)
{
	seen[1] = tp;
	(void)a;
	(void)b;
}

void _start(void)
{
	UNDEBUG_TRACEPOINT(first_tp, "a=%lu", 1ul);
	UNDEBUG_TRACEPOINT(second_tp, "a=%lu b=%lx", 2ul, 3ul);
	seen[2] = __start_undebug_tracepoints;
	seen[3] = undebug_build_id_note;
	for (;;)
		;
}
