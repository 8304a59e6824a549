/* Small thread ids for Unikraft threads: see tidmap.h.
 *
 * Open addressing with linear probing.  A slot is EMPTY, LIVE or DEAD (exited: still
 * found by lookups, reusable by inserts, so it also serves as the tombstone).  Ids come
 * from a counter that skips ids still held (a bitmap), so a long-lived thread keeps a
 * unique id after the counter wraps. */
#include "tidmap.h"

enum { EMPTY = 0, LIVE = 1, DEAD = 2 };

struct slot {
	const void *key;
	uint16_t id;
	uint8_t state;
};

_Static_assert((UNDEBUG_TIDMAP_SLOTS & (UNDEBUG_TIDMAP_SLOTS - 1)) == 0,
	       "UNDEBUG_TIDMAP_SLOTS: a power of two");
_Static_assert(UNDEBUG_TIDMAP_SLOTS < 65536u, "UNDEBUG_TIDMAP_SLOTS: below 65536");

static struct slot slots[UNDEBUG_TIDMAP_SLOTS];
static uint64_t held[65536 / 64];           /* ids in a LIVE or DEAD slot */
static uint16_t next_id = 1;
static volatile uint32_t lock;

static void take(void)
{
	while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&lock, __ATOMIC_RELAXED))
			__asm__ volatile("" ::: "memory");
}

static void give(void)
{
	__atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
}

static unsigned hash(const void *key)
{
	uint64_t k = (uint64_t)(uintptr_t)key >> 4;
	return (unsigned)((k * 0x9E3779B97F4A7C15ull) >> 40) & (UNDEBUG_TIDMAP_SLOTS - 1);
}

static void hold(uint16_t id, int on)
{
	uint64_t bit = 1ull << (id & 63);
	if (on)
		held[id >> 6] |= bit;
	else
		held[id >> 6] &= ~bit;
}

static uint16_t new_id(void)
{
	for (;;) {                  /* fewer slots than ids: one is always free */
		uint16_t id = next_id++;
		if (!next_id)
			next_id = 1;
		if (id && !(held[id >> 6] & (1ull << (id & 63))))
			return id;
	}
}

uint16_t undebug_tidmap_add(const void *key)
{
	if (!key)
		return 0;
	take();
	unsigned h = hash(key), reuse = UNDEBUG_TIDMAP_SLOTS;
	struct slot *s = 0;
	for (unsigned i = 0; i < UNDEBUG_TIDMAP_SLOTS; i++) {
		struct slot *c = &slots[(h + i) & (UNDEBUG_TIDMAP_SLOTS - 1)];
		uint8_t st = __atomic_load_n(&c->state, __ATOMIC_RELAXED);
		if (st != EMPTY && c->key == key) {
			s = c;              /* the address of a thread seen before */
			break;
		}
		if (st != LIVE && reuse == UNDEBUG_TIDMAP_SLOTS)
			reuse = (h + i) & (UNDEBUG_TIDMAP_SLOTS - 1);
		if (st == EMPTY)
			break;
	}
	if (!s && reuse < UNDEBUG_TIDMAP_SLOTS)
		s = &slots[reuse];
	uint16_t id = 0;
	if (s) {
		if (s->state != EMPTY)
			hold(s->id, 0);
		id = new_id();
		hold(id, 1);
		/* a reader matching the key must see the new id: key last */
		__atomic_store_n(&s->key, (const void *)0, __ATOMIC_RELEASE);
		__atomic_store_n(&s->id, id, __ATOMIC_RELEASE);
		__atomic_store_n(&s->state, (uint8_t)LIVE, __ATOMIC_RELEASE);
		__atomic_store_n(&s->key, key, __ATOMIC_RELEASE);
	}
	give();
	return id;
}

uint16_t undebug_tidmap_get(const void *key)
{
	if (!key)
		return 0;
	unsigned h = hash(key);
	for (unsigned i = 0; i < UNDEBUG_TIDMAP_SLOTS; i++) {
		struct slot *c = &slots[(h + i) & (UNDEBUG_TIDMAP_SLOTS - 1)];
		if (__atomic_load_n(&c->key, __ATOMIC_ACQUIRE) == key)
			return __atomic_load_n(&c->id, __ATOMIC_ACQUIRE);
		if (__atomic_load_n(&c->state, __ATOMIC_ACQUIRE) == EMPTY)
			return 0;
	}
	return 0;
}

void undebug_tidmap_exit(const void *key)
{
	if (!key)
		return;
	take();
	unsigned h = hash(key);
	for (unsigned i = 0; i < UNDEBUG_TIDMAP_SLOTS; i++) {
		struct slot *c = &slots[(h + i) & (UNDEBUG_TIDMAP_SLOTS - 1)];
		if (c->state == EMPTY)
			break;
		if (c->key == key && c->state == LIVE) {
			__atomic_store_n(&c->state, (uint8_t)DEAD, __ATOMIC_RELEASE);
			break;
		}
	}
	give();
}

void undebug_tidmap_foreach(void (*fn)(const void *key, uint16_t id, void *arg), void *arg)
{
	take();
	for (unsigned i = 0; i < UNDEBUG_TIDMAP_SLOTS; i++)
		if (slots[i].state == LIVE)
			fn(slots[i].key, slots[i].id, arg);
	give();
}
