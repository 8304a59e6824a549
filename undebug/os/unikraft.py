"""Threads of Unikraft (x86_64), read through DWARF member names.

Checked against the sources of RELEASE-0.17.0 and staging (eaf6fda1, 2024-10-14; the
structures and assembly below are the same in both):

* ``uk_sched_head`` (lib/uksched/sched.c) starts the list of ``struct uk_sched``
  (``next``); each has two TAILQs of ``struct uk_thread`` linked through their
  ``thread_list`` entry: ``thread_list`` (idle, init, main and the app's threads) and
  ``exited_threads`` (waiting to be garbage-collected).
* ``struct uk_thread``: ``ctx`` (``struct ukarch_ctx {ip, sp}``), ``flags``,
  ``wakeup_time`` (ns of ``ukplat_monotonic_clock``, 0: no timeout), ``name`` (a
  pointer), ``_mem.stack`` (the stack's low end; its length is not stored).
* ``__uk_sched_thread_current[lcpu]`` (UKPLAT_PER_LCPU_DEFINE) is the thread each logical
  CPU runs; lcpu index = vCPU index (the boot CPU is 0, others start in MADT order).
* ``ukarch_ctx_switch`` (arch/x86/x86_64/ctx.S) pushes rbp, rbx, r12-r15, saves rsp in
  ``ctx.sp`` and ``.Lresume`` in ``ctx.ip``; ``.Lresume`` pops them back and returns. It
  has no CFI, so a switched-out thread's frame 0 is built here as if the switch had just
  returned: r15, r14, r13, r12, rbx, rbp at ctx.sp, the return address at ctx.sp + 48.
* Traps (plat/kvm/x86/cpu_vectors_x86_64.S): ``asm_trap_<name>`` pushes the error code
  (or 0) and the general registers, making a ``struct __regs`` at its rsp, and calls
  ``do_<name>(regs, error_code)``; 0.17's entry has signal-frame CFI in .eh_frame, but
  no vector in the block: :meth:`UnikraftProvider.trap_frame` gives it by name, and the
  registers for builds without that CFI. ``struct uk_crash_desc`` (PR #1531, merged in
  2025-10) is in neither: a crash is read from the trap frame (:mod:`undebug.os.crash`).
"""

from __future__ import annotations

from undebug.elf import ElfFile
from undebug.os.crash import Crash, find_crash
from undebug.os.heap import HeapReport
from undebug.os.provider import (
    MAX_THREADS,
    CrashStop,
    GuestThread,
    MemoryArea,
    StructValue,
    ThreadProvider,
    ThreadSnapshot,
    read_c_string,
    read_struct,
    walk_list,
)
from undebug.target import ReadError, Target
from undebug.trapframe import TrapFrame

__all__ = ["UnikraftProvider"]

# lib/uksched/include/uk/thread.h #defines: the release's values (undebug reads no DWARF macros).
UK_THREADF_RUNNABLE = 0x008
UK_THREADF_EXITED = 0x010
# .Lresume in arch/x86/x86_64/ctx.S: pop %r15, %r14, %r13, %r12, %rbx, %rbp; ret
RESUME_CODE = bytes.fromhex("415f415e415d415c5b5dc3")
SWITCH_SAVED = ("r15", "r14", "r13", "r12", "rbx", "rbp")  # from ctx.sp up, then rip
# The entry trampolines of ctx.S: _ctx_x86_call0/1/2 (xorq %rbp,%rbp when frame pointers
# are kept; pop 0, 1 or 2 arguments; ret), _ctx_x86_clearregs (starts xorq %rdi,%rdi).
XOR_RBP = bytes.fromhex("4831ed")
CALL_CODE = (bytes.fromhex("c3"), bytes.fromhex("5fc3"), bytes.fromhex("5e5fc3"))
CLEAR_CODE = bytes.fromhex("4831ff")
# STACK_SIZE: 2^CONFIG_STACK_SIZE_PAGE_ORDER pages (arch/Config.uk: default order 4); the
# configured order is not in the ELF, so a stack pointer outside this guess drops the bounds.
DEFAULT_STACK_SIZE = 4096 << 4
MAX_SCHEDULERS = 64
MASK = (1 << 64) - 1
MAX_NAME = 64
# plat/common/include/x86/traps.h: TRAP_<name> vectors of the asm_trap_<name> entries.
TRAP_VECTORS = {"divide_error": 0, "debug": 1, "nmi": 2, "int3": 3, "overflow": 4,
                "bounds": 5, "invalid_op": 6, "no_device": 7, "double_fault": 8,
                "invalid_tss": 10, "no_segment": 11, "stack_error": 12, "gp_fault": 13,
                "page_fault": 14, "coproc_error": 16, "alignment_check": 17,
                "machine_check": 18, "simd_error": 19, "virt_error": 20,
                "security_error": 21}
IRQ_BASE = 32  # cpu_irq_<n> handles vector 32 + n
REGS_SAVED = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rsp")  # struct __regs members, gdb's names
# UK_CRASH and UK_ASSERT end in ukplat_terminate(UKPLAT_CRASH) (lib/ukdebug/include/uk/
# assert.h); do_page_fault and the other handlers also end in UK_CRASH.
PANIC_FUNCTIONS = ("ukplat_terminate",)
UKPLAT_CRASH = 3  # enum ukplat_gstate (include/uk/plat/bootstrap.h), when DWARF lacks it
EXIT_NO_CRASH, EXIT_CRASH = 41, 42  # QEMU_ISA_DEBUG_EXIT_{NO_,}CRASH
# plat/kvm/x86/traps.c: per-CPU IST stacks in .bss, each symbol MAXCOUNT x its size.
EXCEPTION_STACKS = {"cpu_trap_stack": "trap stack", "cpu_crit_stack": "critical trap stack",
                    "cpu_intr_stack": "interrupt stack"}
# include/uk/plat/memory.h UKPLAT_MEMRT_*: what a boot memory region holds. FREE memory is
# what ukboot hands to the allocator (its heap).
MEMRT = {0x1: ("heap", "free memory (ukalloc's heap)"), 0x2: ("os", "reserved"),
         0x4: ("os", "kernel image"), 0x8: ("os", "initrd"), 0x10: ("os", "command line"),
         0x20: ("os", "device tree"), 0x40: ("os", "boot stack"), 0x80: ("os", "device")}
MAX_MEMREGIONS = 128


def _trap_vector(function: str) -> int | None:
    if function.startswith("asm_trap_"):
        return TRAP_VECTORS.get(function.removeprefix("asm_trap_"))
    number = function.removeprefix("cpu_irq_")
    return IRQ_BASE + int(number) if number != function and number.isdigit() else None


class UnikraftProvider(ThreadProvider):
    """Unikraft's threads (ids are their position in the walk, from 1: Unikraft has none)."""

    name = "unikraft"
    required_symbols = ("uk_sched_head", "__uk_sched_thread_current")

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._resumes: dict[int, bool] = {}  # ctx.ip -> is it .Lresume (per walk)

    def check(self) -> None:
        for struct in ("uk_sched", "uk_thread"):
            self.need_struct(struct)

    def trap_frame(self, function: str, pc: int, sp: int) -> TrapFrame | None:
        vector = _trap_vector(function)
        layout = self.target.elf.struct("__regs") if vector is not None else None
        if vector is None or layout is None:
            return None
        return TrapFrame(sp, layout, {r: r for r in REGS_SAVED if layout.has_member(r)},
                         error_code="orig_rax" if layout.has_member("orig_rax") else None,
                         vector_number=vector)

    @classmethod
    def crash_stops(cls, elf: ElfFile) -> list[CrashStop]:
        """``ukplat_terminate(UKPLAT_CRASH)``: every crash path (UK_CRASH, UK_ASSERT, the
        trap handlers) ends there, and its ``system_off`` writes isa-debug-exit 42 first
        (plat/common/x86/cpu_native.c), which ends QEMU before pvpanic."""
        states = {name: value for value, name in (elf.enum("ukplat_gstate") or {}).items()}
        crash = states.get("UKPLAT_CRASH", UKPLAT_CRASH)
        return [CrashStop("ukplat_terminate", "ukplat_terminate(UKPLAT_CRASH)", "rdi", crash)]

    @classmethod
    def exit_verdict(cls, code: int) -> tuple[bool, str] | None:
        """plat/common/x86/cpu_native.c: 42 on a crash, 41 on a halt whose ACPI power-off
        failed (main's return value is not passed on)."""
        if code == EXIT_NO_CRASH:
            return True, f"Unikraft halted (isa-debug-exit code {code}: no crash)"
        if code == EXIT_CRASH:
            return False, f"Unikraft crashed (isa-debug-exit code {code}: UKPLAT_CRASH)"
        return None

    def crash(self) -> Crash | None:
        return find_crash(self, PANIC_FUNCTIONS, "crash (UK_CRASH or UK_ASSERT)")

    def heaps(self) -> list[HeapReport]:
        from undebug.os.ukalloc import unikraft_heaps

        return unikraft_heaps(self)

    def memory_areas(self) -> list[MemoryArea]:
        """The boot memory regions (``bi_bootinfo->mrds``: the allocator's free memory,
        the kernel, the command line), the per-CPU exception stacks, and each thread's
        auxiliary stack (``_mem.auxstack``, of the default size: the configured one is
        not in the ELF)."""
        target, areas = self.target, []
        for symbol, name in EXCEPTION_STACKS.items():
            found = target.elf.symbol(symbol)
            if found is not None and found.size:
                start = found.address + target.load_offset
                areas.append(MemoryArea(start, start + found.size, "stack",
                                        f"{name} ({symbol})"))
        areas += self._boot_regions()
        for thread in self.threads().threads:
            try:
                value = read_struct(target, self.need_struct("uk_thread"), thread.address)
                aux = value.int("_mem.auxstack") \
                    if value.layout.has_member("_mem.auxstack") else 0
            except ReadError:
                continue  # the thread walk has warned about this entry
            if aux:
                areas.append(MemoryArea(aux, aux + DEFAULT_STACK_SIZE, "stack",
                                        f"auxiliary stack of {thread.name}", thread.id))
        return areas

    def _boot_regions(self) -> list[MemoryArea]:
        target = self.target
        info_at, info = target.address_of("bi_bootinfo"), target.elf.struct("ukplat_bootinfo")
        desc = target.elf.struct("ukplat_memregion_desc")
        if info_at is None or info is None or desc is None or not info.has_member("mrds.mrds"):
            return []
        try:
            pointer = target.read_int(info_at)
            if not pointer:
                return []
            value = read_struct(target, info, pointer)
            count = value.int("mrds.count", signed=False)
            if count > MAX_MEMREGIONS:
                target.warnings.append(f"bootinfo claims {count} memory regions: reading "
                                       f"{MAX_MEMREGIONS}")
                count = MAX_MEMREGIONS
            first = pointer + info.member("mrds.mrds").offset
            raw = target.read(first, count * desc.size)
        except ReadError as exc:
            target.warnings.append(f"boot memory regions unreadable: {exc.message}")
            return []
        areas = []
        for i in range(count):
            at = i * desc.size
            region = StructValue(desc, first + at, raw[at : at + desc.size])
            start, length, code = (region.int("vbase") + region.int("pg_off"),
                                   region.int("len"), region.int("type"))
            kind, name = MEMRT.get(code, ("os", f"memory region type {code:#x}"))
            if length > 0 and start + length <= 1 << 64:
                areas.append(MemoryArea(start, start + length, kind, name))
        return areas

    def _running(self, warnings: list[str]) -> dict[int, int]:
        """Thread struct address -> the vCPU running it."""
        base = self.need_symbol("__uk_sched_thread_current")
        symbol = self.target.elf.symbol("__uk_sched_thread_current")
        count = min(self.target.cpu_count(), max(1, (symbol.size if symbol else 8) // 8))
        try:
            raw = self.target.read(base, 8 * count)
        except ReadError as exc:
            warnings.append(f"__uk_sched_thread_current unreadable: {exc.message}")
            return {}
        running: dict[int, int] = {}
        for cpu in range(count):
            current = int.from_bytes(raw[8 * cpu : 8 * cpu + 8], "little")
            if current:
                running.setdefault(current, cpu)
        return running

    def _clock(self) -> int | None:
        """ns of the monotonic clock when it was last read (tscclock.c's ``time_base``,
        which every reading updates: the scheduler reads it at each switch)."""
        address = self.target.address_of("time_base")
        symbol = self.target.elf.symbol("time_base")
        if address is None or symbol is None or symbol.size != 8:
            return None
        try:
            return self.target.read_int(address)
        except ReadError:
            return None

    def walk(self) -> ThreadSnapshot:
        warnings: list[str] = []
        self._resumes.clear()
        sched_layout = self.need_struct("uk_sched")
        running = self._running(warnings)
        now = self._clock()
        threads: list[GuestThread] = []
        seen: set[int] = set()
        try:
            head = self.target.read_int(self.need_symbol("uk_sched_head"))
        except ReadError as exc:
            warnings.append(f"uk_sched_head unreadable: {exc.message}")
            head = 0
        schedulers = 0
        for value in walk_list(self.target, sched_layout, head, "next", "scheduler list",
                               warnings, limit=MAX_SCHEDULERS):
            schedulers += 1
            for queue in ("thread_list", "exited_threads"):
                for entry in walk_list(self.target, self.need_struct("uk_thread"),
                                        value.int(f"{queue}.tqh_first"), "thread_list.tqe_next",
                                        f"{queue} of scheduler {value.address:#x}", warnings,
                                        limit=MAX_THREADS - len(threads), seen=seen):
                    threads.append(self._thread(entry, len(threads) + 1, running, now,
                                                warnings))
        if not schedulers:
            warnings.append("uk_sched_head is NULL: no scheduler has started yet")
        return ThreadSnapshot.running_on(threads, self.target.cpu_count(), warnings)

    def _name(self, value: StructValue, warnings: list[str]) -> str:
        pointer = value.int("name")
        if not pointer:
            return "<unnamed>"
        try:
            name, terminated = read_c_string(self.target, pointer, MAX_NAME)
        except ReadError as exc:
            warnings.append(f"thread at {value.address:#x}: name unreadable: {exc.message}")
            return f"<name at {pointer:#x}>"
        if not terminated:
            warnings.append(f"thread at {value.address:#x}: name longer than {MAX_NAME} bytes")
        return name

    def _thread(self, value: StructValue, thread_id: int, running: dict[int, int],
                now: int | None, warnings: list[str]) -> GuestThread:
        flags = value.int("flags")
        wakeup = value.int("wakeup_time", signed=True)
        cpu = running.get(value.address)
        ip, sp = value.int("ctx.ip"), value.int("ctx.sp")
        wait_reason = None
        if flags & UK_THREADF_EXITED:
            state = "exited"
        elif cpu is not None:
            state = "running"
        elif flags & UK_THREADF_RUNNABLE:
            state = "ready"
        elif wakeup > 0:
            state, wait_reason = "sleeping", _until(wakeup, now)
        else:
            state, wait_reason = "blocked", "blocked with no timeout"
        base = value.int("_mem.stack") if value.layout.has_member("_mem.stack") else 0
        stack: tuple[int, int] | None = (base, base + DEFAULT_STACK_SIZE) if base else None
        resumes = False
        if cpu is not None:
            registers = dict(self.target.registers(cpu))
        elif state == "exited":
            registers = {"rip": ip, "rsp": sp}
        else:
            registers, resumes = self._saved(ip, sp, thread_id, warnings)
            if not resumes and state == "ready":
                wait_reason = "not started yet"
            rsp = registers["rsp"]
            if stack is not None and not stack[0] <= rsp <= stack[1]:
                warnings.append(f"thread {thread_id}: stack pointer {rsp:#x} outside "
                                f"[{stack[0]:#x}, {stack[1]:#x}) (a stack size other than "
                                f"{DEFAULT_STACK_SIZE} bytes?): unwinding it unbounded")
                stack = None
        return GuestThread(id=thread_id, name=self._name(value, warnings), state=state,
                           cpu=cpu, registers=registers, stack=stack, wait_reason=wait_reason,
                           address=value.address, resumes_after_call=resumes)

    def _saved(self, ip: int, sp: int, thread_id: int, warnings: list[str]) \
            -> tuple[dict[str, int], bool]:
        """Frame 0 of a switched-out thread, and whether ``ip`` is ``.Lresume`` (else the
        thread has not run yet: ip is its entry trampoline, sp its initial stack)."""
        resumes = self._resumes.get(ip)
        if resumes is None:  # every switched-out thread has the same ip: read it once
            try:
                resumes = self.target.read(ip, len(RESUME_CODE)) == RESUME_CODE
            except ReadError:
                resumes = False
            self._resumes[ip] = resumes
        if not resumes:
            return self._entry(ip, sp), False
        try:
            raw = self.target.read(sp, 8 * (len(SWITCH_SAVED) + 1))
        except ReadError as exc:
            warnings.append(f"thread {thread_id}: saved context at {sp:#x} unreadable: "
                            f"{exc.message}")
            return {"rip": ip, "rsp": sp}, True
        words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        registers = dict(zip(SWITCH_SAVED, words, strict=False))
        registers["rip"], registers["rsp"] = words[-1], (sp + len(raw)) & MASK
        return registers, True

    def _entry(self, ip: int, sp: int) -> dict[str, int]:
        """Frame 0 of a thread that has not run: at its entry function, as the trampoline
        ``ctx.ip`` names will enter it (arch/x86/ctx.c ukarch_ctx_init_entry*: the stack
        holds [_ctx_x86_clearregs' return,] the arguments, the entry, then 0 for "no
        caller"); told apart by their code, as they have no symbol type. Unknown code:
        ip and sp as saved."""
        for _ in range(2):  # _ctx_x86_clearregs returns into one of the call trampolines
            try:
                code = self.target.read(ip, 8)
                if code.startswith(CLEAR_CODE):
                    ip, sp = self.target.read_int(sp), (sp + 8) & MASK
                    continue
                body = code.removeprefix(XOR_RBP)
                popped = next((n for n, tail in enumerate(CALL_CODE) if body.startswith(tail)),
                              None)
                if popped is None:
                    break
                entry = self.target.read_int((sp + 8 * popped) & MASK)
                return {"rip": entry, "rsp": (sp + 8 * popped + 8) & MASK}
            except ReadError:
                break
        return {"rip": ip, "rsp": sp}


def _until(wakeup: int, now: int | None) -> str:
    """``sleeping until +12.3 ms`` from the clock's last reading, else since boot."""
    if now is None or not 0 <= wakeup - now < 1 << 62:
        return f"sleeping until {wakeup / 1e6:.1f} ms after boot"
    return f"sleeping until +{(wakeup - now) / 1e6:.1f} ms"
