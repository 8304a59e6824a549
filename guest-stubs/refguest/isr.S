/* Interrupt entry stubs for all 256 vectors.  Each pushes a dummy error
 * code where the CPU does not, then the vector number, then jumps to
 * isr_common which saves the general registers (struct irq_frame in
 * kernel.h) and calls isr_dispatch(frame).
 *
 * Every instruction has CFI, so a debugger unwinds from a handler into the
 * interrupted code: the stubs and isr_common are signal frames
 * (.cfi_signal_frame: the interrupted rip is exact, not a return address)
 * whose CFA is the CPU's interrupt frame (rip, cs, rflags, rsp, ss), and
 * the rules say where each interrupted register is saved.  Assembled with
 * -DNO_TRAP_CFI (refguest-nocfi.elf) the CFI is left out, like the trap
 * entry of an OS whose assembly has none (Unikraft's): a debugger then
 * needs to know struct irq_frame instead. */

#ifdef NO_TRAP_CFI
#define CFI(...)
#else
#define CFI(...) __VA_ARGS__
#endif

	/* The CPU's interrupt frame at the CFA: what the interrupted code had. */
	.macro HARDWARE_FRAME_RULES
	CFI(.cfi_signal_frame)
	CFI(.cfi_offset rip, 0)
	CFI(.cfi_offset cs, 8)
	CFI(.cfi_offset rflags, 16)
	CFI(.cfi_offset rsp, 24)
	CFI(.cfi_offset ss, 32)
	.endm

	.text
	.macro ISR_STUB vec
	.balign 16
isr_stub_\vec:
	CFI(.cfi_startproc simple)
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	CFI(.cfi_def_cfa rsp, 8)       /* the CPU pushed an error code */
	HARDWARE_FRAME_RULES
	.else
	CFI(.cfi_def_cfa rsp, 0)
	HARDWARE_FRAME_RULES
	pushq $0
	CFI(.cfi_adjust_cfa_offset 8)
	.endif
	pushq $\vec
	CFI(.cfi_adjust_cfa_offset 8)
	jmp isr_common
	CFI(.cfi_endproc)
	.endm

	.altmacro
	.set i, 0
	.rept 256
	ISR_STUB %i
	.set i, i + 1
	.endr

	/* push/pop one general register, saying where it is (or that it is back) */
	.macro SAVE reg
	pushq %\reg
	CFI(.cfi_adjust_cfa_offset 8)
	CFI(.cfi_rel_offset \reg, 0)
	.endm
	.macro RESTORE reg
	popq %\reg
	CFI(.cfi_adjust_cfa_offset -8)
	CFI(.cfi_restore \reg)
	.endm

	.globl isr_common
	.type isr_common, @function
isr_common:
	CFI(.cfi_startproc simple)
	/* on entry: vector at 0(%rsp), error 8, rip 16, cs 24, rflags 32, rsp 40 */
	CFI(.cfi_def_cfa rsp, 16)
	HARDWARE_FRAME_RULES
	SAVE rax
	SAVE rbx
	SAVE rcx
	SAVE rdx
	SAVE rsi
	SAVE rdi
	SAVE rbp
	SAVE r8
	SAVE r9
	SAVE r10
	SAVE r11
	SAVE r12
	SAVE r13
	SAVE r14
	SAVE r15
	cld
	movq %rsp, %rdi
	call isr_dispatch
	RESTORE r15
	RESTORE r14
	RESTORE r13
	RESTORE r12
	RESTORE r11
	RESTORE r10
	RESTORE r9
	RESTORE r8
	RESTORE rbp
	RESTORE rdi
	RESTORE rsi
	RESTORE rdx
	RESTORE rcx
	RESTORE rbx
	RESTORE rax
	addq $16, %rsp
	CFI(.cfi_adjust_cfa_offset -16)
	iretq
	CFI(.cfi_endproc)
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
