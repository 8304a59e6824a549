"""The Target seam: where a guest's bytes and registers come from, and nothing else.

Everything above this layer (OS awareness, the unwinder, the CLI) takes a :class:`Target`
and never asks whether the guest is live or a dump (drgn's ``Program`` is the model).
:class:`LiveTarget` talks to a guest's supervisor and picks the fastest path by itself:
guest RAM shared as a file and mmap'd here (undebug started QEMU), the supervisor's
physical reads (QMP ``pmemsave`` or the gdbstub) otherwise, the gdbstub for virtual reads
when there is no RAM mapping to translate into.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from undebug.arch.x86_64 import CR4_LA57, PAGE_SIZE, TranslationError, translate
from undebug.elf import ElfFile, LoadedText
from undebug.errors import SessionError, UndebugError, UsageError
from undebug.session.client import SupervisorClient
from undebug.session.replies import recorded_status
from undebug.session.store import SessionDir

__all__ = ["LiveTarget", "ReadError", "Target", "guest_elf", "open_target", "remembered_elf"]

MAX_RPC_READ = 16 << 20
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


class ReadError(UndebugError):
    """Guest memory that cannot be read: unmapped, outside RAM, or refused by the stub."""


class Target(ABC):
    """Memory, registers and symbols of one guest, consistent for one ``run_token``."""

    def __init__(self, elf: ElfFile, load_offset: int = 0) -> None:
        self.elf = elf
        self.load_offset = load_offset  # a KASLR slide: runtime address = ELF address + this
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
        """The runtime address of a symbol (with the load offset), or None."""
        symbol = self.elf.symbol(name)
        return None if symbol is None else symbol.address + self.load_offset

    def read_int(self, address: int, size: int = 8, signed: bool = False) -> int:
        return int.from_bytes(self.read(address, size), "little", signed=signed)

    def copy_physical(self, address: int, size: int, fd: int) -> None:
        """Write ``size`` bytes of guest-physical memory to file descriptor ``fd`` at its
        offset (a dump's bulk path: a live guest's shared RAM goes kernel to kernel)."""
        for at in range(0, size, MAX_RPC_READ):
            data = memoryview(self.read_physical(address + at, min(MAX_RPC_READ, size - at)))
            while data:
                data = data[os.write(fd, data):]


class _SharedRam:
    """Guest RAM mapped read-only from the file QEMU keeps it in."""

    def __init__(self, fd: int, layout: list[tuple[int, int, int]]) -> None:
        self.map = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self.regions = layout
        self.fd = os.dup(fd)  # for sendfile: a dump copies without a pass through Python

    def copy(self, address: int, size: int, fd: int) -> bool:
        """``size`` bytes at ``address`` to ``fd`` by sendfile(2); False when the range
        is not in one region (the caller reads it instead)."""
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

    def read(self, address: int, size: int) -> bytes:
        for phys, offset, length in self.regions:  # the common case: one slice, one copy
            if phys <= address and address + size <= phys + length:
                start = offset + address - phys
                return self.map[start : start + size]
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            for phys, offset, length in self.regions:
                if phys <= at < phys + length:
                    take = min(size - len(out), phys + length - at)
                    start = offset + at - phys
                    out += self.map[start : start + take]
                    break
            else:
                raise ReadError(f"physical address {at:#x} is outside guest RAM")
        return bytes(out)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


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
            self._ram = self._map_ram()
            self._registers: dict[int, dict[str, int]] | None = None
            self._pages: dict[int, int] = {}  # virtual page -> physical page, this token
            self._check_elf(force)
        except BaseException:
            self.client.close()
            raise

    def _map_ram(self) -> _SharedRam | None:
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
        physical = self._pages.get(page)
        if physical is None:
            regs = self.registers(0)
            if not regs.get("cr0", CR0_PG) & CR0_PG:  # paging off (early boot): identity
                self._pages[page] = page
                return page
            five_level = bool(regs.get("cr4", 0) & CR4_LA57)
            try:
                t = translate(self.read_physical, regs.get("cr3", 0), page, five_level)
            except TranslationError as exc:
                raise ReadError(f"cannot read guest-virtual {exc.address:#x}: {exc.reason}") \
                    from None
            physical = t.physical
            self._pages[page] = physical
        return physical

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
