"""The Target seam: where a guest's bytes and registers come from, and nothing else.

Everything above this layer (OS awareness, the unwinder, the CLI) takes a :class:`Target`
and never asks whether the guest is live or a dump (drgn's ``Program`` is the model).
:class:`LiveTarget` talks to a guest's supervisor and picks the fastest path by itself:
guest RAM shared as a file and mmap'd here (undebug started QEMU), the supervisor's
physical reads (QMP ``pmemsave`` or the gdbstub) otherwise, the gdbstub for virtual reads
when there is no RAM mapping to translate into. An adopted QEMU's RAM is read in place
from its address space (``process_vm_readv``) where the supervisor could locate it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from undebug.arch.x86_64 import (
    CR4_LA57,
    PAGE_SIZE,
    TranslationError,
    translate,
)
from undebug.elf import ElfFile, LoadedText
from undebug.elf_headers import PT_LOAD, ElfHeaderError, program_headers
from undebug.errors import SessionError, UndebugError, UsageError
from undebug.session.client import SupervisorClient
from undebug.session.machine_map import DeviceRange
from undebug.session.replies import recorded_status
from undebug.session.store import SessionDir

__all__ = ["LinkMapEntry", "LiveTarget", "ReadError", "Target", "guest_elf", "open_target",
           "remembered_elf"]

MAX_RPC_READ = 16 << 20
MASK = (1 << 64) - 1
SAME_TEXT = 64  # bytes of a text page that may differ at the link address (patched code)
PATCHED_AT_RUN_TIME = 0.01  # of an ELF's text, at most, in a guest that runs that ELF
CR0_PG = 1 << 31


def open_target(spec: str, elf: Path | None = None, *, stop: bool = True,
                force: bool = False) -> Target:
    """The guest the user named, as a Target: the one place user input becomes one.

    ``spec`` is what was typed: a session name (see ``undebug ps``) or a dump bundle's
    path (:mod:`undebug.coretarget`). ``elf`` overrides the ELF the session remembers.
    """
    from undebug.coretarget import is_bundle, open_bundle

    if is_bundle(spec):
        return open_bundle(Path(spec), elf, force=force)
    return LiveTarget(SessionDir.named(spec), elf, stop=stop, force=force)


def guest_elf(spec: str, elf: Path | None = None) -> ElfFile:
    """The ELF of the guest ``spec`` without touching the guest (for symbol look-ups):
    ``elf`` if given, else the one its session (or bundle) remembers."""
    from undebug.coretarget import bundle_elf, is_bundle, read_bundle

    if is_bundle(spec):
        return bundle_elf(read_bundle(Path(spec)), elf)
    path = elf or remembered_elf(spec)
    if path is None:
        raise UsageError(f"no ELF known for guest {spec!r}", hint="pass --elf")
    return ElfFile(path)


def remembered_elf(spec: str) -> Path | None:
    """The ELF the session of guest ``spec`` remembers (its record), if any."""
    remembered = recorded_status(SessionDir.named(spec)).elf
    return None if remembered is None else Path(remembered)


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


@dataclass(frozen=True)
class LinkMapEntry:
    """One ``struct link_map`` of a program's dynamic linker, as the guest has it (the OS
    awareness reads them: :mod:`undebug.os.solib`). ``name`` is raw guest text."""

    address: int
    bias: int  # l_addr
    name: str  # l_name ("" for the program itself)
    dynamic: int  # l_ld: its PT_DYNAMIC, after its code and read-only data


def _sysroot(session: SessionDir) -> Path:
    """``run --sysroot``, else /."""
    from undebug.session.spec import SessionSpec

    try:
        return Path(SessionSpec.load(session.path).sysroot or "/")
    except (OSError, ValueError, TypeError):
        return Path("/")


class ReadError(UndebugError):
    """Guest memory that cannot be read: unmapped, outside RAM, or refused by the stub."""


class Target(ABC):
    """Memory, registers and symbols of one guest, consistent for one ``run_token``."""

    def __init__(self, elf: ElfFile, load_offset: int = 0) -> None:
        self.elf = elf
        self.load_offset = load_offset  # a KASLR slide: runtime address = ELF address + this
        self.programs: list[tuple[ElfFile, int]] = []  # a kernel's programs, and their offsets
        # position-independent programs without @ADDR, at offset 0 in ``programs`` until
        # the OS awareness finds where the guest put them (``place``)
        self.unplaced: list[ElfFile] = []
        # the programs' dynamic linkers' link_map chains (the program's own entry first),
        # matched to a host ELF in ``programs`` or not
        self.link_maps: list[LinkMapEntry] = []
        self.sysroot = Path("/")  # the host directory the libraries' paths are under
        self.warnings: list[str] = []
        # what is damaged where the bytes come from (a truncated dump): a command shows
        # what it can, then exits 2
        self.problems: list[str] = []
        self.elf_mismatch: str | None = None  # why the ELF is not the guest's (--force)

    @abstractmethod
    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest-virtual memory (raises :class:`ReadError`)."""

    @abstractmethod
    def read_physical(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory (raises :class:`ReadError`)."""

    @abstractmethod
    def registers(self, cpu: int) -> dict[str, int]:
        """The registers of vCPU ``cpu``, by gdb's names (rip, rsp, cr3, gs_base, ...)."""

    @abstractmethod
    def cpu_count(self) -> int: ...

    def machine_map(self) -> list[DeviceRange]:
        """What backs guest-physical memory (RAM, ROM, device MMIO), as the machine names
        it; [] where nobody can tell (a warning says why)."""
        return []

    @property
    @abstractmethod
    def run_token(self) -> int:
        """Changes whenever the guest may have run: caches of guest state key on it."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the guest (a live one resumes if it was running)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def moment(self) -> Iterator[None]:
        """One pass of reads (a thread walk) that may reuse what it read: registers, page
        translations, the run token. A stopped guest is one moment anyway; a running one
        (:class:`LiveTarget` with ``stop=False``) then costs one register read per pass,
        not one per memory read, and is still torn (a moving picture, not a stop)."""
        yield

    def address_of(self, name: str) -> int | None:
        """The runtime address of a kernel symbol (with the load offset), or None."""
        symbol = self.elf.symbol(name)
        return None if symbol is None else symbol.address + self.load_offset

    def library_at(self, address: int) -> str | None:
        """``libc.so.6+0x1234`` for an address in a library of ``link_maps`` (between its
        ``l_addr`` and its ``l_ld``): how a frame in a library with no host ELF is named."""
        found = max((e for e in self.link_maps if e.name and e.bias <= address < e.dynamic),
                    key=lambda e: e.bias, default=None)
        if found is None:
            return None
        return f"{found.name.rsplit('/', 1)[-1]}+{address - found.bias:#x}"

    def place(self, elf: ElfFile, offset: int) -> None:
        """Put program ``elf`` (one of ``unplaced``) at ``offset``, where the OS awareness
        found the guest had loaded it."""
        self.programs = [(e, offset if e is elf else o) for e, o in self.programs]
        self.unplaced = [e for e in self.unplaced if e is not elf]

    def read_int(self, address: int, size: int = 8, signed: bool = False) -> int:
        return int.from_bytes(self.read(address, size), "little", signed=signed)

    @property
    def modules(self) -> list[tuple[ElfFile, int]]:
        """Every ELF whose code the guest runs, with its load offset: the kernel first."""
        return [(self.elf, self.load_offset), *self.programs]

    def copy_physical(self, address: int, size: int, fd: int) -> None:
        """Write ``size`` bytes of guest-physical memory to file descriptor ``fd`` at its
        offset (a dump's bulk path: a live guest's shared RAM goes kernel to kernel)."""
        for at in range(0, size, MAX_RPC_READ):
            data = memoryview(self.read_physical(address + at, min(MAX_RPC_READ, size - at)))
            while data:
                data = data[os.write(fd, data):]

    def module_at(self, address: int) -> tuple[ElfFile, int]:
        """The ELF whose text holds runtime ``address`` (the kernel's when none does)."""
        return next(((elf, offset) for elf, offset in self.modules
                     if elf.in_text((address - offset) & MASK)), (self.elf, self.load_offset))

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff`` of a runtime address, in whichever ELF holds it."""
        elf, offset = self.module_at(address)
        return elf.symbolize((address - offset) & MASK)

    def line_at(self, address: int) -> tuple[str, int] | None:
        elf, offset = self.module_at(address)
        return elf.line_at((address - offset) & MASK)


class _Ram(ABC):
    """Guest RAM readable in place: guest-physical ``[phys, phys + length)`` is
    ``[offset, offset + length)`` of some host memory; reads never leave those regions."""

    def __init__(self, layout: list[tuple[int, int, int]]) -> None:
        self.regions = layout

    def copy(self, address: int, size: int, fd: int) -> bool:
        """``size`` bytes at ``address`` written to ``fd`` without a pass through Python,
        where this kind of RAM can; False: the caller reads them instead."""
        return False

    @abstractmethod
    def _copy(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the host memory (inside one region)."""

    def read(self, address: int, size: int) -> bytes:
        for phys, offset, length in self.regions:  # the common case: one slice, one copy
            if phys <= address and address + size <= phys + length:
                return self._copy(offset + address - phys, size)
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            for phys, offset, length in self.regions:
                if phys <= at < phys + length:
                    take = min(size - len(out), phys + length - at)
                    out += self._copy(offset + at - phys, take)
                    break
            else:
                raise ReadError(f"physical address {at:#x} is outside guest RAM")
        return bytes(out)

    def close(self) -> None:  # noqa: B027 (most kinds hold nothing to let go of)
        """Let go of the host memory."""


class _SharedRam(_Ram):
    """Guest RAM mapped read-only from the file QEMU keeps it in (undebug started QEMU)."""

    def __init__(self, fd: int, layout: list[tuple[int, int, int]]) -> None:
        super().__init__(layout)
        self.map = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self.fd = os.dup(fd)  # for sendfile: a dump copies without a pass through Python

    def copy(self, address: int, size: int, fd: int) -> bool:
        """By sendfile(2); False when the range is not in one region."""
        for phys, offset, length in self.regions:
            if phys <= address and address + size <= phys + length:
                start, done = offset + address - phys, 0
                while done < size:
                    sent = os.sendfile(fd, self.fd, start + done, size - done)
                    if sent <= 0:
                        raise ReadError(f"guest RAM at {address + done:#x} ends early")
                    done += sent
                return True
        return False

    def _copy(self, offset: int, size: int) -> bytes:
        return self.map[offset : offset + size]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class _ProcessRam(_Ram):
    """Guest RAM of an adopted QEMU, read in place from its address space with
    ``process_vm_readv`` (the regions' offsets are QEMU's host-virtual addresses, found by
    the supervisor: undebug/session/adopted_ram.py)."""

    def __init__(self, pid: int, layout: list[tuple[int, int, int]]) -> None:
        super().__init__(layout)
        from undebug.vm.process_memory import ProcessMemory  # ctypes: only when adopted

        self.memory = ProcessMemory(pid)

    def _copy(self, offset: int, size: int) -> bytes:
        try:
            return self.memory.read(offset, size)
        except OSError as exc:
            gone = " (QEMU has exited)" if exc.errno == errno.ESRCH else ""
            raise ReadError(f"cannot read QEMU's memory (pid {self.memory.pid}) at "
                            f"{offset:#x}: {exc.strerror}{gone}") from None


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
            super().__init__(ElfFile(path))
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

    def _map_ram(self, adopted: bool) -> _Ram | None:
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
            return _SharedRam(fd, layout)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def _process_ram(self) -> _ProcessRam | None:
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
        ram = _ProcessRam(found.pid, found.layout)
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
