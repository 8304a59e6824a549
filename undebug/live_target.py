"""A running guest as a :class:`~undebug.target.Target`, through its supervisor.

:class:`LiveTarget` picks the fastest path by itself: guest RAM shared as a file and
mapped here (undebug started QEMU), the supervisor's physical reads (QMP ``pmemsave`` or
the gdbstub) otherwise, the gdbstub for virtual reads when there is no RAM mapping to
translate into. An adopted QEMU's RAM is read in place from its address space
(``process_vm_readv``) where the supervisor could locate it (undebug/guest_ram.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from undebug.arch.x86_64 import (
    CR4_LA57,
    PAGE_SIZE,
    TranslationError,
    translate,
)
from undebug.elf import ElfFile, LoadedText, shared_elf
from undebug.elf_headers import PT_LOAD, ElfHeaderError, program_headers
from undebug.errors import SessionError, UndebugError, UsageError
from undebug.guest_ram import GuestRam, ProcessRam, SharedRam, clip
from undebug.session.client import SupervisorClient
from undebug.session.machine_map import DeviceRange
from undebug.session.store import SessionDir
from undebug.target import MASK, MAX_RPC_READ, ReadError, Target

__all__ = ["LiveTarget"]

SAME_TEXT = 64  # bytes of a text page that may differ at the link address (patched code)
PATCHED_AT_RUN_TIME = 0.01  # of an ELF's text, at most, in a guest that runs that ELF
CR0_PG = 1 << 31


def _differing_bytes(a: bytes, b: bytes, limit: int) -> int:
    """How many bytes differ, compared 64 at a time (few blocks differ when they match);
    counting stops past ``limit`` (another build differs nearly everywhere)."""
    count = abs(len(a) - len(b))
    for at in range(0, min(len(a), len(b)), 64):
        x, y = a[at : at + 64], b[at : at + 64]
        if x != y:
            count += sum(p != q for p, q in zip(x, y, strict=False))
            if count > limit:
                break
    return count


def _programs(session: SessionDir, warnings: list[str],
              unplaced: list[ElfFile]) -> list[tuple[ElfFile, int]]:
    """The program ELFs ``run --debug-elf`` named beside the kernel's, with their load
    offsets: ``@ADDR`` (where the first loadable segment is), else 0 (a static program
    runs at its link address; a PIE one goes into ``unplaced`` too, for the OS awareness
    to find its load bias: :meth:`Target.place`)."""
    from undebug.session.spec import SessionSpec

    try:
        specs = SessionSpec.load(session.path).programs
    except (OSError, ValueError, TypeError):
        return []
    programs = []
    for spec in specs:
        path, at, address = spec.rpartition("@") if "@" in Path(spec).name else (spec, "", "")
        elf = ElfFile(path if at else spec)
        try:
            with elf.path.open("rb") as f:
                head = f.read(64 << 10)
            loads = [s.vaddr for s in program_headers(head) if s.type == PT_LOAD]
        except (OSError, ElfHeaderError) as exc:
            warnings.append(f"program ELF {elf.path}: {exc}: left out")
            continue
        offset = 0
        if at:
            offset = (int(address, 0) - min(loads, default=0)) & MASK
        elif head[16:18] == b"\x03\x00":  # ET_DYN
            unplaced.append(elf)
        programs.append((elf, offset))
    return programs


def _sysroot(session: SessionDir) -> Path:
    """``run --sysroot``, else /."""
    from undebug.session.spec import SessionSpec

    try:
        return Path(SessionSpec.load(session.path).sysroot or "/")
    except (OSError, ValueError, TypeError):
        return Path("/")


class LiveTarget(Target):
    """A running guest, through its supervisor. Holds the guest still (``freeze``) for the
    target's lifetime unless ``stop=False``, so every read sees one consistent moment."""

    def __init__(self, session: SessionDir, elf_path: Path | None = None, *, stop: bool = True,
                 force: bool = False) -> None:
        self.client = SupervisorClient(session)
        try:
            status = self.client.status()
            if status.ended:
                raise SessionError(f"guest {session.name!r} has ended",
                                   hint=f"see undebug logs {session.name}")
            path = elf_path or (Path(status.elf) if status.elf else None)
            if path is None:
                raise UsageError("no ELF known for this guest", hint="pass --elf")
            super().__init__(shared_elf(path))
            self._token = 0
            self._stopped = stop
            self._warned_torn = False
            self._in_moment = False
            if stop:
                self._token = self.client.freeze()
            self._ram = self._map_ram(status.mode == "attach")
            self._registers: dict[int, dict[str, int]] | None = None
            self._pages: dict[int, int] = {}  # virtual page -> physical page, this token
            self._tables: dict[int, bytes] = {}  # page-table pages read, this token
            self._written: list[tuple[int, int]] | None = None  # RAM's, this token
            self._written_asked = False
            self.relocation = self._relocate()
            self.programs = _programs(session, self.warnings, self.unplaced)
            self.sysroot = _sysroot(session)
            self._check_elf(force)
        except BaseException:
            self.client.close()
            raise

    def _relocate(self) -> str | None:
        """Set the load offset of a kernel that does not run at its link address (KASLR),
        from the vCPUs' pcs and its text (:mod:`undebug.relocation`); how it was found,
        or None when it runs where it was linked. Said as a warning when not found."""
        sections = sorted(self.elf.loaded_text, key=lambda s: -s.size)
        if not sections or sections[0].size < 2 * PAGE_SIZE:
            return None
        try:
            if not self.registers(0).get("cr0", CR0_PG) & CR0_PG:
                return None  # paging off: nothing is relocated yet
        except UndebugError:
            return None
        middle = sections[0].vaddr + (sections[0].size // 2 & ~(PAGE_SIZE - 1))
        with contextlib.suppress(ReadError):
            here = self.read(middle, PAGE_SIZE)
            section = sections[0]
            linked = LoadedText(middle, 0, section.offset + middle - section.vaddr, PAGE_SIZE, "")
            if _differing_bytes(here, self._file_bytes(linked), SAME_TEXT) <= SAME_TEXT:
                return None  # the common case: one page read
        from undebug.relocation import find_load_offset, kernel_text_start

        def page(address: int) -> bytes | None:
            try:
                return self.read(address, PAGE_SIZE)
            except ReadError:
                return None

        def kernel_start() -> int | None:
            regs = self.registers(0)
            if regs.get("cr4", 0) & CR4_LA57:
                return None  # 5-level tables: not walked here
            return kernel_text_start(self.read_physical, regs.get("cr3", 0))

        pcs = [self.registers(cpu).get("rip", 0) for cpu in range(self.cpu_count())]
        found = find_load_offset(self.elf, pcs, page, kernel_start)
        if found.offset is None:
            self.warnings.append(found.how)
            return found.how
        self.load_offset = found.offset
        self._pages.clear()
        return found.how

    def _map_ram(self, adopted: bool) -> GuestRam | None:
        """Guest RAM to read in place: the shared file (undebug started QEMU) or an adopted
        QEMU's address space; None (a warning for an adopted one saying why) leaves the
        supervisor's reads, the slow path."""
        if adopted:
            return self._process_ram()
        try:
            layout, fd = self.client.memory_fd()
        except SessionError:
            return None
        try:
            return SharedRam(fd, layout)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def _process_ram(self) -> ProcessRam | None:
        from undebug.vm.process_memory import ptrace_hint, start_time

        try:
            found = self.client.process_ram()
        except UndebugError as exc:  # the supervisor's reason, or an older supervisor's
            self.warnings.append(exc.message)
            return None
        if not found.layout:
            return None
        if start_time(found.pid) != found.start_time:
            self.warnings.append(f"bulk reads of guest RAM go through the supervisor (slow): "
                                 f"QEMU (pid {found.pid}) has exited or is not the one attached")
            return None
        ram = ProcessRam(found.pid, found.layout)
        try:
            ram.memory.read(found.layout[0][1], 1)
        except OSError as exc:
            self.warnings.append(f"bulk reads of guest RAM go through the supervisor (slow): "
                                 f"cannot read QEMU's memory (pid {found.pid}) from here: "
                                 f"{exc.strerror}; {ptrace_hint()}")
            return None
        return ram

    def _check_elf(self, force: bool) -> None:
        """Refuse an ELF that is not what the guest runs: every answer would be wrong. By
        its GNU build-id; an ELF without one (Unikraft's ``.dbg``) by its loaded text."""
        expected, address = self.elf.build_id, self.elf.build_id_address
        if expected is not None and address is not None:
            try:
                found = self.read(address + self.load_offset, len(expected) // 2).hex()
            except ReadError as exc:
                found = f"unreadable ({exc.message})"
            problem = None if found == expected else \
                f"build-id mismatch: {self.elf.path} has {expected}, the guest has {found}"
        else:
            problem = self._text_mismatch()
        if problem is None:
            return
        if not force:
            raise UsageError(problem, hint="pass the guest's own ELF with --elf, or --force")
        self.elf_mismatch = problem
        self.warnings.append(problem + " (--force)")

    def _text_mismatch(self) -> str | None:
        """Why the ELF's executable sections are not the guest's bytes, or None when they
        are, but for the few an OS patches as it runs: Unikraft's self-relocation and its
        AP boot trampoline (about 0.07% of its text), a GDT's accessed bits, an int3 that
        QEMU plants for a software breakpoint under KVM; a different build differs in far
        more. Read at their virtual address, or, before the guest turns paging on, at
        their physical one, where QEMU loaded them."""
        sections = self.elf.loaded_text
        if not sections:
            self.warnings.append(f"{self.elf.path} has no build-id and no executable "
                                 "section: cannot check that it is the ELF the guest runs")
            return None
        differing = 0
        limit = int(sum(s.size for s in sections) * PATCHED_AT_RUN_TIME)
        for section in sections:
            vaddr = section.vaddr + self.load_offset
            try:
                data = self.read(vaddr, section.size)
            except ReadError as exc:
                try:
                    data = self.read_physical(section.paddr, section.size)
                except ReadError:
                    return (f"{self.elf.path} does not match the guest: its text at "
                            f"{vaddr:#x} is unreadable in the guest ({exc.message})")
            if hashlib.sha256(data).hexdigest() != section.sha256:
                differing += _differing_bytes(data, self._file_bytes(section),
                                              limit - differing)
            if differing > limit:
                return (f"{self.elf.path} is not the ELF the guest runs: more than "
                        f"{limit} of the {sum(s.size for s in sections)} bytes of its text "
                        "differ from the guest's (it has no build-id; its loaded text was "
                        "compared)")
        return None

    def _file_bytes(self, section: LoadedText) -> bytes:
        try:
            with self.elf.path.open("rb") as f:
                f.seek(section.offset)
                return f.read(section.size)
        except OSError as exc:
            raise UsageError(f"cannot read ELF {self.elf.path}: {exc.strerror}") from None

    def _reading(self) -> None:
        if not self._stopped and not self._warned_torn:
            self._warned_torn = True
            self.warnings.append("the guest was not stopped (--no-stop): what is shown may be "
                                 "torn, read while it ran")

    @property
    def run_token(self) -> int:
        if not self._stopped and not self._in_moment:
            self._token += 1  # a running guest changes under us: never reuse a cache
        return self._token

    @contextlib.contextmanager
    def moment(self) -> Iterator[None]:
        if self._stopped or self._in_moment:
            yield
            return
        self._token += 1  # a new moment: no cache of the last one applies
        self._registers = None
        self._pages.clear()
        self._tables.clear()
        self._written_asked = False
        self._in_moment = True
        try:
            yield
        finally:
            self._in_moment = False

    def close(self) -> None:
        if self._ram is not None:
            self._ram.close()
        if self._stopped:
            with contextlib.suppress(SessionError):
                self.client.thaw()
        self.client.close()

    # ---- registers ----

    def cpu_count(self) -> int:
        return len(self._all_registers())

    def _all_registers(self) -> dict[int, dict[str, int]]:
        self._reading()
        if self._registers is None or not (self._stopped or self._in_moment):
            self._registers = {c.cpu: dict(c.registers) for c in self.client.read_registers()}
        return self._registers

    def registers(self, cpu: int) -> dict[str, int]:
        regs = self._all_registers()
        if cpu not in regs:
            raise UsageError(f"no vCPU {cpu}: the guest has {len(regs)}")
        return regs[cpu]

    def machine_map(self) -> list[DeviceRange]:
        try:
            return self.client.machine_map()
        except (SessionError, UsageError) as exc:  # no QMP; an older supervisor
            self.warnings.append(f"no device map: {exc.message}")
            return []

    # ---- memory ----

    def _rpc_read(self, address: int, size: int, *, physical: bool) -> bytes:
        out = bytearray()
        while len(out) < size:
            take = min(MAX_RPC_READ, size - len(out))
            try:
                out += self.client.read_memory(address + len(out), take, physical=physical)
            except SessionError as exc:
                raise ReadError(f"cannot read {size} bytes at {address:#x}: {exc.message}") \
                    from None
        return bytes(out)

    def copy_physical(self, address: int, size: int, fd: int) -> None:
        self._reading()
        try:
            if self._ram is not None and self._ram.copy(address, size, fd):
                return
        except OSError:  # sendfile refused (an old kernel, a pipe): the plain way
            pass
        super().copy_physical(address, size, fd)

    def ram_ranges(self, address: int, size: int) -> list[tuple[int, int]] | None:
        return None if self._ram is None else self._ram.pieces(address, size)

    def written_ranges(self, address: int, size: int) -> list[tuple[int, int]] | None:
        self._reading()
        if self._ram is None or sum(n for _, n in self._ram.pieces(address, size)) != size:
            return None
        if not (self._stopped or self._in_moment) or not self._written_asked:
            self._written = self._ram.written_map()  # once per moment, clipped per call
            self._written_asked = True
        return None if self._written is None else clip(self._written, address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        self._reading()
        if self._ram is not None:
            return self._ram.read(address, size)
        return self._rpc_read(address, size, physical=True)

    def _translate_page(self, page: int) -> int:
        if not (self._stopped or self._in_moment):
            self._pages.clear()
            self._tables.clear()
        physical = self._pages.get(page)
        if physical is None:
            regs = self.registers(0)
            if not regs.get("cr0", CR0_PG) & CR0_PG:  # paging off (early boot): identity
                self._pages[page] = page
                return page
            five_level = bool(regs.get("cr4", 0) & CR4_LA57)
            try:
                t = translate(self._read_table, regs.get("cr3", 0), page, five_level)
            except TranslationError as exc:
                raise ReadError(f"cannot read guest-virtual {exc.address:#x}: {exc.reason}") \
                    from None
            physical = t.physical
            self._pages[page] = physical
        return physical

    def _read_table(self, address: int, size: int) -> bytes:
        """A page-table entry, from whole table pages read once per moment: an entry read
        in place from an adopted QEMU is a system call, and a table page serves 512."""
        base = address & ~(PAGE_SIZE - 1)
        if address + size > base + PAGE_SIZE:
            return self.read_physical(address, size)
        table = self._tables.get(base)
        if table is None:
            table = self._tables[base] = self.read_physical(base, PAGE_SIZE)
        return table[address - base : address - base + size]

    def read(self, address: int, size: int) -> bytes:
        if size < 0 or not 0 <= address <= (1 << 64) - max(size, 1):
            raise ReadError(f"cannot read {size} bytes at {address:#x}: outside the address space")
        self._reading()
        if self._ram is None:
            return self._rpc_read(address, size, physical=False)
        chunks, at, end = [], address, address + size
        while at < end:  # one physical read per run of physically contiguous pages
            physical = self._translate_page(at & ~(PAGE_SIZE - 1)) + (at & (PAGE_SIZE - 1))
            run_end = min(end, (at & ~(PAGE_SIZE - 1)) + PAGE_SIZE)
            while run_end < end and self._translate_page(run_end) == physical + run_end - at:
                run_end = min(end, run_end + PAGE_SIZE)
            chunks.append(self.read_physical(physical, run_end - at))
            at = run_end
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
