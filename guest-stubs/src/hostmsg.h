/* undebug guest stub: the host's control messages on the trace port (host -> guest),
 * tracers/FORMAT.md section 7.1.  Kept apart from the virtio driver so the parser can
 * be compiled and fed hostile bytes on its own (tests/test_hostmsg.py). */
#ifndef UNDEBUG_HOSTMSG_H
#define UNDEBUG_HOSTMSG_H

#include <stdint.h>

#define UNDEBUG_HOSTMSG_MAGIC 0x4c544355u    /* "UCTL" */
#define UNDEBUG_HOSTMSG_VERSION 1u
#define UNDEBUG_HOSTMSG_SIZE 16u
#define UNDEBUG_HOSTMSG_LIVE 1u              /* value: flush interval in ms while watched */
#define UNDEBUG_HOSTMSG_REST 2u              /* value 0: back to the rest interval */
#define UNDEBUG_HOSTMSG_MAX_MS 1000u         /* a LIVE interval above this is refused */

/* A message may arrive split over receive buffers, or several in one: the parser
 * keeps the bytes of one message and slides past anything that is not one. */
struct undebug_hostmsg_parser {
	uint8_t buf[UNDEBUG_HOSTMSG_SIZE];
	uint32_t n;                           /* bytes held in buf */
	uint32_t applied, rejected;           /* messages taken; messages (or bytes) refused */
	uint32_t live_ms;                     /* 0: at rest; else the host's LIVE interval */
};

/* Feed len bytes from the host; returns 1 when live_ms changed. */
int undebug__hostmsg_feed(struct undebug_hostmsg_parser *p, const uint8_t *data, uint32_t len);

#endif
