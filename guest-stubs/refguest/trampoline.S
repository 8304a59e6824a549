/* Application-processor trampoline.  Copied by smp_boot() to AP_TRAMPOLINE
 * (0x8000, below 1 MiB); the SIPI starts an AP there in real mode
 * (CS = 0x0800, IP = 0).  It loads a flat GDT, enters protected mode, turns
 * on PAE + long mode with the kernel's page tables (ap_tramp_cr3), switches
 * to its idle thread's stack (ap_tramp_stack) and calls
 * ap_main(ap_tramp_cpu).  The BSP fills the three data words before each
 * SIPI and boots one AP at a time. */

#define TRAMP 0x8000
#define REL(x) (TRAMP + ((x) - ap_trampoline_start))

	.section .rodata.trampoline, "a"
	.globl ap_trampoline_start, ap_trampoline_end
	.globl ap_tramp_cr3, ap_tramp_stack, ap_tramp_cpu
	.code16
ap_trampoline_start:
	cli
	cld
	xorw %ax, %ax
	movw %ax, %ds
	lgdtl REL(tramp_gdt_ptr)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $0x08, $REL(tramp_pm32)

	.code32
tramp_pm32:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl %cr4, %eax
	orl $0x20, %eax
	movl %eax, %cr4
	movl REL(ap_tramp_cr3), %eax
	movl %eax, %cr3
	movl $0x80000001, %eax           /* NX? (mm.c's tables use it if so) */
	cpuid
	movl %edx, %esi
	movl $0xC0000080, %ecx
	rdmsr
	orl $0x100, %eax                 /* LME */
	btl $20, %esi
	jnc 1f
	orl $0x800, %eax                 /* NXE */
1:	wrmsr
	movl %cr0, %eax
	orl $0x80010001, %eax            /* PG | WP | PE */
	andl $~0x60000000, %eax
	movl %eax, %cr0
	ljmpl $0x18, $REL(tramp_lm64)

	.code64
tramp_lm64:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	movq REL(ap_tramp_stack), %rsp
	xorl %ebp, %ebp
	movl REL(ap_tramp_cpu), %edi
	movabsq $ap_main, %rax
	pushq $0                         /* fake return address */
	jmp *%rax

	.balign 16
tramp_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff         /* 0x08: 32-bit code */
	.quad 0x00cf92000000ffff         /* 0x10: data */
	.quad 0x00af9a000000ffff         /* 0x18: 64-bit code */
tramp_gdt_end:
tramp_gdt_ptr:
	.word tramp_gdt_end - tramp_gdt - 1
	.long REL(tramp_gdt)
	.balign 8
ap_tramp_cr3:	.quad 0
ap_tramp_stack:	.quad 0
ap_tramp_cpu:	.quad 0
ap_trampoline_end:

	.section .note.GNU-stack, "", @progbits
