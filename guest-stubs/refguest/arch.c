/* x86-64 machine support: GDT/TSS/IST, IDT and exception reporting, panic,
 * 8259 PIC (masked), PIT-calibrated TSC, local APIC timer and IPIs, ACPI MADT
 * parsing and SMP bring-up (INIT-SIPI-SIPI), isa-debug-exit. */
#include "kernel.h"

uint64_t tsc_khz;
uint64_t boot_tsc;
unsigned cpu_count = 1;          /* CPUs online */
unsigned cpus_found = 1;         /* enabled CPUs listed in the MADT */
uint32_t cpu_apic_ids[MAX_CPUS];
volatile int panicking;
volatile int halt_all;
static uint64_t lapic_base = 0xfee00000ULL;
static uint32_t lapic_timer_count;   /* initial count for a 1 ms period */

/* ---- GDT / TSS ------------------------------------------------------------ */
struct tss {
	uint32_t rsv0;
	uint64_t rsp[3];
	uint64_t rsv1;
	uint64_t ist[7];
	uint64_t rsv2;
	uint16_t rsv3;
	uint16_t iomap;
} __attribute__((packed));

static struct tss tss[MAX_CPUS] __attribute__((aligned(16)));
/* 0x00 null, 0x08 code64, 0x10 data, 0x18 + 16*cpu: TSS of cpu */
static uint64_t gdt[3 + 2 * MAX_CPUS] __attribute__((aligned(16)));

static void gdt_build(void)
{
	gdt[0] = 0;
	gdt[1] = 0x00af9a000000ffffULL;
	gdt[2] = 0x00cf92000000ffffULL;
	for (unsigned i = 0; i < MAX_CPUS; i++) {
		uint64_t base = (uint64_t)&tss[i], limit = sizeof(struct tss) - 1;
		gdt[3 + 2 * i] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
			(0x89ULL << 40) | (((limit >> 16) & 0xf) << 48) |
			(((base >> 24) & 0xff) << 56);
		gdt[4 + 2 * i] = base >> 32;
	}
}

void gdt_init_cpu(unsigned cpu)
{
	if (cpu == 0)
		gdt_build();
	struct percpu *pc = &percpu[cpu];
	for (int i = 0; i < 3; i++) {
		if (!pc->ist_top[i]) {
			char *s = page_alloc(IST_STACK_SIZE / PAGE_SIZE);
			if (!s)
				panic("out of memory for IST stacks");
			pc->ist_top[i] = (uint64_t)s + IST_STACK_SIZE;
		}
		tss[cpu].ist[i] = pc->ist_top[i];
	}
	tss[cpu].iomap = sizeof(struct tss);
	struct { uint16_t lim; uint64_t base; } __attribute__((packed)) p =
		{ sizeof(gdt) - 1, (uint64_t)gdt };
	__asm__ volatile(
		"lgdt %0\n\t"
		"pushq $0x08\n\t"
		"leaq 1f(%%rip), %%rax\n\t"
		"pushq %%rax\n\t"
		"lretq\n"
		"1:\n\t"
		"movl $0x10, %%eax\n\t"
		"movl %%eax, %%ds\n\t"
		"movl %%eax, %%es\n\t"
		"movl %%eax, %%ss\n\t"
		: : "m"(p) : "rax", "memory");
	uint16_t sel = (uint16_t)(0x18 + 16 * cpu);
	__asm__ volatile("ltr %0" : : "r"(sel));
}

/* ---- IDT ------------------------------------------------------------------ */
struct idt_entry {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, rsv;
} __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));

void idt_init(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)isr_stub_table[v];
		idt[v].off0 = a & 0xffff;
		idt[v].sel = 0x08;
		idt[v].ist = v == 8 ? 1 : v == 14 ? 2 : v == 2 ? 3 : 0;
		idt[v].type = 0x8e;   /* present, interrupt gate */
		idt[v].off1 = (a >> 16) & 0xffff;
		idt[v].off2 = a >> 32;
		idt[v].rsv = 0;
	}
	idt_load();
}

void idt_load(void)
{
	struct { uint16_t lim; uint64_t base; } __attribute__((packed)) p =
		{ sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" : : "m"(p));
}

/* ---- exceptions / panic ---------------------------------------------------- */
static const char *const exc_names[32] = {
	"#DE", "#DB", "#NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
	"#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#RES15",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#RES22", "#RES23",
	"#RES24", "#RES25", "#RES26", "#RES27", "#HV", "#VC", "#SX", "#RES31",
};

__attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static __attribute__((noreturn)) void stop_cpu(void)
{
	if (halt_all == 2)
		for (;;)
			__asm__ volatile("cli; pause");
	halt_forever();
}

static bool panic_line_printed;

static __attribute__((noreturn)) void panic_finish(void)
{
	halt_all = 1;
	outb(0x505, 1);                 /* pvpanic: QEMU pauses (panic=pause) */
	if (cpu_count > 1)
		send_nmi_all_but_self();
	halt_forever();
}

__attribute__((noreturn)) void panic(const char *fmt, ...)
{
	__asm__ volatile("cli");
	if (__atomic_exchange_n(&panicking, 1, __ATOMIC_SEQ_CST))
		halt_forever();            /* another CPU is already panicking */
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	kvsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (!panic_line_printed) {
		panic_line_printed = true;
		kprintf("PANIC: %s\n", buf);
	}
	undebug_panic(buf);
	panic_finish();
}

/* Frame-pointer walk: raw return addresses, at most 32, while rbp stays
 * inside the thread's stack (or this CPU's IST stacks if no thread). */
void backtrace_from(uint64_t rbp, struct thread *t)
{
	char buf[32 * 20 + 16];
	int len = ksnprintf(buf, sizeof buf, "backtrace:");
	uint64_t lo = t ? t->stack_lo : 0, hi = t ? t->stack_hi : 0;
	for (int i = 0; i < 32; i++) {
		if (!rbp || (rbp & 7) || rbp < lo || rbp + 16 > hi)
			break;
		uint64_t ret = ((uint64_t *)rbp)[1];
		uint64_t nrbp = ((uint64_t *)rbp)[0];
		if (!ret)
			break;
		len += ksnprintf(buf + len, sizeof buf - len, " 0x%lx", ret);
		if (nrbp <= rbp)
			break;
		rbp = nrbp;
	}
	ksnprintf(buf + len, sizeof buf - len, "\n");
	kprintf("%s", buf);
}

static void exception(struct irq_frame *f)
{
	__asm__ volatile("cli");
	struct percpu *pc = this_cpu();
	struct thread *t = pc ? pc->current : NULL;
	uint64_t cr2 = read_cr2();
	unsigned v = (unsigned)f->vector;
	if (__atomic_exchange_n(&panicking, 1, __ATOMIC_SEQ_CST))
		halt_forever();
	undebug_fault(v, f->error, f->rip, v == 14 ? cr2 : 0);
	kprintf("EXCEPTION vector=%u (%s) error=0x%lx rip=0x%lx cr2=0x%lx cpu=%u thread=%s\n",
		v, exc_names[v & 31], f->error, f->rip, cr2, pc ? pc->index : 0,
		t ? t->name : "?");
	backtrace_from(f->rbp, t);
	panic_line_printed = true;
	struct thread *g = v == 14 ? find_thread_by_guard(cr2) : NULL;
	char reason[128];
	if (g)
		ksnprintf(reason, sizeof reason, "stack overflow in thread %s (guard page 0x%lx)",
			  g->name, cr2 & ~(PAGE_SIZE - 1));
	else if (v == 14 && cr2 < PAGE_SIZE)
		ksnprintf(reason, sizeof reason, "null pointer dereference (cr2=0x%lx)", cr2);
	else
		ksnprintf(reason, sizeof reason, "unhandled exception %s", exc_names[v & 31]);
	kprintf("PANIC: %s\n", reason);
	undebug_panic(reason);
	panic_finish();
}

void isr_dispatch(struct irq_frame *f)
{
	unsigned v = (unsigned)f->vector;
	if (v == 2 && halt_all)
		stop_cpu();                 /* NMI sent by panic / hang */
	if (v < 32) {
		exception(f);
		return;
	}
	if (v == VEC_TIMER) {
		this_cpu()->ticks++;
		lapic_eoi();
		sched_timer_tick();
		undebug_trace_poll();          /* flush the trace rings (never blocks) */
		return;
	}
	if (v == VEC_IPI) {
		lapic_eoi();
		return;
	}
	/* masked 8259 spurious IRQs (0x27/0x2f) and the APIC spurious vector:
	 * no EOI needed */
}

/* ---- 8259 PIC ------------------------------------------------------------- */
void pic_disable(void)
{
	outb(0x20, 0x11); outb(0xa0, 0x11);
	outb(0x21, VEC_PIC_BASE); outb(0xa1, VEC_PIC_BASE + 8);
	outb(0x21, 4); outb(0xa1, 2);
	outb(0x21, 1); outb(0xa1, 1);
	outb(0x21, 0xff); outb(0xa1, 0xff);
}

/* ---- TSC calibration against PIT channel 2 ------------------------------- */
void tsc_calibrate(void)
{
	uint64_t best = 0;
	for (int tries = 0; tries < 3; tries++) {
		const unsigned ms = 10;
		const uint16_t count = (uint16_t)(1193182ULL * ms / 1000);
		outb(0x61, (inb(0x61) & ~0x02) | 0x01);   /* gate on, speaker off */
		outb(0x43, 0xb0);                        /* ch2, lo/hi, mode 0 */
		outb(0x42, count & 0xff);
		outb(0x42, count >> 8);
		uint64_t t0 = rdtsc();
		uint64_t spins = 0;
		while (!(inb(0x61) & 0x20) && ++spins < 100000000ULL)
			;
		uint64_t t1 = rdtsc();
		uint64_t khz = (t1 - t0) / ms;
		if (khz > best)
			best = khz;
		if (best)
			break;
	}
	tsc_khz = best ? best : 1000000;
}

uint64_t uptime_ms(void)
{
	return (rdtsc() - boot_tsc) / tsc_khz;
}

void delay_us(uint64_t us)
{
	uint64_t end = rdtsc() + us * tsc_khz / 1000;
	while (rdtsc() < end)
		cpu_relax();
}

/* ---- local APIC ------------------------------------------------------------ */
static inline uint32_t lapic_read(uint32_t r) { return *(volatile uint32_t *)(lapic_base + r); }
static inline void lapic_write(uint32_t r, uint32_t v) { *(volatile uint32_t *)(lapic_base + r) = v; }

uint32_t lapic_id(void) { return lapic_read(0x20) >> 24; }
void lapic_eoi(void) { lapic_write(0xb0, 0); }

void lapic_init_cpu(void)
{
	uint64_t base = rdmsr(0x1b);
	wrmsr(0x1b, base | (1 << 11));                /* global enable */
	lapic_write(0xf0, 0x100 | VEC_SPURIOUS);      /* software enable */
	lapic_write(0x80, 0);                         /* TPR */
}

void lapic_timer_calibrate(void)
{
	lapic_write(0x3e0, 0x3);                      /* divide by 16 */
	lapic_write(0x320, 1 << 16);                  /* masked, one-shot */
	lapic_write(0x380, 0xffffffff);
	delay_us(10000);
	uint32_t left = lapic_read(0x390);
	lapic_write(0x380, 0);
	lapic_timer_count = (0xffffffff - left) / 10;
	if (!lapic_timer_count)
		lapic_timer_count = 1000;
}

void lapic_timer_start(void)
{
	lapic_write(0x3e0, 0x3);
	lapic_write(0x320, VEC_TIMER | (1 << 17));    /* periodic */
	lapic_write(0x380, lapic_timer_count);
}

static void lapic_icr(uint32_t hi, uint32_t lo)
{
	lapic_write(0x310, hi);
	lapic_write(0x300, lo);
	for (int i = 0; i < 1000000 && (lapic_read(0x300) & (1 << 12)); i++)
		cpu_relax();
}

void send_nmi_all_but_self(void) { lapic_icr(0, (3 << 18) | (1 << 14) | (4 << 8)); }
void send_ipi_all_but_self(uint8_t vec) { lapic_icr(0, (3 << 18) | (1 << 14) | vec); }

/* ---- ACPI MADT --------------------------------------------------------------- */
struct acpi_sdt {
	char sig[4];
	uint32_t len;
	uint8_t rev, csum;
	char oem[6], oemtab[8];
	uint32_t oemrev, creator, creatorrev;
} __attribute__((packed));

static uint64_t find_rsdp(void)
{
	for (uint64_t a = 0xe0000; a < 0x100000; a += 16)
		if (!memcmp((void *)a, "RSD PTR ", 8))
			return a;
	return 0;
}

void acpi_init(uint64_t rsdp)
{
	cpu_apic_ids[0] = lapic_id();
	cpus_found = 1;
	if (!rsdp)
		rsdp = find_rsdp();
	if (!rsdp) {
		kprintf("refguest: warning: no ACPI RSDP, running on one CPU\n");
		return;
	}
	const uint8_t *r = (const void *)rsdp;
	uint8_t rev = r[15];
	uint64_t root = *(const uint32_t *)(r + 16);
	unsigned esz = 4;
	if (rev >= 2 && *(const uint64_t *)(r + 24)) {
		root = *(const uint64_t *)(r + 24);
		esz = 8;
	}
	const struct acpi_sdt *rt = (const void *)root;
	unsigned n = (rt->len - sizeof *rt) / esz;
	const uint8_t *ents = (const uint8_t *)(rt + 1);
	for (unsigned i = 0; i < n; i++) {
		uint64_t a = esz == 8 ? *(const uint64_t *)(ents + 8 * i)
				      : *(const uint32_t *)(ents + 4 * i);
		const struct acpi_sdt *s = (const void *)a;
		if (memcmp(s->sig, "APIC", 4))
			continue;
		const uint8_t *p = (const uint8_t *)s + 44, *end = (const uint8_t *)s + s->len;
		lapic_base = *(const uint32_t *)((const uint8_t *)s + 36);
		uint32_t bsp = lapic_id();
		while (p + 2 <= end && p[1]) {
			if (p[0] == 0 && (*(const uint32_t *)(p + 4) & 1) && p[3] != bsp) {
				if (cpus_found < MAX_CPUS)
					cpu_apic_ids[cpus_found++] = p[3];
			}
			p += p[1];
		}
	}
}

/* ---- SMP --------------------------------------------------------------------- */
static volatile int ap_ready;

void ap_main(unsigned cpu)
{
	struct percpu *pc = &percpu[cpu];
	wrmsr(0xc0000101, (uint64_t)pc);              /* GS base */
	gdt_init_cpu(cpu);
	idt_load();
	lapic_init_cpu();
	lapic_timer_start();
	pc->apic_id = lapic_id();
	pc->current = pc->idle;
	pc->idle->state = THREAD_RUNNING;
	pc->idle->cpu = (int)cpu;
	pc->online = 1;
	__atomic_store_n(&ap_ready, 1, __ATOMIC_RELEASE);
	idle_loop();
}

void smp_boot(void)
{
	if (cpus_found < 2)
		return;
	uint64_t sz = (uint64_t)(ap_trampoline_end - ap_trampoline_start);
	memcpy((void *)AP_TRAMPOLINE, ap_trampoline_start, sz);
	volatile uint64_t *cr3p = (void *)(AP_TRAMPOLINE + (ap_tramp_cr3 - ap_trampoline_start));
	volatile uint64_t *stackp = (void *)(AP_TRAMPOLINE + (ap_tramp_stack - ap_trampoline_start));
	volatile uint64_t *cpup = (void *)(AP_TRAMPOLINE + (ap_tramp_cpu - ap_trampoline_start));
	for (unsigned i = 1; i < cpus_found; i++) {
		struct percpu *pc = &percpu[i];
		*cr3p = kernel_cr3;
		*stackp = pc->idle->stack_hi;
		*cpup = i;
		ap_ready = 0;
		uint32_t id = cpu_apic_ids[i] << 24;
		lapic_icr(id, 0x4500);                     /* INIT */
		delay_us(10000);
		lapic_icr(id, 0x4600 | (AP_TRAMPOLINE >> 12)); /* SIPI */
		uint64_t deadline = rdtsc() + tsc_khz * 200;    /* 200 ms */
		bool second = false;
		while (!__atomic_load_n(&ap_ready, __ATOMIC_ACQUIRE) && rdtsc() < deadline) {
			if (!second && rdtsc() > deadline - tsc_khz * 199) {
				lapic_icr(id, 0x4600 | (AP_TRAMPOLINE >> 12));
				second = true;
			}
			cpu_relax();
		}
		if (!ap_ready) {
			kprintf("refguest: warning: cpu %u (apic id %u) did not start\n",
				i, cpu_apic_ids[i]);
			break;
		}
		cpu_count = i + 1;
	}
}

/* ---- isa-debug-exit ------------------------------------------------------------ */
void exit_qemu(uint32_t code)
{
	outl(0x501, code);  /* QEMU exits with status (code << 1) | 1 */
	halt_forever();
}
