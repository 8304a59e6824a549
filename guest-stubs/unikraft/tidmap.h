/* Small thread ids for Unikraft threads.
 *
 * Unikraft 0.17 threads have no id, only their `struct uk_thread *`, and the wire's
 * `tid` field is 16 bits (tracers/FORMAT.md 2.1), so low pointer bits would collide.
 * This map gives each thread an id 1..65535 at creation (the uksched inittab hook) and
 * finds it again at every context switch.  Portable C, no Unikraft headers: the host
 * tests compile it (tests/test_unikraft_stub.py).
 *
 * Readers (the switch hook, any CPU) take no lock; writers (thread creation and exit)
 * hold a spinlock.  An exited thread's entry stays findable (its last switch away comes
 * after the termination hook) until its slot is needed again. */
#ifndef UNDEBUG_TIDMAP_H
#define UNDEBUG_TIDMAP_H

#include <stdint.h>

#ifndef UNDEBUG_TIDMAP_SLOTS
#define UNDEBUG_TIDMAP_SLOTS 4096u         /* a power of two: live threads at most */
#endif

/* A new id for `key` (a thread that was just created; an address seen before gets a
 * fresh id).  0 when every slot holds a live thread. */
uint16_t undebug_tidmap_add(const void *key);
/* The id of `key`, 0 if unknown.  Lock-free. */
uint16_t undebug_tidmap_get(const void *key);
/* `key` exited: its id stays valid until the slot is reused. */
void undebug_tidmap_exit(const void *key);
/* Calls fn(key, id, arg) for every live thread (under the lock). */
void undebug_tidmap_foreach(void (*fn)(const void *key, uint16_t id, void *arg), void *arg);

#endif
