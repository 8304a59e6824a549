/*
 * A host program whose memory looks like a Unikraft 0.17 guest's, for tests/test_unikraft.py.
 *
 * The declarations below MIRROR Unikraft 0.17's struct uk_thread, struct uk_sched,
 * struct ukarch_ctx and struct __regs (member names and order as in
 * lib/uksched/include/uk/thread.h, sched.h, include/uk/arch/ctx.h and
 * arch/x86/x86_64/include/uk/asm/lcpu.h), so undebug's DWARF-by-name lookups run on
 * them. This is not Unikraft code: it is a mirror written for the test.
 *
 * The program builds two schedulers with named threads on static stacks, switches between
 * them the way Unikraft's context switch does (callee-saved registers pushed, ip = a
 * resume label), lets one thread take a page fault through a trap entry that pushes a
 * struct __regs (a fake one: user space cannot take a real #PF into its own handler),
 * and in the handler writes its memory and "vCPU" registers to the file argv[1]:
 *   "UKMIRROR", then u64 rip, rsp, rbp (the handler's), u64 the trap frame's rip,
 *   u64 the rbp each thread had when it switched out (SAVED_RBP slots),
 *   then regions: u64 address, u64 size, bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADF_RUNNABLE 0x008
#define THREADF_EXITED 0x010
#define STACK_SIZE (16 * 4096)
#define NTHREADS 7

#define TAILQ_ENTRY(type) struct { type *tqe_next; type **tqe_prev; }
#define TAILQ_HEAD(name, type) struct name { type *tqh_first; type **tqh_last; }

struct ukarch_ctx {
	uintptr_t ip;
	uintptr_t sp;
};

struct uk_sched;

struct uk_thread {
	struct ukarch_ctx ctx;
	void *ectx;
	uintptr_t tlsp;
	uintptr_t uktlsp;
	uintptr_t auxsp;
	TAILQ_ENTRY(struct uk_thread) queue;
	uint32_t flags;
	int64_t wakeup_time;
	struct uk_sched *sched;
	struct {
		void *t_a;
		void *stack;
		void *stack_a;
		void *uktls;
		void *uktls_a;
		void *auxstack;
		void *auxstack_a;
	} _mem;
	void (*_gc_fn)(struct uk_thread *, void *);
	void *_gc_argp;
	void (*dtor)(struct uk_thread *);
	void *priv;
	uint64_t exec_time;
	const char *name;
	TAILQ_ENTRY(struct uk_thread) thread_list;
};

TAILQ_HEAD(uk_thread_list, struct uk_thread);

struct uk_sched {
	void (*yield)(struct uk_sched *);
	void *thread_add;
	void *thread_remove;
	void *thread_blocked;
	void *thread_woken;
	void *thread_woken_isr;
	void *idle_thread;
	void *sched_start;
	_Bool is_started;
	struct uk_thread_list thread_list;
	struct uk_thread_list exited_threads;
	void *a;
	void *a_stack;
	void *a_auxstack;
	void *a_uktls;
	struct uk_sched *next;
};

struct __regs {
	unsigned long pad, r15, r14, r13, r12, rbp, rbx;
	unsigned long r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax;
	unsigned long rip, cs, eflags, rsp, ss;
};

/* The guest's globals, by the names undebug looks for. */
struct uk_sched *uk_sched_head;
struct uk_thread *__uk_sched_thread_current[4];
uint64_t time_base = 5000000000;  /* the monotonic clock's last reading: 5 s */

static struct uk_sched scheds[2];
static struct uk_thread threads[NTHREADS];
static char stacks[NTHREADS][STACK_SIZE] __attribute__((aligned(4096)));
/* Names in writable memory: the test's image holds .data and .bss, not .rodata. */
static char names[NTHREADS][16] = {"init", "worker-0", "blocker", "fresh", "gone",
				   "other-sched", "worker-1"};
enum { INIT, WORKER0, BLOCKER, FRESH, GONE, OTHER, WORKER1 };
uint64_t saved_rbp[NTHREADS];

void ukarch_ctx_switch(struct ukarch_ctx *prev, struct ukarch_ctx *next);
void ctx_call1(void);
void raise_page_fault(void);

/* Behaves as arch/x86/x86_64/ctx.S does: push rbp, rbx, r12-r15, save sp, ip = .Lresume;
 * .Lresume pops them back and returns. No CFI, like the original. */
__asm__(".text\n"
	".globl ukarch_ctx_switch\n"
	"ukarch_ctx_switch:\n"
	"	pushq %rbp\n	pushq %rbx\n	pushq %r12\n"
	"	pushq %r13\n	pushq %r14\n	pushq %r15\n"
	"	movq %rsp, 8(%rdi)\n"
	"	movq 8(%rsi), %rsp\n"
	"	leaq .Lresume(%rip), %rbx\n"
	"	movq %rbx, 0(%rdi)\n"
	"	pushq 0(%rsi)\n"
	"	ret\n"
	".Lresume:\n"
	"	popq %r15\n	popq %r14\n	popq %r13\n"
	"	popq %r12\n	popq %rbx\n	popq %rbp\n"
	"	ret\n"
	/* A new thread's first ip: its argument and entry lie on its stack. */
	".globl ctx_call1\n"
	"ctx_call1:\n"
	"	xorq %rbp, %rbp\n	popq %rdi\n	ret\n"
	/* What the CPU pushes for a #PF (ss, rsp, rflags, cs, rip, error code 2: a write
	 * to a page not present), with rip at the call's return address in the caller. */
	".globl raise_page_fault\n"
	"raise_page_fault:\n"
	"	movq (%rsp), %rax\n"
	"	leaq 8(%rsp), %rcx\n"
	"	pushq $0x2b\n	pushq %rcx\n	pushfq\n	pushq $0x33\n"
	"	pushq %rax\n	pushq $2\n"
	"	jmp asm_trap_page_fault\n"
	/* A trap entry like plat/kvm/x86/cpu_vectors_x86_64.S's: the registers make a
	 * struct __regs at rsp (after 8 bytes of pad), then do_page_fault(regs, error).
	 * .type without .size, and no CFI. */
	".globl asm_trap_page_fault\n"
	".type asm_trap_page_fault, @function\n"
	"asm_trap_page_fault:\n"
	"	cld\n"
	"	pushq %rdi\n	pushq %rsi\n	pushq %rdx\n	pushq %rcx\n	pushq %rax\n"
	"	pushq %r8\n	pushq %r9\n	pushq %r10\n	pushq %r11\n	pushq %rbx\n"
	"	pushq %rbp\n	pushq %r12\n	pushq %r13\n	pushq %r14\n	pushq %r15\n"
	"	subq $8, %rsp\n"
	"	movq %rsp, %rdi\n"
	"	movq 128(%rsp), %rsi\n"
	"	call do_page_fault\n"
	"	ud2\n");

extern char __executable_start[], etext[], __data_start[], _end[];

static void region(FILE *out, const void *start, const void *end)
{
	uint64_t head[2] = {(uintptr_t)start, (uintptr_t)end - (uintptr_t)start};
	fwrite(head, 8, 2, out);
	fwrite(start, 1, head[1], out);
}

static const char *image_path;

__attribute__((noinline, noreturn)) void do_page_fault(struct __regs *regs,
						       unsigned long error_code)
{
	uint64_t cpu[3];

	__asm__ volatile("leaq (%%rip), %0\n\tmovq %%rsp, %1\n\tmovq %%rbp, %2"
			 : "=r"(cpu[0]), "=r"(cpu[1]), "=r"(cpu[2]));
	FILE *out = fopen(image_path, "wb");
	if (!out || error_code != 2)
		exit(2);
	fwrite("UKMIRROR", 1, 8, out);
	fwrite(cpu, 8, 3, out);
	fwrite(&regs->rip, 8, 1, out);
	fwrite(saved_rbp, 8, NTHREADS, out);
	region(out, __executable_start, etext);
	region(out, __data_start, _end);
	fclose(out);
	exit(0);
}

static struct uk_thread *current(void)
{
	return __uk_sched_thread_current[0];
}

__attribute__((noinline)) void switch_to(struct uk_thread *next)
{
	struct uk_thread *prev = current();

	saved_rbp[prev - threads] = (uintptr_t)__builtin_frame_address(0);
	__uk_sched_thread_current[0] = next;
	ukarch_ctx_switch(&prev->ctx, &next->ctx);
}

__attribute__((noinline)) void sleep_then(int64_t ns, struct uk_thread *next)
{
	current()->wakeup_time = time_base + ns;
	current()->flags &= ~THREADF_RUNNABLE;
	switch_to(next);
}

__attribute__((noinline)) void block_then(struct uk_thread *next)
{
	current()->wakeup_time = 0;
	current()->flags &= ~THREADF_RUNNABLE;
	switch_to(next);
}

static void tailq_insert(struct uk_thread_list *head, struct uk_thread *t)
{
	t->thread_list.tqe_next = NULL;
	t->thread_list.tqe_prev = head->tqh_last;
	*head->tqh_last = t;
	head->tqh_last = &t->thread_list.tqe_next;
}

static void tailq_remove(struct uk_thread_list *head, struct uk_thread *t)
{
	if (t->thread_list.tqe_next)
		t->thread_list.tqe_next->thread_list.tqe_prev = t->thread_list.tqe_prev;
	else
		head->tqh_last = t->thread_list.tqe_prev;
	*t->thread_list.tqe_prev = t->thread_list.tqe_next;
}

volatile unsigned long work_total;

__attribute__((noinline)) void do_work(int id)
{
	for (int i = 0; i < 100; i++)
		work_total += (unsigned long)(i ^ id);
	if (id == WORKER1)
		raise_page_fault(), work_total++; /* FAULT: the saved rip is on this line */
}

__attribute__((noreturn)) void worker_main(void *arg)
{
	int id = (int)(long)arg;

	for (;;) {
		do_work(id);
		switch (id) {
		case WORKER0:
			sleep_then(12300000, &threads[BLOCKER]); /* +12.3 ms */
			break;
		case BLOCKER:
			block_then(&threads[GONE]);
			break;
		case GONE: /* exits as uk_sched_thread_terminate does: onto exited_threads */
			tailq_remove(&scheds[0].thread_list, current());
			current()->flags |= THREADF_EXITED;
			tailq_insert(&scheds[0].exited_threads, current());
			switch_to(&threads[OTHER]);
			break;
		case OTHER:
			sleep_then(2000000000, &threads[WORKER1]);
			break;
		default:
			exit(3);
		}
	}
}

static void thread_init(int i, struct uk_sched *s, int has_stack)
{
	struct uk_thread *t = &threads[i];

	t->name = names[i];
	t->sched = s;
	t->flags = THREADF_RUNNABLE;
	if (has_stack) {  /* as ukarch_ctx_init_entry1: 0 (no caller), entry, argument */
		uintptr_t *sp = (uintptr_t *)(stacks[i] + STACK_SIZE);
		*--sp = 0;
		*--sp = (uintptr_t)worker_main;
		*--sp = (uintptr_t)i;
		t->_mem.stack = stacks[i];
		t->ctx.sp = (uintptr_t)sp;
		t->ctx.ip = (uintptr_t)ctx_call1;
	}
	tailq_insert(&s->thread_list, t);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	image_path = argv[1];
	for (int s = 0; s < 2; s++) {
		scheds[s].thread_list.tqh_last = &scheds[s].thread_list.tqh_first;
		scheds[s].exited_threads.tqh_last = &scheds[s].exited_threads.tqh_first;
	}
	scheds[0].next = &scheds[1];
	uk_sched_head = &scheds[0];
	thread_init(INIT, &scheds[0], 0);
	for (int i = WORKER0; i <= GONE; i++)
		thread_init(i, &scheds[0], 1);
	thread_init(OTHER, &scheds[1], 1);
	thread_init(WORKER1, &scheds[0], 1);
	__uk_sched_thread_current[0] = &threads[INIT];
	sleep_then(1000000000, &threads[WORKER0]);
	return 4; /* never: worker-1's fault ends the program */
}
