/* Interrupt entry stubs for all 256 vectors.  Each pushes a dummy error
 * code where the CPU does not, then the vector number, then jumps to
 * isr_common which saves the general registers (struct irq_frame in
 * kernel.h) and calls isr_dispatch(frame). */

	.text
	.macro ISR_STUB vec
	.balign 16
isr_stub_\vec:
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
	.endm

	.altmacro
	.set i, 0
	.rept 256
	ISR_STUB %i
	.set i, i + 1
	.endr

	.globl isr_common
	.type isr_common, @function
isr_common:
	.cfi_startproc simple
	.cfi_signal_frame
	/* on entry: vector at 0(%rsp), error 8, rip 16, cs 24, rflags 32, rsp 40 */
	.cfi_def_cfa rsp, 16
	.cfi_offset rip, 0
	.cfi_offset rsp, 24
	pushq %rax
	.cfi_adjust_cfa_offset 8
	pushq %rbx
	.cfi_adjust_cfa_offset 8
	pushq %rcx
	.cfi_adjust_cfa_offset 8
	pushq %rdx
	.cfi_adjust_cfa_offset 8
	pushq %rsi
	.cfi_adjust_cfa_offset 8
	pushq %rdi
	.cfi_adjust_cfa_offset 8
	pushq %rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset rbp, 0
	pushq %r8
	.cfi_adjust_cfa_offset 8
	pushq %r9
	.cfi_adjust_cfa_offset 8
	pushq %r10
	.cfi_adjust_cfa_offset 8
	pushq %r11
	.cfi_adjust_cfa_offset 8
	pushq %r12
	.cfi_adjust_cfa_offset 8
	pushq %r13
	.cfi_adjust_cfa_offset 8
	pushq %r14
	.cfi_adjust_cfa_offset 8
	pushq %r15
	.cfi_adjust_cfa_offset 8
	cld
	movq %rsp, %rdi
	call isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq
	.cfi_endproc
	.size isr_common, . - isr_common

	.section .rodata
	.balign 8
	.globl isr_stub_table
	.macro STUB_ENTRY vec
	.quad isr_stub_\vec
	.endm
isr_stub_table:
	.set i, 0
	.rept 256
	STUB_ENTRY %i
	.set i, i + 1
	.endr

	.section .note.GNU-stack, "", @progbits
