/* undebug guest stub: the parser of the host's control messages (hostmsg.h).
 *
 * The bytes come from the host, which the guest must not trust to be well formed: a
 * message is taken only when all 16 bytes are as FORMAT.md 7.1 says (magic, version,
 * a known op, zero reserved fields, a value in range); anything else is counted in
 * `rejected` and the parser moves one byte on to look for the next magic, so garbage
 * costs a bounded amount of work per byte and never stops later messages. */
#include "hostmsg.h"

static uint32_t le32(const uint8_t *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* The message's effect on live_ms, or -1 if it is not a valid message. */
static int64_t decode(const uint8_t *m)
{
	uint32_t value = le32(m + 8);
	if (le32(m) != UNDEBUG_HOSTMSG_MAGIC || m[4] != UNDEBUG_HOSTMSG_VERSION ||
	    m[6] || m[7] || le32(m + 12))
		return -1;
	if (m[5] == UNDEBUG_HOSTMSG_LIVE && value >= 1 && value <= UNDEBUG_HOSTMSG_MAX_MS)
		return value;
	if (m[5] == UNDEBUG_HOSTMSG_REST && value == 0)
		return 0;
	return -1;
}

int undebug__hostmsg_feed(struct undebug_hostmsg_parser *p, const uint8_t *data, uint32_t len)
{
	int changed = 0;
	if (p->n > UNDEBUG_HOSTMSG_SIZE)       /* never: the parser's memory is the guest's own */
		p->n = 0;
	for (uint32_t i = 0; i < len; i++) {
		p->buf[p->n++] = data[i];
		while (p->n == UNDEBUG_HOSTMSG_SIZE) {
			int64_t live = decode(p->buf);
			if (live >= 0) {
				changed |= p->live_ms != (uint32_t)live;
				p->live_ms = (uint32_t)live;
				p->applied++;
				p->n = 0;
				break;
			}
			p->rejected++;
			/* slide to the next byte that could start the magic */
			uint32_t k = 1;
			while (k < p->n && p->buf[k] != (UNDEBUG_HOSTMSG_MAGIC & 0xff))
				k++;
			for (uint32_t j = k; j < p->n; j++)
				p->buf[j - k] = p->buf[j];
			p->n -= k;
		}
	}
	return changed;
}
