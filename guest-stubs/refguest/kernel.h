/* refguest: reference unikernel for undebug.  Shared declarations.
 *
 * The host debugger reads the globals and struct members declared here by
 * their DWARF names: keep names stable (see README.md). */
#ifndef REFGUEST_KERNEL_H
#define REFGUEST_KERNEL_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdbool.h>
#include <undebug/trace.h>

#define MAX_CPUS          16
#define MAX_WORKERS       10000
#define PAGE_SIZE         4096UL
#define THREAD_STACK_SIZE (16 * 1024)   /* usable stack per thread */
#define BOOT_STACK_SIZE   (32 * 1024)   /* stack of the `main` (boot) thread */
#define IST_STACK_SIZE    (16 * 1024)   /* per CPU, per IST slot */
#define KERNEL_LOAD_ADDR  0x100000UL
#define AP_TRAMPOLINE     0x8000UL     /* real-mode AP entry (SIPI vector 0x08) */

/* Interrupt vectors. */
#define VEC_PIC_BASE   0x20   /* legacy 8259, remapped and masked */
#define VEC_TIMER      0x30   /* LAPIC timer, 1 kHz on every CPU */
#define VEC_IPI        0x31   /* reschedule/no-op IPI */
#define VEC_SPURIOUS   0xff

/* ---- threads --------------------------------------------------------- */
enum thread_state {
	THREAD_RUNNING,
	THREAD_READY,
	THREAD_SLEEPING,
	THREAD_BLOCKED,
	THREAD_EXITED,
};

/* Callee-saved state of a switched-out thread, written by switch_context()
 * (switch.S).  The values are those the thread will see when its call to
 * switch_context() returns: rip = the return address in the caller
 * (schedule()), rsp = the caller's rsp after that return (i.e. the address
 * just above the return address slot), rbp = the caller's frame pointer.  So
 * (ctx.rip, ctx.rsp, ctx.rbp) is a valid frame inside schedule() and a
 * frame-pointer unwind from ctx.rbp reaches the thread's real callers.
 * For a thread that has never run: rip = thread_trampoline, rbp = 0,
 * r12 = entry function, r13 = its argument. */
struct context {
	uint64_t rsp, rbp, rbx, r12, r13, r14, r15, rip;
};

/* switch.S depends on this layout */
_Static_assert(offsetof(struct context, rsp) == 0, "ctx.rsp");
_Static_assert(offsetof(struct context, rbp) == 8, "ctx.rbp");
_Static_assert(offsetof(struct context, rip) == 56, "ctx.rip");

struct thread {
	uint64_t id;
	char name[32];
	enum thread_state state;
	struct context ctx;          /* valid only when state != THREAD_RUNNING */
	uint64_t stack_lo, stack_hi; /* usable stack [stack_lo, stack_hi) */
	int cpu;                     /* CPU it runs on / last ran on */
	const char *wait_reason;     /* "sleep", "event", or NULL */
	uint64_t wake_tsc;           /* TSC value a sleeper wakes at */
	struct thread *next;         /* thread_list link (every thread, never removed) */
	/* scheduler-private */
	struct thread *q_next;       /* run queue / timer wheel link */
	uint64_t wake_ms;            /* uptime ms a sleeper wakes at */
	uint64_t guard_page;         /* unmapped page just below stack_lo (0: none) */
	uint64_t switches;           /* times switched in */
	void (*entry)(void *);
	void *arg;
};

struct percpu {
	struct percpu *self;         /* %gs:0 */
	struct thread *current;      /* thread running on this CPU */
	struct thread *idle;         /* this CPU's idle thread */
	uint32_t apic_id;
	uint32_t index;              /* = position in percpu[] */
	uint64_t ticks;              /* LAPIC timer ticks on this CPU */
	uint64_t online;
	uint64_t ist_top[3];         /* IST stacks: [0]=#DF [1]=#PF [2]=NMI */
};

extern struct percpu percpu[MAX_CPUS];
extern unsigned cpu_count;
extern struct thread *thread_list;
extern unsigned thread_count;

/* ---- memory ----------------------------------------------------------- */
struct heap_stats {
	uint64_t total_bytes, used_bytes, peak_bytes;
	uint64_t alloc_count, free_count, failed_count;
};
struct page_stats {
	uint64_t total_pages, free_pages;
};
extern struct heap_stats heap_stats;
extern struct page_stats page_stats;

/* ---- misc globals ----------------------------------------------------- */
extern volatile uint64_t planted_counter;
extern uint64_t requests_handled;
extern uint64_t tsc_khz;
extern uint64_t boot_tsc;
extern uint64_t mem_mb;
extern volatile int panicking;
extern volatile int halt_all;     /* 1: panic (hlt), 2: hang (spin) */

/* ---- PVH start info (Xen public ABI, arch-x86/hvm/start_info.h) ------- */
struct hvm_start_info {
	uint32_t magic;              /* 0x336ec578 */
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;       /* version >= 1 */
	uint32_t memmap_entries;
	uint32_t reserved;
};
struct hvm_memmap_table_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

/* ---- interrupt frame (isr.S) ------------------------------------------ */
struct irq_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* ---- spinlocks --------------------------------------------------------- */
typedef struct { volatile uint32_t locked; } spinlock_t;

static inline uint64_t irq_save(void)
{
	uint64_t f;
	__asm__ volatile("pushfq; popq %0; cli" : "=r"(f) : : "memory");
	return f;
}
static inline void irq_restore(uint64_t f)
{
	if (f & 0x200)
		__asm__ volatile("sti" : : : "memory");
}
static inline void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (l->locked)
			__asm__ volatile("pause");
}
static inline bool spin_trylock(spinlock_t *l)
{
	return !__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE);
}
static inline void spin_unlock(spinlock_t *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* ---- port I/O, MSRs, misc --------------------------------------------- */
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(p)); }
static inline void outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(p)); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}
static inline uint64_t rdmsr(uint32_t m)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(m));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t m, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(m), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static inline uint64_t read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline struct percpu *this_cpu(void)
{
	struct percpu *p;
	__asm__ volatile("movq %%gs:0, %0" : "=r"(p));
	return p;
}

/* ---- console.c --------------------------------------------------------- */
void serial_init(void);
int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int ksnprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void console_write(const char *s, size_t n);
#include "lwip-port/string.h"  /* memset ... strncmp: one set, lwIP's <string.h> too */
char *strlcpy0(char *d, const char *s, size_t n);

/* ---- mm.c --------------------------------------------------------------- */
void mm_init(const struct hvm_start_info *si);
void *page_alloc(size_t npages);
void page_free(void *p, size_t npages);
void unmap_page(uint64_t va);
void *kmalloc(size_t n);
void kfree(void *p);
extern uint64_t kernel_cr3;

/* ---- arch.c ------------------------------------------------------------- */
void gdt_init_cpu(unsigned cpu);
void idt_init(void);
void idt_load(void);
void pic_disable(void);
void tsc_calibrate(void);
void lapic_init_cpu(void);
void lapic_timer_calibrate(void);
void lapic_timer_start(void);
void lapic_eoi(void);
uint32_t lapic_id(void);
void send_nmi_all_but_self(void);
void send_ipi_all_but_self(uint8_t vec);
void acpi_init(uint64_t rsdp_paddr);
void smp_boot(void);
uint64_t uptime_ms(void);
void delay_us(uint64_t us);
void exit_qemu(uint32_t code);
__attribute__((noreturn)) void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void halt_forever(void);
void backtrace_from(uint64_t rbp, struct thread *t);
extern uint32_t cpu_apic_ids[MAX_CPUS];
extern unsigned cpus_found;

#define ASSERT(e) do { if (!(e)) panic("assertion failed: %s at %s:%d", #e, __FILE__, __LINE__); } while (0)

/* ---- sched.c ------------------------------------------------------------ */
void sched_init_boot_thread(uint64_t stack_lo, uint64_t stack_hi);
struct thread *thread_create(const char *name, void (*fn)(void *), void *arg, int print);
struct thread *idle_create(unsigned cpu);
void thread_print(struct thread *t);
void yield(void);
void sleep_ms(uint64_t ms);
void block(const char *reason);
__attribute__((noreturn)) void thread_exit(void);
__attribute__((noreturn)) void idle_loop(void);
void sched_timer_tick(void);
struct thread *find_thread_by_guard(uint64_t addr);
extern spinlock_t sched_lock;

/* ---- trace_glue.c (undebug tracing stub) -------------------------------- */
void trace_setup(void);               /* after the boot thread exists */
void trace_start_bench(void);         /* after ready: trace_bench / trace_flood */
extern int opt_trace;                 /* enum in trace_glue.c */
extern uint64_t opt_trace_bench, opt_trace_flood;
bool trace_parse_option(const char *key, const char *val);

/* ---- net.c (virtio-net + lwIP; main.c parses net= and corrupt=cyclic-pcbs) -- */
enum { NET_AUTO, NET_ON, NET_OFF };
extern int opt_net;                   /* net=auto|on|off; auto: on if a virtio-net device is found */
extern int opt_corrupt_cyclic_pcbs;
void net_start(void);                 /* after the workers: adds the `net` thread */

/* asm */
void switch_context(struct context *save, struct context *load);
void thread_trampoline(void);
extern char ap_trampoline_start[], ap_trampoline_end[];
extern char ap_tramp_cr3[], ap_tramp_stack[], ap_tramp_cpu[];
extern char boot_stack_bottom[], boot_stack_top[], boot_stack_guard[];
extern char __image_start[], __text_end[];   /* refguest.ld: the text segment */
extern void *isr_stub_table[256];

void scrub_planted(void);             /* main.c: zero planted_scrubbed[] (a .data page) */

#endif
