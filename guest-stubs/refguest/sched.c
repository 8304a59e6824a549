/* Threads and the cooperative scheduler.
 *
 * Every thread is on `thread_list` (append order, never removed; EXITED
 * threads stay).  Runnable threads wait on one global FIFO run queue, shared
 * by all CPUs and protected by `sched_lock`.  Sleepers are on a 256-slot
 * timer wheel keyed by wake-up uptime in ms; the 1 kHz LAPIC timer tick on
 * every CPU moves due sleepers to the run queue.  There is no preemption:
 * threads leave the CPU only in yield(), sleep_ms(), block() or
 * thread_exit().  A CPU with nothing to run switches to its idle thread,
 * which waits with sti;hlt.
 *
 * The lock is handed over across switch_context(): the outgoing thread holds
 * it (interrupts off) and the incoming thread releases it, either after its
 * own switch_context() call returns or in thread_entry() for a new thread. */
#include "kernel.h"

struct percpu percpu[MAX_CPUS];
struct thread *thread_list;
struct thread *thread_list_tail;
unsigned thread_count;
spinlock_t sched_lock;

static spinlock_t list_lock;
static uint64_t next_thread_id = 1;
static struct thread *runq_head, *runq_tail;
#define WHEEL_SLOTS 256
static struct thread *wheel[WHEEL_SLOTS];
static uint64_t wheel_ms;   /* wheel processed up to this uptime ms */

static void runq_push(struct thread *t)
{
	t->q_next = NULL;
	if (runq_tail)
		runq_tail->q_next = t;
	else
		runq_head = t;
	runq_tail = t;
}

static struct thread *runq_pop(void)
{
	struct thread *t = runq_head;
	if (t) {
		runq_head = t->q_next;
		if (!runq_head)
			runq_tail = NULL;
		t->q_next = NULL;
	}
	return t;
}

static void list_append(struct thread *t)
{
	uint64_t f = irq_save();
	spin_lock(&list_lock);
	t->id = next_thread_id++;
	t->next = NULL;
	if (thread_list_tail)
		thread_list_tail->next = t;
	else
		thread_list = t;
	thread_list_tail = t;
	thread_count++;
	spin_unlock(&list_lock);
	irq_restore(f);
	undebug_thread_name(t->id, t->name);
}

void thread_print(struct thread *t)
{
	kprintf("refguest: thread id=%lu name=%s cpu=%d\n", t->id, t->name, t->cpu);
}

/* The boot context becomes thread `main` (stack: boot_stack in boot.S). */
void sched_init_boot_thread(uint64_t lo, uint64_t hi)
{
	static struct thread main_thread;
	struct thread *t = &main_thread;
	strlcpy0(t->name, "main", sizeof t->name);
	t->state = THREAD_RUNNING;
	t->stack_lo = lo;
	t->stack_hi = hi;
	t->guard_page = lo - PAGE_SIZE;
	t->cpu = 0;
	list_append(t);
	percpu[0].current = t;
}

/* Stack: 1 guard page (unmapped) + THREAD_STACK_SIZE, from the page allocator. */
static struct thread *thread_alloc(const char *name, void (*fn)(void *), void *arg)
{
	struct thread *t = kmalloc(sizeof *t);
	if (!t)
		panic("out of memory creating thread %s", name);
	memset(t, 0, sizeof *t);
	size_t pages = THREAD_STACK_SIZE / PAGE_SIZE + 1;
	char *base = page_alloc(pages);
	if (!base)
		panic("out of memory for the stack of thread %s", name);
	unmap_page((uint64_t)base);
	t->guard_page = (uint64_t)base;
	t->stack_lo = (uint64_t)base + PAGE_SIZE;
	t->stack_hi = (uint64_t)base + pages * PAGE_SIZE;
	memcpy(t->name, name, strlen(name) < sizeof t->name ? strlen(name) : sizeof t->name - 1);
	t->entry = fn;
	t->arg = arg;
	/* First switch lands in thread_trampoline with rsp = stack_hi - 8,
	 * where a zero "return address" terminates unwinding. */
	((uint64_t *)t->stack_hi)[-1] = 0;
	t->ctx.rsp = t->stack_hi - 8;
	t->ctx.rbp = 0;
	t->ctx.rip = (uint64_t)thread_trampoline;
	t->ctx.r12 = (uint64_t)fn;
	t->ctx.r13 = (uint64_t)arg;
	t->state = THREAD_READY;
	struct percpu *pc = this_cpu();
	t->cpu = pc ? (int)pc->index : 0;
	return t;
}

struct thread *thread_create(const char *name, void (*fn)(void *), void *arg, int print)
{
	struct thread *t = thread_alloc(name, fn, arg);
	list_append(t);
	if (print)
		thread_print(t);
	uint64_t f = irq_save();
	spin_lock(&sched_lock);
	runq_push(t);
	spin_unlock(&sched_lock);
	irq_restore(f);
	return t;
}

static void idle_entry(void *arg)
{
	(void)arg;
	idle_loop();
}

/* Idle threads are never on the run queue: schedule() picks percpu.idle
 * when the queue is empty. */
struct thread *idle_create(unsigned cpu)
{
	char name[32];
	ksnprintf(name, sizeof name, "idle%u", cpu);
	struct thread *t = thread_alloc(name, idle_entry, NULL);
	t->cpu = (int)cpu;
	list_append(t);
	percpu[cpu].idle = t;
	thread_print(t);
	return t;
}

/* Called with sched_lock held and interrupts off; the caller has already
 * set current->state (and queued it if it stays runnable). */
static void schedule(void)
{
	struct percpu *pc = this_cpu();
	struct thread *prev = pc->current;
	struct thread *next = runq_pop();
	if (!next)
		next = prev->state == THREAD_RUNNING || prev == pc->idle ? prev : pc->idle;
	if (next == prev && prev != pc->idle) {
		/* nothing else to run and prev is runnable */
	}
	if (next == prev) {
		prev->state = THREAD_RUNNING;
		return;
	}
	if (prev == pc->idle && prev->state == THREAD_RUNNING)
		prev->state = THREAD_READY;
	next->state = THREAD_RUNNING;
	next->cpu = (int)pc->index;
	next->switches++;
	pc->current = next;
	undebug_thread_switch(prev->id, next->id);
	switch_context(&prev->ctx, &next->ctx);
}

void thread_entry(void (*fn)(void *), void *arg)
{
	spin_unlock(&sched_lock);
	__asm__ volatile("sti");
	fn(arg);
	thread_exit();
}

void yield(void)
{
	uint64_t f = irq_save();
	spin_lock(&sched_lock);
	struct thread *cur = this_cpu()->current;
	cur->state = THREAD_READY;
	runq_push(cur);
	schedule();
	spin_unlock(&sched_lock);
	irq_restore(f);
}

void sleep_ms(uint64_t ms)
{
	if (!ms) {
		yield();
		return;
	}
	uint64_t f = irq_save();
	spin_lock(&sched_lock);
	struct thread *cur = this_cpu()->current;
	uint64_t now = rdtsc();
	cur->wake_tsc = now + ms * tsc_khz;
	cur->wake_ms = (cur->wake_tsc - boot_tsc + tsc_khz - 1) / tsc_khz;
	if (cur->wake_ms <= wheel_ms)
		cur->wake_ms = wheel_ms + 1;
	cur->state = THREAD_SLEEPING;
	cur->wait_reason = "sleep";
	struct thread **slot = &wheel[cur->wake_ms % WHEEL_SLOTS];
	cur->q_next = *slot;
	*slot = cur;
	schedule();
	cur->wait_reason = NULL;
	spin_unlock(&sched_lock);
	irq_restore(f);
}

/* Blocks forever unless something makes the thread READY again (nothing in
 * refguest does: `blocked` stays BLOCKED). */
void block(const char *reason)
{
	uint64_t f = irq_save();
	spin_lock(&sched_lock);
	struct thread *cur = this_cpu()->current;
	cur->state = THREAD_BLOCKED;
	cur->wait_reason = reason;
	schedule();
	cur->wait_reason = NULL;
	spin_unlock(&sched_lock);
	irq_restore(f);
}

__attribute__((noreturn)) void thread_exit(void)
{
	__asm__ volatile("cli");
	spin_lock(&sched_lock);
	this_cpu()->current->state = THREAD_EXITED;
	schedule();
	panic("exited thread resumed");
}

/* Timer tick (interrupt context): move due sleepers to the run queue. */
void sched_timer_tick(void)
{
	uint64_t now = uptime_ms();
	if (now <= __atomic_load_n(&wheel_ms, __ATOMIC_RELAXED))
		return;
	if (!spin_trylock(&sched_lock))
		return;                        /* another CPU does it, or next tick */
	uint64_t from = wheel_ms + 1;
	if (now - wheel_ms > WHEEL_SLOTS)
		from = now - WHEEL_SLOTS + 1;
	for (uint64_t ms = from; ms <= now; ms++) {
		struct thread **pp = &wheel[ms % WHEEL_SLOTS];
		while (*pp) {
			struct thread *t = *pp;
			if (t->wake_ms <= now) {
				*pp = t->q_next;
				t->state = THREAD_READY;
				runq_push(t);
			} else {
				pp = &t->q_next;
			}
		}
	}
	wheel_ms = now;
	spin_unlock(&sched_lock);
}

__attribute__((noreturn)) void idle_loop(void)
{
	for (;;) {
		__asm__ volatile("cli");
		spin_lock(&sched_lock);
		if (runq_head) {
			this_cpu()->current->state = THREAD_READY;
			schedule();
		}
		spin_unlock(&sched_lock);
		__asm__ volatile("sti; hlt" ::: "memory");
	}
}

/* Thread whose guard page contains addr (bounded walk: the list may have
 * been made cyclic by corrupt=cyclic-threads). */
struct thread *find_thread_by_guard(uint64_t addr)
{
	struct thread *t = thread_list;
	for (unsigned i = 0; t && i < thread_count + 1; i++, t = t->next) {
		if (t->guard_page && addr >= t->guard_page && addr < t->guard_page + PAGE_SIZE)
			return t;
	}
	return NULL;
}
