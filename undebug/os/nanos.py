"""Nanos (NanoVMs, x86_64): the program's threads and each vCPU's kernel context, read
through DWARF member names of the kernel ELF.

Checked against nanovms/nanos master (b9c3671d, 2026):

* KASLR (src/kernel/init.c ``kaslr``): the kernel runs at ``kas_kern_offset -
  kernel_phys_offset`` from its link address (0x200000), both kept in its BSS. The
  Target finds that offset from the vCPUs' pcs (:mod:`undebug.relocation`);
  :meth:`NanosProvider.check_relocation` confirms it from the kernel's own record.
* ``processes[MAX_PROCESSES]`` (src/unix/unix.c) points to each ``struct process``;
  its ``threads`` is a ``struct rbtree`` of ``struct thread`` linked through their
  ``n`` (``struct rbnode``: ``parent_color``, ``c[2]``) and ordered by tid.
* ``struct thread`` starts with its ``struct context`` whose ``frame[]`` holds the user
  registers it last left user mode with (src/x86_64/frame.h: FRAME_RAX .. FRAME_RIP,
  FRAME_RSP = 7), ``tid``, ``name[16]`` (prctl PR_SET_NAME), ``syscall`` (the syscall
  context while it is in a system call, else 0).
* Per CPU (src/x86_64/kernel_machine.h): ``gs_base`` is the ``struct cpuinfo`` whose
  ``m.self`` points to itself; ``m.current_context`` is the context it runs: a thread's,
  a thread's syscall context, or the CPU's kernel (runloop) context.
* A fatal signal (src/unix/signal.c): ``default_signal_action(thread t, queued_signal
  qs)`` prints ``signal N received by tid T`` and ends QEMU through isa-debug-exit with
  the signal number (``halt_with_code(VM_EXIT_SIGNAL(signum))``); a clean exit is 0.
"""

from __future__ import annotations

from typing import ClassVar

from undebug.elf import ElfFile
from undebug.os.crash import Crash
from undebug.os.heap import HeapReport
from undebug.os.provider import (
    MAX_THREADS,
    PROGRAM_KIND,
    BootDefaults,
    CrashStop,
    GuestThread,
    MemoryArea,
    StructValue,
    ThreadProvider,
    ThreadSnapshot,
    read_struct,
)
from undebug.target import ReadError, Target
from undebug.text import escape
from undebug.vm.image import BootImage

__all__ = ["NanosProvider"]

MASK = (1 << 64) - 1
# src/x86_64/frame.h: the first 17 words of a context's frame[], in gdb's names.
FRAME_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                   "r10", "r11", "r12", "r13", "r14", "r15", "rip")
FRAME_EFLAGS, FRAME_FSBASE = 17, 22
KERNEL_IDS = 0x3FFF_0000  # ids of the per-CPU kernel contexts: this + vCPU (tids are smaller;
# below 2^30, where gdb (through undebug gdbserver) takes them as they are)
SIGNAL_STOP = "default_signal_action"
# src/runtime/runtime.h VM_EXIT_*: a signal's number, or these
VM_EXIT_GDB, VM_EXIT_FAULT, VM_EXIT_HALT = 0x7D, 0x7E, 0x7F
# the signals whose default action (default_signal_action's switch) ends the program:
# terminate, core dump, stop (Nanos halts for these too); the rest (SIGCHLD, SIGCONT,
# SIGURG, SIGWINCH, real-time ones) it ignores, returning
FATAL_SIGNALS = (11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 19, 20, 21, 22, 24,
                 25, 26, 27, 29, 30, 31)
SIGNALS = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
           13: "SIGPIPE", 15: "SIGTERM"}


class NanosProvider(ThreadProvider):
    """The threads of Nanos' processes (ids are tids), then one kernel context per vCPU
    that runs no program thread."""

    name = "nanos"
    required_symbols: ClassVar[tuple[str, ...]] = ("kas_kern_offset", "kernel_phys_offset",
                                                   "processes")
    relocates = True

    @classmethod
    def boot_defaults(cls, image: BootImage) -> BootDefaults | None:
        """Nanos' mkfs disk: q35 with virtio-scsi, and a virtio RNG for its entropy (on
        pc/q35 its kernel.img with -kernel triple-faults: it boots from the disk)."""
        if "nanos-tfs" not in image.file_systems:
            return None
        return BootDefaults("q35", "virtio-scsi", ("virtio-rng-pci",))

    @classmethod
    def crash_stops(cls, elf: ElfFile) -> list[CrashStop]:
        """``default_signal_action(t, qs)``: every signal without a handler gets there; for
        a fatal one it halts QEMU (isa-debug-exit) once it has printed the thread's
        context, so the stop holds only when ``qs->si.si_signo`` is fatal (SIGCHLD and
        the like return: the program runs on)."""
        label = f"{SIGNAL_STOP} (a signal without a handler)"
        layout = elf.struct("queued_signal")
        if layout is None or not layout.has_member("si.si_signo"):
            return [CrashStop(SIGNAL_STOP, label)]
        return [CrashStop(SIGNAL_STOP, label, "rsi", FATAL_SIGNALS[0],
                          layout.member("si.si_signo").offset, FATAL_SIGNALS[1:])]

    @classmethod
    def exit_verdict(cls, code: int) -> tuple[bool, str] | None:
        if code == 0:
            return True, "Nanos exited cleanly (isa-debug-exit code 0)"
        if code in (VM_EXIT_GDB, VM_EXIT_FAULT, VM_EXIT_HALT):
            what = {VM_EXIT_GDB: "for gdb", VM_EXIT_FAULT: "on a kernel fault",
                    VM_EXIT_HALT: "halted"}[code]
            return False, f"Nanos stopped {what} (isa-debug-exit code {code:#x})"
        if code < 65:
            name = SIGNALS.get(code, f"signal {code}")
            return False, f"the program was killed by {name} (Nanos exit code {code})"
        return False, f"the program exited with status {code}"

    @classmethod
    def booted(cls, target: Target) -> bool:
        """``kaslr()`` has run: ``kas_kern_offset`` is set and agrees with the Target."""
        kas, phys = target.address_of("kas_kern_offset"), target.address_of("kernel_phys_offset")
        if kas is None or phys is None:
            return False
        try:
            recorded = target.read_int(kas)
            return recorded != 0 and (recorded - target.read_int(phys)) & MASK == \
                target.load_offset
        except ReadError:
            return False

    def check(self) -> None:
        for struct in ("thread", "process", "rbtree", "rbnode", "cpuinfo"):
            self.need_struct(struct)
        self.check_relocation()

    def check_relocation(self) -> None:
        """The kernel's own record of its offset (``kas_kern_offset - kernel_phys_offset``)
        against the one the Target found; a disagreement is a warning, and the kernel's
        record wins (it is what the code runs with)."""
        target = self.target
        try:
            kas = target.read_int(self.need_symbol("kas_kern_offset"))
            phys = target.read_int(self.need_symbol("kernel_phys_offset"))
        except ReadError as exc:
            target.warnings.append(f"kas_kern_offset unreadable at load offset "
                                   f"{target.load_offset:#x} ({exc.message}): the kernel's "
                                   "symbols may be misplaced")
            return
        recorded = (kas - phys) & MASK
        if recorded != target.load_offset and kas:
            target.warnings.append(f"the kernel records load offset {recorded:#x} "
                                   f"(kas_kern_offset {kas:#x}), not {target.load_offset:#x} "
                                   "as found from the vCPUs: using the kernel's")
            target.load_offset = recorded

    # ---- walking ----

    def walk(self) -> ThreadSnapshot:
        warnings: list[str] = []
        running = self._per_cpu(warnings)
        threads: list[GuestThread] = []
        processes = self.processes(warnings)
        on_cpu: set[int] = set()
        for process in processes:
            if process:
                threads += self._process(process, running, on_cpu, warnings)
        for cpu, (context, _) in sorted(running.items()):
            if cpu not in on_cpu:
                threads.append(GuestThread(
                    id=KERNEL_IDS + cpu, name=f"kernel (vCPU {cpu})", state="running",
                    cpu=cpu, registers=dict(self.target.registers(cpu)), stack=None,
                    wait_reason=None, address=context))
        if not any(p for p in processes):
            warnings.append("no process yet: the kernel has not started the program")
        return ThreadSnapshot.running_on(threads, self.target.cpu_count(), warnings)

    def processes(self, warnings: list[str]) -> list[int]:
        """The ``struct process`` addresses in ``processes[]`` (empty slots left out)."""
        base = self.need_symbol("processes")
        symbol = self.target.elf.symbol("processes")
        count = max(1, (symbol.size if symbol else 8) // 8)
        try:
            raw = self.target.read(base, 8 * count)
        except ReadError as exc:
            warnings.append(f"processes[] unreadable: {exc.message}")
            return []
        found = (int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
        return [p for p in found if p]

    def _per_cpu(self, warnings: list[str]) -> dict[int, tuple[int, int]]:
        """vCPU -> (its current context, its cpuinfo), from gs_base (checked: ``m.self``)."""
        layout = self.need_struct("cpuinfo")
        found: dict[int, tuple[int, int]] = {}
        for cpu in range(self.target.cpu_count()):
            registers = self.target.registers(cpu)
            for base in (registers.get("gs_base", 0), registers.get("k_gs_base", 0)):
                try:
                    info = read_struct(self.target, layout, base) if base else None
                except ReadError:
                    info = None
                if info is not None and info.int("m.self") == base:
                    found[cpu] = (info.int("m.current_context"), base)
                    break
            else:
                warnings.append(f"vCPU {cpu}: no struct cpuinfo at gs_base (early boot?)")
        return found

    def _process(self, process: int, running: dict[int, tuple[int, int]], on_cpu: set[int],
                 warnings: list[str]) -> list[GuestThread]:
        try:
            value = read_struct(self.target, self.need_struct("process"), process)
            tree = read_struct(self.target, self.need_struct("rbtree"), value.int("threads"))
        except ReadError as exc:
            warnings.append(f"process at {process:#x} unreadable: {exc.message}")
            return []
        pid = value.int("pid", signed=True)
        layout = self.need_struct("thread")
        node_offset = layout.member("n").offset
        threads = []
        for node in self.in_order(tree.int("root"), min(tree.int("count"), MAX_THREADS),
                                   f"thread tree of process {pid}", warnings):
            try:
                thread = read_struct(self.target, layout, (node - node_offset) & MASK)
            except ReadError as exc:
                warnings.append(f"thread at {node - node_offset:#x}: {exc.message}")
                continue
            threads.append(self._thread(thread, running, on_cpu))
        return threads

    def in_order(self, root: int, count: int, what: str, warnings: list[str]) -> list[int]:
        """The rbnodes of a tree in order (by tid), at most ``count``; a loop or a node
        past the count ends the walk with a warning."""
        layout = self.need_struct("rbnode")
        children = layout.member("c").offset
        nodes: list[int] = []
        seen: set[int] = set()
        stack: list[int] = []
        node = root
        while (stack or node) and len(nodes) <= count:
            while node:
                if node in seen:
                    warnings.append(f"{what} loops back to {node:#x}: stopped there")
                    return nodes
                seen.add(node)
                stack.append(node)
                try:
                    node = self.target.read_int(node + children)
                except ReadError as exc:
                    warnings.append(f"{what} broken at {node:#x}: {exc.message}")
                    return nodes
            node = stack.pop()
            nodes.append(node)
            try:
                node = self.target.read_int(node + children + 8)
            except ReadError as exc:
                warnings.append(f"{what} broken at {node:#x}: {exc.message}")
                return nodes
        if len(nodes) > count:
            warnings.append(f"{what} has more nodes than its count {count}: stopped there")
            return nodes[:count]
        return nodes

    def _thread(self, value: StructValue, running: dict[int, tuple[int, int]],
                on_cpu: set[int]) -> GuestThread:
        frame = value.bytes("context.frame")
        words = [int.from_bytes(frame[i : i + 8], "little") for i in range(0, len(frame), 8)]
        registers = dict(zip(FRAME_REGISTERS, words, strict=False))
        if len(words) > FRAME_FSBASE:
            registers["eflags"], registers["fs_base"] = words[FRAME_EFLAGS], words[FRAME_FSBASE]
        syscall = value.int("syscall")
        mine = {value.address, syscall} - {0}
        cpu = next((c for c, (context, _) in running.items() if context in mine), None)
        wait = None
        if cpu is not None:
            on_cpu.add(cpu)
            state, registers = "running", dict(self.target.registers(cpu))
            if running[cpu][0] == syscall:
                wait = "in a system call"
        elif syscall:
            state, wait = "blocked", "in a system call"
        elif not registers.get("rip") and not registers.get("rsp"):
            state, wait = "ready", "never ran (no saved context)"  # Nanos' dummy_thread
        else:
            state = "ready"
        name_raw = value.bytes("name")
        name = name_raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        return GuestThread(id=value.int("tid", signed=True), name=name or "<unnamed>",
                           state=state, cpu=cpu, registers=registers, stack=None,
                           wait_reason=wait, address=value.address)

    def memory_areas(self) -> list[MemoryArea]:
        """The kernel/user split: the kernel image as a whole at its slid address (its
        sections are the memory map's own), and each program's sections where
        ``--debug-elf`` put it, as ``program`` areas: Nanos maps a program's pages on
        demand, so the parts not touched yet are unmapped, and that is no flaw."""
        target, areas = self.target, []
        sections = target.elf.loaded_sections
        if sections:
            low = min(s.address for s in sections)
            high = max(s.address + s.size for s in sections)
            areas.append(MemoryArea((low + target.load_offset) & MASK,
                                    (high + target.load_offset) & MASK, "kernel",
                                    f"Nanos kernel (linked at {low:#x})"))
        for elf, offset in target.programs:
            program = elf.code_path.name  # a library's, not its debug file's
            for section in elf.loaded_sections:
                start = section.address + offset
                areas.append(MemoryArea(start, start + section.size, PROGRAM_KIND,
                                        f"{program} {section.name}"))
        from undebug.os.nanos_user import user_areas

        return areas + user_areas(self)

    def place_programs(self) -> None:
        """A PIE program's load bias from the process Nanos made for it, and the libraries
        its dynamic linker loaded (:mod:`undebug.os.nanos_load`)."""
        from undebug.os.nanos_load import place_programs

        place_programs(self)

    def socket_fds(self) -> dict[int, int]:
        from undebug.os.nanos_user import socket_fds

        return socket_fds(self)

    def heaps(self) -> list[HeapReport]:
        from undebug.os.nanos_heap import nanos_heaps

        return nanos_heaps(self)

    # ---- crash ----

    def crash(self) -> Crash | None:
        """A vCPU at ``default_signal_action(t, qs)``: the signal, its fault address, and
        the thread's name and user pc (in the program's ELF) from ``t`` and ``qs``."""
        stop = self.target.address_of(SIGNAL_STOP)
        for cpu in range(self.target.cpu_count()):
            registers = self.target.registers(cpu)
            if stop is None or registers.get("rip") != stop:
                continue
            try:
                thread = read_struct(self.target, self.need_struct("thread"),
                                     registers.get("rdi", 0))
                signal = read_struct(self.target, self.need_struct("queued_signal"),
                                     registers.get("rsi", 0))
            except ReadError:
                return None
            return self._signal_crash(thread, signal, cpu)
        return None

    def _signal_crash(self, thread: StructValue, signal: StructValue, cpu: int) -> Crash | None:
        info = self._thread(thread, {}, set())
        number = signal.int("si.si_signo", signed=True)
        if number not in FATAL_SIGNALS:
            return None  # default_signal_action ignores it: no crash
        name = SIGNALS.get(number, f"signal {number}")
        fault = signal.int("si.sifields.sigfault.addr") if number in (7, 8, 11) else None
        pc = info.registers.get("rip", 0)
        function = self.target.symbolize(pc)
        line = self.target.line_at(pc)
        location = f"{line[0].rsplit('/', 1)[-1]}:{line[1]}" if line else None
        where = f" in {function}" + (f" ({location})" if location else "") if function else \
            f" at {pc:#x}"
        at = f" at address {fault:#x}" if fault is not None else ""
        reason = (f"{name}{at}{where}, thread {info.id} {escape(info.name)!r} "
                  f"(Nanos {SIGNAL_STOP})")
        return Crash(reason=reason, thread_id=info.id, thread_name=info.name,
                     function=function.split("+")[0] if function else None, location=location,
                     fault_address=fault, access=None, vector=None, cpu=cpu)
