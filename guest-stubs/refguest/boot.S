/* refguest boot: PVH ELF note, 32-bit PVH entry, temporary page tables
 * (identity map of the first 4 GiB with 2 MiB pages), long mode, kmain().
 * kmain() later replaces these tables with 4 KiB-page tables (mm.c). */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

	.section .note.Xen, "a", @note
	.balign 4
	.long 4                          /* namesz */
	.long 4                          /* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY   /* type */
	.asciz "Xen"
	.balign 4
	.long pvh_start32                /* 32-bit physical entry */
	.balign 4

	.section .text.boot, "ax"
	.code32
	.globl pvh_start32
	.type pvh_start32, @function
/* Entered in 32-bit protected mode, paging off, %ebx = hvm_start_info. */
pvh_start32:
	cli
	cld
	mov %ebx, %esi                   /* keep start_info */
	mov $boot_stack_top, %esp

	/* PML4[0] -> PDPT, PDPT[0..3] -> PD0..PD3, each PD: 512 x 2 MiB. */
	mov $boot_pdpt, %eax
	or $0x3, %eax
	mov %eax, boot_pml4
	movl $0, boot_pml4 + 4
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $12, %eax
	add $boot_pd, %eax
	or $0x3, %eax
	mov %eax, boot_pdpt(,%ecx,8)
	movl $0, boot_pdpt + 4(,%ecx,8)
	inc %ecx
	cmp $4, %ecx
	jne 1b
	xor %ecx, %ecx                   /* 2048 entries: 4 GiB */
2:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax                   /* present, writable, PS */
	mov %eax, boot_pd(,%ecx,8)
	mov %ecx, %eax
	shr $11, %eax                    /* high dword: address bits 32+ (0) */
	mov %eax, boot_pd + 4(,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jne 2b

	mov %cr4, %eax
	or $0x20, %eax                   /* PAE */
	mov %eax, %cr4
	mov $boot_pml4, %eax
	mov %eax, %cr3
	mov $0xC0000080, %ecx            /* EFER */
	rdmsr
	or $0x100, %eax                  /* LME */
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax             /* PG | PE */
	and $~0x60000000, %eax           /* caches on (CD, NW off) */
	mov %eax, %cr0
	lgdt boot_gdt_ptr
	ljmp $0x08, $long_entry

	.code64
long_entry:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov $boot_stack_top, %rsp
	pushq $0                         /* fake return address: ends unwinding */
	xor %ebp, %ebp
	mov %esi, %edi                   /* kmain(start_info) */
	call kmain
3:	cli
	hlt
	jmp 3b
	.size pvh_start32, . - pvh_start32

	.section .rodata
	.balign 16
boot_gdt:
	.quad 0
	.quad 0x00af9a000000ffff         /* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff         /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
	.word boot_gdt_end - boot_gdt - 1
	.long boot_gdt

	.section .bss
	.balign 4096
	.globl boot_pml4, boot_pdpt, boot_pd
boot_pml4:	.skip 4096
boot_pdpt:	.skip 4096
boot_pd:	.skip 4 * 4096
	/* Boot (`main` thread) stack, with a guard page below it that mm.c unmaps. */
	.globl boot_stack_guard, boot_stack_bottom, boot_stack_top
boot_stack_guard:	.skip 4096
boot_stack_bottom:	.skip 32 * 1024
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
