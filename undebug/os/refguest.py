"""Threads of the reference unikernel (guest-stubs/refguest/).

``thread_list`` is a singly linked list of ``struct thread`` (``next``); each sleeping
thread's callee-saved registers, rsp and rip are in its ``ctx``, written by
``switch_context`` (rip points back into ``schedule()``). Each vCPU's GS base points at
its ``struct percpu`` entry, whose ``current`` is the thread it runs. An exception or
interrupt enters ``isr_common`` (isr.S), which pushes a ``struct irq_frame`` and calls
``isr_dispatch(frame)``: the trap frame the unwinder steps through. A crash is an
exception frame on a vCPU's stack, or a call of ``panic()`` (asserts and planted panics).
"""

from __future__ import annotations

from undebug.os.crash import Crash, find_crash
from undebug.os.heap import MAX_BLOCKS, HeapReport
from undebug.os.provider import (
    MAX_THREADS,
    GuestThread,
    MemoryArea,
    StructValue,
    ThreadProvider,
    ThreadSnapshot,
    read_c_string,
    read_struct,
    walk_list,
)
from undebug.target import ReadError
from undebug.trapframe import TrapFrame

__all__ = ["RefguestProvider"]

SAVED_REGISTERS = ("rip", "rsp", "rbp", "rbx", "r12", "r13", "r14", "r15")
TRAP_ENTRY = "isr_common"  # its rsp after the call to isr_dispatch is the struct irq_frame
TRAP_SAVED = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rsp")  # irq_frame members, gdb's names
MAX_STACK = 64 << 20
PAGE_SIZE = 4096
PANIC_FUNCTIONS = ("panic",)  # kernel.h: panic(fmt, ...), which ASSERT calls too
IST_STACK_SIZE = 16 << 10  # kernel.h, per CPU and IST slot (a #define: not in DWARF)
IST_NAMES = ("#DF", "#PF", "NMI")  # percpu.ist_top[0..2] (arch.c: IST1, IST2, IST3)
# mm.c's heap: blocks of `struct hblk` headers (size incl. the 16-byte header, magic),
# 16-byte granularity, at least 32 bytes; #defines, so not in DWARF.
HEAP_FREE_MAGIC, HEAP_USED_MAGIC = 0x46524545484541, 0x55534544484541
HEAP_HEADER, HEAP_MIN_BLOCK = 16, 32


class RefguestProvider(ThreadProvider):
    name = "refguest"
    required_symbols = ("thread_list", "thread_count", "percpu", "planted_counter")

    def check(self) -> None:
        for struct in ("thread", "percpu"):
            self.need_struct(struct)

    def trap_frame(self, function: str, pc: int, sp: int) -> TrapFrame | None:
        if function != TRAP_ENTRY:
            return None
        layout = self.target.elf.struct("irq_frame")
        if layout is None:
            return None
        return TrapFrame(sp, layout, {r: r for r in TRAP_SAVED if layout.has_member(r)},
                         vector="vector" if layout.has_member("vector") else None,
                         error_code="error" if layout.has_member("error") else None)

    def crash(self) -> Crash | None:
        return find_crash(self, PANIC_FUNCTIONS)

    def memory_areas(self) -> list[MemoryArea]:
        """The heap arena (``heap_base``..``heap_end``), each thread's ``guard_page`` and
        each online CPU's three IST stacks (``percpu[i].ist_top``)."""
        target, areas = self.target, []
        try:
            low, high = (target.read_int(self.need_symbol(n)) for n in ("heap_base", "heap_end"))
        except ReadError as exc:
            target.warnings.append(f"heap bounds unreadable: {exc.message}")
        else:
            if 0 < low < high:
                areas.append(MemoryArea(low, high, "heap", "heap"))
        layout = self.need_struct("thread")
        for thread in self.threads().threads if layout.has_member("guard_page") else []:
            try:
                guard = read_struct(target, layout, thread.address).int("guard_page")
            except ReadError:
                continue  # the thread walk has warned about this entry
            if guard and guard % PAGE_SIZE == 0:
                areas.append(MemoryArea(guard, guard + PAGE_SIZE, "guard",
                                        f"guard page of {thread.name}", thread.id))
        percpu = self.need_struct("percpu")
        base = self.need_symbol("percpu")
        symbol = target.elf.symbol("percpu")
        entries = (symbol.size if symbol else 0) // percpu.size
        online = min(target.read_int(self.need_symbol("cpu_count"), 4), entries)
        for cpu in range(online):
            try:
                tops = read_struct(target, percpu, base + cpu * percpu.size).bytes("ist_top")
            except ReadError as exc:
                target.warnings.append(f"percpu[{cpu}] unreadable: {exc.message}")
                continue
            for slot, name in enumerate(IST_NAMES):
                top = int.from_bytes(tops[slot * 8 : slot * 8 + 8], "little")
                if top > IST_STACK_SIZE:
                    areas.append(MemoryArea(top - IST_STACK_SIZE, top, "stack",
                                            f"{name} stack of cpu {cpu}"))
        return areas

    def heaps(self) -> list[HeapReport]:
        """mm.c's heap: ``heap_stats``, the free list (``free_list``, address order) and
        a walk of the arena block by block, each checked against the others."""
        target = self.target
        report = HeapReport("refguest first-fit heap (mm.c kmalloc)",
                            address=self.need_symbol("heap_stats"))
        stats = read_struct(target, self.need_struct("heap_stats"), report.address or 0)
        report.total, report.used, report.peak = (stats.int(m) for m in (
            "total_bytes", "used_bytes", "peak_bytes"))
        report.allocations, report.frees, report.failed = (stats.int(m) for m in (
            "alloc_count", "free_count", "failed_count"))
        report.free = report.total - report.used if report.used <= report.total else None
        lock = target.address_of("heap_lock")
        if lock is not None and target.read_int(lock, 4):
            report.warnings.append("heap_lock is held (a vCPU is inside kmalloc or kfree): "
                                   "the numbers may be torn")
        low, high = (target.read_int(self.need_symbol(n)) for n in ("heap_base", "heap_end"))
        self._walk_free_list(report, low, high)
        self._walk_arena(report, low, high)
        return [report]

    def _walk_free_list(self, report: HeapReport, low: int, high: int) -> None:
        layout = self.need_struct("hblk")
        head = self.target.read_int(self.need_symbol("free_list"))
        count = total = largest = 0
        previous, broken = 0, False
        for block in walk_list(self.target, layout, head, "next", "heap free list",
                               report.warnings, limit=MAX_BLOCKS):
            size, at = block.int("size"), block.address
            problem = "is outside the arena" if not low <= at < high or at + size > high else \
                "is not marked free" if block.int("magic") != HEAP_FREE_MAGIC else \
                f"has a bad size {size}" if size < HEAP_MIN_BLOCK or size % 16 else \
                "is out of address order" if at <= previous else None
            if problem:
                report.warnings.append(f"heap free list: block {at:#x} {problem}: stopped there")
                broken = True
                break
            count, total, largest, previous = count + 1, total + size, max(largest, size), at
            report.count_free(size)
        report.free_blocks, report.largest_free = count, largest
        if not broken and not any(w.startswith("heap free list") for w in report.warnings):
            report.walked.append("free list")
            if report.free is not None and total != report.free:
                report.warnings.append(f"the free list holds {total} bytes, heap_stats "
                                       f"says {report.free} free")

    def _walk_arena(self, report: HeapReport, low: int, high: int) -> None:
        """Every block from ``heap_base`` by its size header: free and used alike."""
        at, used, used_bytes, blocks = low, 0, 0, 0
        while at < high:
            if blocks >= MAX_BLOCKS:
                report.warnings.append(f"heap arena: more than {MAX_BLOCKS} blocks: "
                                       "stopped there")
                return
            blocks += 1
            try:
                header = self.target.read(at, HEAP_HEADER)
            except ReadError as exc:
                report.warnings.append(f"heap arena: unreadable at {at:#x}: {exc.message}")
                return
            size = int.from_bytes(header[:8], "little")
            magic = int.from_bytes(header[8:], "little")
            if size < HEAP_MIN_BLOCK or size % 16 or at + size > high or \
                    magic not in (HEAP_FREE_MAGIC, HEAP_USED_MAGIC):
                report.warnings.append(f"heap arena: bad block header at {at:#x} (size "
                                       f"{size}, magic {magic:#x}): stopped there")
                return
            if magic == HEAP_USED_MAGIC:
                used, used_bytes = used + 1, used_bytes + size
                report.count_used(size)
            at += size
        report.used_blocks = used
        report.walked.append("arena")
        if used_bytes != report.used:
            report.warnings.append(f"the arena's used blocks hold {used_bytes} bytes, "
                                   f"heap_stats says {report.used}")

    def _running(self, warnings: list[str]) -> dict[int, int]:
        """Thread struct address -> the vCPU running it, through each vCPU's GS base."""
        layout = self.need_struct("percpu")
        base = self.need_symbol("percpu")
        symbol = self.target.elf.symbol("percpu")
        count = max(1, (symbol.size if symbol else 0) // layout.size)
        running: dict[int, int] = {}
        for cpu in range(self.target.cpu_count()):
            gs = self.target.registers(cpu).get("gs_base", 0)
            index, misaligned = divmod(gs - base, layout.size)
            if misaligned or not 0 <= index < count:
                warnings.append(f"vCPU {cpu}: GS base {gs:#x} is not a percpu entry "
                                "(not brought up yet?)")
                continue
            try:
                current = read_struct(self.target, layout, gs).int("current")
            except ReadError as exc:
                warnings.append(f"vCPU {cpu}: percpu entry unreadable: {exc.message}")
                continue
            if current:
                running[current] = cpu
        return running

    def walk(self) -> ThreadSnapshot:
        warnings: list[str] = []
        layout = self.need_struct("thread")
        states = self.target.elf.enum("thread_state") or {}
        head = self.target.read_int(self.need_symbol("thread_list"))
        claimed = self.target.read_int(self.need_symbol("thread_count"), 4)
        if claimed > MAX_THREADS:
            warnings.append(f"thread_count is {claimed}, more than any real guest: "
                            f"reading at most {MAX_THREADS} threads")
        running = self._running(warnings)
        threads = [self._thread(value, states, running, warnings)
                   for value in walk_list(self.target, layout, head, "next", "thread list",
                                          warnings)]
        if len(threads) != claimed and claimed <= MAX_THREADS and not warnings:
            warnings.append(f"thread_count says {claimed}, the list holds {len(threads)}")
        return ThreadSnapshot.running_on(threads, self.target.cpu_count(), warnings)

    def _thread(self, value: StructValue, states: dict[int, str], running: dict[int, int],
                warnings: list[str]) -> GuestThread:
        raw_name = value.bytes("name")
        end = raw_name.find(b"\0")
        if end < 0:
            warnings.append(f"thread at {value.address:#x}: name is not NUL-terminated")
        name = raw_name[: end if end >= 0 else None].decode("utf-8", "backslashreplace")
        thread_id = value.int("id")
        code = value.int("state")
        state = states.get(code, "").removeprefix("THREAD_").lower() or f"unknown({code})"
        low, high = value.int("stack_lo"), value.int("stack_hi")
        stack: tuple[int, int] | None = (low, high)
        if not 0 < high - low <= MAX_STACK:
            warnings.append(f"thread {thread_id}: absurd stack bounds [{low:#x}, {high:#x})")
            stack = None
        cpu = running.get(value.address)
        if cpu is not None:
            registers = dict(self.target.registers(cpu))
        else:
            registers = {reg: value.int(f"ctx.{reg}") for reg in SAVED_REGISTERS}
            if state == "running":
                warnings.append(f"thread {thread_id} is marked running but no vCPU runs it: "
                                "showing its last saved context")
        sp = registers.get("rsp", 0)
        # On a vCPU it may be on an interrupt stack (a #PF runs on its own): bt tells.
        if cpu is None and stack is not None and not stack[0] <= sp <= stack[1]:
            warnings.append(f"thread {thread_id}: stack pointer {sp:#x} outside its stack "
                            f"[{stack[0]:#x}, {stack[1]:#x})")
        wait_reason = None
        pointer = value.int("wait_reason")
        if pointer:
            try:
                wait_reason, terminated = read_c_string(self.target, pointer, 64)
                if not terminated:
                    warnings.append(f"thread {thread_id}: wait reason is not NUL-terminated")
            except ReadError as exc:
                warnings.append(f"thread {thread_id}: wait reason unreadable: {exc.message}")
        return GuestThread(id=thread_id, name=name, state=state, cpu=cpu, registers=registers,
                           stack=stack, wait_reason=wait_reason, address=value.address,
                           last_cpu=value.int("cpu", signed=True),
                           resumes_after_call=cpu is None)  # ctx.rip: switch_context's return
