/* Context switch and new-thread trampoline.
 *
 * void switch_context(struct context *save, struct context *load)
 *
 * Saves into *save the state the calling thread will have when this call
 * returns: save->rip = our return address (inside the caller, schedule()),
 * save->rsp = %rsp + 8 (the caller's stack pointer after the return),
 * save->rbp/rbx/r12-r15 = the callee-saved registers.  Nothing is pushed on
 * the thread's stack.  Then loads *load and jumps to load->rip, so the other
 * thread "returns" from its own switch_context() call.
 * struct context layout: rsp 0, rbp 8, rbx 16, r12 24, r13 32, r14 40,
 * r15 48, rip 56. */
	.text
	.globl switch_context
	.type switch_context, @function
switch_context:
	.cfi_startproc
	movq (%rsp), %rax
	leaq 8(%rsp), %rcx
	movq %rcx, 0(%rdi)
	movq %rbp, 8(%rdi)
	movq %rbx, 16(%rdi)
	movq %r12, 24(%rdi)
	movq %r13, 32(%rdi)
	movq %r14, 40(%rdi)
	movq %r15, 48(%rdi)
	movq %rax, 56(%rdi)
	/* From here on we run on the other thread's stack, already "returned":
	 * describe the frame as the caller's (CFA = rsp, rip in load->rip). */
	movq 0(%rsi), %rsp
	.cfi_def_cfa rsp, 0
	.cfi_undefined rip
	movq 8(%rsi), %rbp
	movq 16(%rsi), %rbx
	movq 24(%rsi), %r12
	movq 32(%rsi), %r13
	movq 40(%rsi), %r14
	movq 48(%rsi), %r15
	jmp *56(%rsi)
	.cfi_endproc
	.size switch_context, . - switch_context

/* First code of a new thread: %r12 = entry, %r13 = argument, %rsp =
 * stack_hi - 8 (where a 0 "return address" is stored), %rbp = 0. */
	.globl thread_trampoline
	.type thread_trampoline, @function
thread_trampoline:
	.cfi_startproc
	.cfi_undefined rip
	xorl %ebp, %ebp
	movq %r12, %rdi
	movq %r13, %rsi
	call thread_entry
	ud2
	.cfi_endproc
	.size thread_trampoline, . - thread_trampoline

	.section .note.GNU-stack, "", @progbits
