"""Why a guest crashed, in one line of words, from its paused vCPUs.

A crashed guest says little by itself: pvpanic tells QEMU *that* it crashed, not why.
The why is on the stack of the vCPU that crashed: unwinding its thread (through the OS's
trap frames) reaches either an exception frame (vector, error code, cr2 for a #PF) or
the OS's panic function; the frame below that is the code that crashed. Each provider
names its panic functions and calls :func:`find_crash`; a front end asks
``provider.crash()`` (the supervisor never imports OS awareness).
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from undebug.text import escape
from undebug.trapframe import PAGE_FAULT, Trap, exception_name

if TYPE_CHECKING:  # the unwinder is imported when a crash is read, not by every command
    from undebug.os.provider import GuestThread, ThreadProvider
    from undebug.unwind import Backtrace, Frame

__all__ = ["Crash", "find_crash", "page_fault_access"]

# #DB, NMI and #BP are debugging (or the NMI a panicking CPU sends the others to halt
# them), not crashes; vectors from 32 up are interrupts.
NOT_CRASHES = frozenset({1, 2, 3})
FIRST_INTERRUPT = 32
MAX_CRASH_FRAMES = 128
# Intel SDM vol. 3A, table 6-1, in words (others fall back to the mnemonic, e.g. #VE).
EXCEPTION_WORDS = {0: "divide error", 4: "overflow", 5: "bound range exceeded",
                   6: "invalid opcode", 7: "device not available", 8: "double fault",
                   10: "invalid TSS", 11: "segment not present", 12: "stack-segment fault",
                   13: "general protection fault", 14: "page fault",
                   16: "x87 floating-point error", 17: "alignment check", 18: "machine check",
                   19: "SIMD floating-point exception", 21: "control protection fault"}
PF_WRITE, PF_FETCH = 0x2, 0x10  # #PF error code bits W/R and I/D (SDM vol. 3A, 4.7)


@dataclass(frozen=True)
class Crash:
    """A crash in words. ``reason`` is one printable line (guest text in it is escaped),
    e.g. ``page fault writing 0x0 in do_work (main.c:41), thread worker-1``;
    ``thread_name`` is raw guest text: escape it."""

    reason: str
    thread_id: int | None
    thread_name: str | None
    function: str | None
    location: str | None  # file:line of the crashing code, None without line info
    fault_address: int | None  # cr2 of a page fault
    access: str | None  # read, write, exec (page faults), else None
    vector: int | None  # None for a panic without an exception
    error_code: int | None = None
    cpu: int | None = None


def page_fault_access(error_code: int) -> str:
    """read, write or exec, from a #PF error code."""
    if error_code & PF_FETCH:
        return "exec"
    return "write" if error_code & PF_WRITE else "read"


def _where(frame: Frame | None) -> tuple[str | None, str | None, str]:
    """(function, file:line, the words ``in f (file:line)``) of the crashing frame."""
    if frame is None:
        return None, None, "in unknown code"
    location = None if frame.file is None or frame.line is None else \
        f"{posixpath.basename(frame.file)}:{frame.line}"
    name = frame.function or f"{frame.pc:#x}"
    return frame.function, location, f"in {escape(name)}" + (f" ({location})" if location else "")


def _crashing(trace: Backtrace, panic_functions: Collection[str]) \
        -> tuple[Trap | None, Frame | None] | None:
    """The innermost exception frame that is a crash, and the frame it interrupted; else
    the outermost panic function's caller; None: this stack shows no crash."""
    frames = trace.frames
    for at, frame in enumerate(frames):
        trap = frame.trap
        if frame.method == "exception" and trap is not None and trap.vector is not None \
                and trap.vector < FIRST_INTERRUPT and trap.vector not in NOT_CRASHES:
            return trap, frames[at + 1] if at + 1 < len(frames) else None
    panics = [at for at, frame in enumerate(frames) if frame.function in panic_functions]
    if not panics:
        return None
    return None, frames[panics[-1] + 1] if panics[-1] + 1 < len(frames) else None


def _describe(trap: Trap | None, frame: Frame | None, thread: GuestThread | None, cpu: int,
              panic_words: str) -> Crash:
    function, location, where = _where(frame)
    who = f", thread {escape(thread.name)}" if thread is not None else f", vCPU {cpu}"
    fault, access = None, None
    if trap is None:
        what = panic_words
    elif trap.vector == PAGE_FAULT:
        fault = trap.cr2
        access = None if trap.error_code is None else page_fault_access(trap.error_code)
        verb = {"read": "reading", "write": "writing", "exec": "executing"}.get(access or "",
                                                                               "at")
        what = f"page fault {verb} " + ("an unknown address" if fault is None else f"{fault:#x}")
    else:
        assert trap.vector is not None
        what = EXCEPTION_WORDS.get(trap.vector) or exception_name(trap.vector)
        if trap.error_code:
            what += f" (error code {trap.error_code:#x})"
    return Crash(reason=f"{what} {where}{who}", thread_id=None if thread is None else thread.id,
                 thread_name=None if thread is None else thread.name, function=function,
                 location=location, fault_address=fault, access=access,
                 vector=None if trap is None else trap.vector,
                 error_code=None if trap is None else trap.error_code, cpu=cpu)


def find_crash(provider: ThreadProvider, panic_functions: Collection[str],
               panic_words: str = "panic") -> Crash | None:
    """The crash of a paused guest: each vCPU's thread (or the bare vCPU when it runs no
    known thread) unwound with the provider's trap-frame hook, the first vCPU whose stack
    shows an exception or a call of ``panic_functions`` (``panic_words`` names that kind
    of crash). None: no vCPU shows one (never raises for bad guest memory)."""
    from undebug.unwind import unwind

    target = provider.target
    snapshot = provider.threads()
    for cpu in range(target.cpu_count()):
        thread_id = snapshot.vcpus.get(cpu)
        thread = None if thread_id is None else snapshot.find(thread_id)
        registers = thread.registers if thread is not None else target.registers(cpu)
        trace = unwind(target.elf, target.read, registers,
                       thread.stack if thread is not None else None,
                       max_frames=MAX_CRASH_FRAMES, trap_frames=provider.trap_frame,
                       resumes_after_call=thread is not None and thread.resumes_after_call,
                       load_offset=target.load_offset, programs=target.programs)
        found = _crashing(trace, panic_functions)
        if found is not None:
            return _describe(*found, thread, cpu, panic_words)
    return None
