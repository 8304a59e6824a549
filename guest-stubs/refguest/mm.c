/* Physical memory: page allocator (bitmap), the kernel's own 4-level page
 * tables (identity map of RAM with 4 KiB pages; page 0 and every thread's
 * guard page unmapped), and a first-fit heap (kmalloc/kfree) in a fixed
 * arena taken from the page allocator at boot. */
#include "kernel.h"

struct heap_stats heap_stats;
struct page_stats page_stats;
uint64_t mem_mb;
uint64_t ram_top;            /* end of the highest RAM region (<= 4 GiB) */
uint64_t kernel_cr3;
uint64_t heap_base, heap_end;

extern char __image_start[], __image_end[];

static uint8_t *page_bitmap;   /* bit set = page in use / not RAM */
static uint64_t bitmap_pages;  /* number of pages tracked */
static uint64_t page_hint;
static spinlock_t page_lock;
static spinlock_t heap_lock;

#define PTE_P   0x001ULL
#define PTE_W   0x002ULL
#define PTE_PWT 0x008ULL
#define PTE_PCD 0x010ULL
#define PTE_PS  0x080ULL
#define PTE_NX  (1ULL << 63)
#define EFER_NXE (1ULL << 11)
#define CR0_WP  (1ULL << 16)
#define PTE_ADDR 0x000ffffffffff000ULL

static inline bool bit_get(uint64_t i) { return page_bitmap[i >> 3] & (1u << (i & 7)); }
static inline void bit_set(uint64_t i) { page_bitmap[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline void bit_clr(uint64_t i) { page_bitmap[i >> 3] &= (uint8_t)~(1u << (i & 7)); }

static void free_range(uint64_t lo, uint64_t hi)
{
	lo = (lo + PAGE_SIZE - 1) / PAGE_SIZE;
	hi = hi / PAGE_SIZE;
	for (uint64_t i = lo; i < hi && i < bitmap_pages; i++) {
		if (bit_get(i)) {
			bit_clr(i);
			page_stats.free_pages++;
			page_stats.total_pages++;
		}
	}
}

static void reserve_range(uint64_t lo, uint64_t hi)
{
	lo = lo / PAGE_SIZE;
	hi = (hi + PAGE_SIZE - 1) / PAGE_SIZE;
	for (uint64_t i = lo; i < hi && i < bitmap_pages; i++) {
		if (!bit_get(i)) {
			bit_set(i);
			page_stats.free_pages--;
			page_stats.total_pages--;
		}
	}
}

void *page_alloc(size_t n)
{
	uint64_t f = irq_save();
	spin_lock(&page_lock);
	uint64_t run = 0, start = 0;
	void *res = NULL;
	for (uint64_t i = page_hint; i < bitmap_pages; i++) {
		if (bit_get(i)) { run = 0; continue; }
		if (!run) start = i;
		if (++run == n) {
			for (uint64_t j = start; j < start + n; j++)
				bit_set(j);
			page_stats.free_pages -= n;
			if (start == page_hint)
				page_hint = start + n;
			res = (void *)(start * PAGE_SIZE);
			break;
		}
	}
	spin_unlock(&page_lock);
	irq_restore(f);
	if (res)
		memset(res, 0, n * PAGE_SIZE);
	return res;
}

void page_free(void *p, size_t n)
{
	uint64_t f = irq_save();
	spin_lock(&page_lock);
	uint64_t s = (uint64_t)p / PAGE_SIZE;
	for (uint64_t j = s; j < s + n; j++)
		bit_clr(j);
	page_stats.free_pages += n;
	if (s < page_hint)
		page_hint = s;
	spin_unlock(&page_lock);
	irq_restore(f);
}

/* ---- page tables ----------------------------------------------------- */
static uint64_t *pml4;

static uint64_t *table_alloc(void)
{
	uint64_t *t = page_alloc(1);
	if (!t)
		panic("out of memory for page tables");
	return t;
}

static uint64_t *walk(uint64_t va, bool create)
{
	uint64_t *t = pml4;
	for (int level = 3; level > 0; level--) {
		unsigned idx = (va >> (12 + 9 * level)) & 511;
		if (!(t[idx] & PTE_P)) {
			if (!create)
				return NULL;
			t[idx] = (uint64_t)table_alloc() | PTE_P | PTE_W;
		}
		if (t[idx] & PTE_PS)
			return NULL;
		t = (uint64_t *)(t[idx] & PTE_ADDR);
	}
	return &t[(va >> 12) & 511];
}

static void map_2m(uint64_t va, uint64_t flags)
{
	uint64_t *t = pml4;
	for (int level = 3; level > 1; level--) {
		unsigned idx = (va >> (12 + 9 * level)) & 511;
		if (!(t[idx] & PTE_P))
			t[idx] = (uint64_t)table_alloc() | PTE_P | PTE_W;
		t = (uint64_t *)(t[idx] & PTE_ADDR);
	}
	t[(va >> 21) & 511] = va | PTE_P | PTE_W | PTE_PS | flags;
}

void unmap_page(uint64_t va)
{
	uint64_t *pte = walk(va, false);
	if (pte)
		*pte = 0;
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

/* NX when the CPU has it (CPUID 0x80000001 EDX bit 20); the AP trampoline
 * turns EFER.NXE on by the same test before it uses these tables. */
static uint64_t nx_bit(void)
{
	uint32_t a = 0x80000001, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	if (!(d & (1u << 20)))
		return 0;
	wrmsr(0xc0000080, rdmsr(0xc0000080) | EFER_NXE);
	return PTE_NX;
}

static void paging_init(void)
{
	pml4 = table_alloc();
	uint64_t nx = nx_bit();
	uint64_t text_lo = (uint64_t)__image_start, text_hi = (uint64_t)__text_end;
	/* RAM with 4 KiB pages; page 0 stays unmapped (NULL page). The image's
	 * text segment (text, rodata, eh_frame) is read-only and the only
	 * executable RAM above 1 MiB; RAM below 1 MiB stays writable and
	 * executable: the AP trampoline is copied to 0x8000 and run there. */
	uint64_t end = (ram_top + (2ULL << 20) - 1) & ~((2ULL << 20) - 1);
	for (uint64_t va = 0; va < end; va += PAGE_SIZE) {
		uint64_t *pte = walk(va, true);
		uint64_t flags = va < 0x100000 ? PTE_W : va >= text_lo && va < text_hi ? 0 : PTE_W | nx;
		*pte = va ? (va | PTE_P | flags) : 0;
	}
	/* IOAPIC and local APIC (2 MiB each, uncached). */
	map_2m(0xfec00000ULL, PTE_PCD | PTE_PWT | nx);
	map_2m(0xfee00000ULL, PTE_PCD | PTE_PWT | nx);
	kernel_cr3 = (uint64_t)pml4;
	__asm__ volatile("mov %0, %%cr3" : : "r"(kernel_cr3) : "memory");
	uint64_t cr0;
	__asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
	__asm__ volatile("mov %0, %%cr0" : : "r"(cr0 | CR0_WP) : "memory");  /* ring 0 obeys R/O */
	unmap_page((uint64_t)boot_stack_guard);
}

/* ---- heap -------------------------------------------------------------- */
#define HEAP_FREE_MAGIC 0x46524545484541ULL   /* "FREEHEA" */
#define HEAP_USED_MAGIC 0x55534544484541ULL   /* "USEDHEA" */
struct hblk {
	uint64_t size;        /* whole block including this header */
	uint64_t magic;
	struct hblk *next;    /* free list (address order); payload when used */
};
#define HDR 16
static struct hblk *free_list;

static void heap_init(void)
{
	uint64_t pages = page_stats.free_pages / 4;
	if (pages > (64ULL << 20) / PAGE_SIZE)
		pages = (64ULL << 20) / PAGE_SIZE;
	void *p = page_alloc(pages);
	if (!p)
		panic("cannot allocate heap arena");
	heap_base = (uint64_t)p;
	heap_end = heap_base + pages * PAGE_SIZE;
	free_list = p;
	free_list->size = pages * PAGE_SIZE;
	free_list->magic = HEAP_FREE_MAGIC;
	free_list->next = NULL;
	heap_stats.total_bytes = pages * PAGE_SIZE;
}

void *kmalloc(size_t n)
{
	uint64_t need = ((n + 15) & ~15ULL) + HDR;
	if (need < 32)
		need = 32;
	uint64_t f = irq_save();
	spin_lock(&heap_lock);
	struct hblk **pp = &free_list, *b;
	for (b = free_list; b; pp = &b->next, b = b->next) {
		if (b->size >= need)
			break;
	}
	void *res = NULL;
	uint64_t ac = 0, fc = 0, used = 0;
	if (b) {
		if (b->size - need >= 32) {
			struct hblk *rest = (struct hblk *)((char *)b + need);
			rest->size = b->size - need;
			rest->magic = HEAP_FREE_MAGIC;
			rest->next = b->next;
			*pp = rest;
			b->size = need;
		} else {
			*pp = b->next;
		}
		b->magic = HEAP_USED_MAGIC;
		heap_stats.used_bytes += b->size;
		if (heap_stats.used_bytes > heap_stats.peak_bytes)
			heap_stats.peak_bytes = heap_stats.used_bytes;
		heap_stats.alloc_count++;
		ac = heap_stats.alloc_count;
		fc = heap_stats.free_count;
		used = heap_stats.used_bytes;
		res = (char *)b + HDR;
	} else {
		heap_stats.failed_count++;
	}
	spin_unlock(&heap_lock);
	irq_restore(f);
	if (ac && (ac & 1023) == 0)
		UNDEBUG_TRACEPOINT(heap, "allocs=%lu frees=%lu used_bytes=%lu", ac, fc, used);
	return res;
}

void kfree(void *p)
{
	if (!p)
		return;
	struct hblk *b = (struct hblk *)((char *)p - HDR);
	ASSERT(b->magic == HEAP_USED_MAGIC);
	uint64_t f = irq_save();
	spin_lock(&heap_lock);
	heap_stats.used_bytes -= b->size;
	heap_stats.free_count++;
	b->magic = HEAP_FREE_MAGIC;
	struct hblk *prev = NULL, *cur = free_list;
	while (cur && cur < b) {
		prev = cur;
		cur = cur->next;
	}
	b->next = cur;
	if (prev)
		prev->next = b;
	else
		free_list = b;
	if (cur && (char *)b + b->size == (char *)cur) {      /* merge with next */
		b->size += cur->size;
		b->next = cur->next;
	}
	if (prev && (char *)prev + prev->size == (char *)b) { /* merge with prev */
		prev->size += b->size;
		prev->next = b->next;
	}
	spin_unlock(&heap_lock);
	irq_restore(f);
}

/* Planted fragmentation (README, "Planted state"): 16 blocks of 32 bytes at the
 * start of the arena, the even ones freed again: 8 free 32-byte blocks between
 * used ones, which only kmalloc(n <= 16) could reuse, and nothing does. */
void *heap_planted[16];

static void heap_plant(void)
{
	for (unsigned i = 0; i < 16; i++)
		heap_planted[i] = kmalloc(16);
	for (unsigned i = 0; i < 16; i += 2) {
		kfree(heap_planted[i]);
		heap_planted[i] = NULL;
	}
}

/* ---- init --------------------------------------------------------------- */
static uint8_t cmos_read(uint8_t reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

void mm_init(const struct hvm_start_info *si)
{
	struct hvm_memmap_table_entry fallback[2];
	const struct hvm_memmap_table_entry *mm = NULL;
	unsigned nent = 0;
	if (si && si->version >= 1 && si->memmap_entries && si->memmap_paddr) {
		mm = (const void *)si->memmap_paddr;
		nent = si->memmap_entries;
	} else {
		/* CMOS: KiB 1-16 MiB at 0x30/0x31, 64 KiB blocks above 16 MiB at 0x34/0x35 */
		uint64_t ext = cmos_read(0x30) | (cmos_read(0x31) << 8);
		uint64_t hi = cmos_read(0x34) | (cmos_read(0x35) << 8);
		fallback[0] = (struct hvm_memmap_table_entry){ 0, 0x9f000, 1, 0 };
		fallback[1] = (struct hvm_memmap_table_entry){ 0x100000,
			hi ? (16ULL << 20) + hi * 65536 - 0x100000 : ext * 1024, 1, 0 };
		mm = fallback;
		nent = 2;
	}
	for (unsigned i = 0; i < nent; i++) {
		if (mm[i].type != 1)
			continue;
		uint64_t end = mm[i].addr + mm[i].size;
		if (end > (4ULL << 30))
			end = 4ULL << 30;
		if (end > ram_top)
			ram_top = end;
	}
	mem_mb = (ram_top + (1 << 20) - 1) >> 20;

	bitmap_pages = ram_top / PAGE_SIZE;
	page_bitmap = (uint8_t *)__image_end;
	uint64_t bm_bytes = (bitmap_pages + 7) / 8;
	memset(page_bitmap, 0xff, bm_bytes);
	for (unsigned i = 0; i < nent; i++) {
		if (mm[i].type != 1)
			continue;
		uint64_t lo = mm[i].addr, hi = mm[i].addr + mm[i].size;
		if (lo < 0x100000)
			lo = 0x100000;   /* nothing below 1 MiB (BIOS data, trampoline) */
		if (hi > ram_top)
			hi = ram_top;
		if (lo < hi)
			free_range(lo, hi);
	}
	reserve_range((uint64_t)__image_start, (uint64_t)__image_end + bm_bytes);
	page_hint = 0;
	paging_init();
	heap_init();
	heap_plant();
}
