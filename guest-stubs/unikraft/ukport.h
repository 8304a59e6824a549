/* The portable arithmetic of the Unikraft port (uk.c): no Unikraft headers, so the
 * host tests compile it (tests/test_unikraft_stub.py). */
#ifndef UNDEBUG_UKPORT_H
#define UNDEBUG_UKPORT_H

#include <stdint.h>
#include <stddef.h>

#define UNDEBUG_UK_CAL_NS 2000000ull     /* calibration: 2 ms of Unikraft's clock */
#define UNDEBUG_NS_PER_S 1000000000ull
#define UNDEBUG_UK_SAMPLE_MAGIC 0x64685254u   /* Unikraft's UK_TP_HEADER_MAGIC, "TRhd" */

/* TSC Hz from `dtsc` cycles in `dns` ns (0 if dns is 0); exact for dtsc < 2^64 / 1e9
 * cycles (~18 s at 1 GHz), more than a calibration takes. */
static inline uint64_t undebug_uk_tsc_hz(uint64_t dtsc, uint64_t dns)
{
	if (!dns)
		return 0;
	if (dtsc <= UINT64_MAX / UNDEBUG_NS_PER_S)
		return dtsc * UNDEBUG_NS_PER_S / dns;
	return dtsc / dns * UNDEBUG_NS_PER_S;
}

/* The TSC at Unikraft's clock 0, from a (tsc, ns) pair read together. */
static inline uint64_t undebug_uk_boot_tsc(uint64_t tsc, uint64_t ns, uint64_t hz)
{
	uint64_t s = ns / UNDEBUG_NS_PER_S, rest = ns % UNDEBUG_NS_PER_S;
	uint64_t since = s * hz + rest * (hz / 1000u) / 1000000u +
			 rest * (hz % 1000u) / UNDEBUG_NS_PER_S;
	return since > tsc ? 0 : tsc - since;
}

/* The descriptor of a GNU build-id note (namesz, descsz, type 3, "GNU\0", desc) in
 * [note, note + len): its length (<= 32), *desc set; 0 if it is not one. */
static inline unsigned undebug_uk_build_id(const uint8_t *note, size_t len,
					   const uint8_t **desc)
{
	if (!note || len < 16)
		return 0;
	uint32_t namesz, descsz, type;
	__builtin_memcpy(&namesz, note, 4);
	__builtin_memcpy(&descsz, note + 4, 4);
	__builtin_memcpy(&type, note + 8, 4);
	size_t off = 12 + (((size_t)namesz + 3) & ~(size_t)3);
	if (type != 3 || namesz != 4 || __builtin_memcmp(note + 12, "GNU", 4) ||
	    descsz == 0 || descsz > 32 || off + descsz > len)
		return 0;
	*desc = note + off;
	return descsz;
}

#endif
