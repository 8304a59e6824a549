"""A dump as a :class:`~undebug.target.Target`: memory and vCPU registers from ``core.elf``.

Everything that reads a live guest (thread walks, backtraces, ``mem``, the flight
recorder) reads a bundle the same way: virtual reads go by the cores's PT_LOAD ``p_vaddr``
(the guest's page tables at the dump, already walked), physical ones by ``p_paddr``; the
vCPUs' registers come from the ``UNDEBUG`` notes. A page inside a segment past its
``p_filesz`` is zero (a sparse dump left it out). The file is untrusted: a truncated or
tampered core gives warnings and :class:`ReadError` for what is missing, never a crash.
"""

from __future__ import annotations

import bisect
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from undebug.elf import ElfFile
from undebug.elfcore import (
    NT_UNDEBUG_INFO,
    NT_UNDEBUG_VCPU,
    OWNER_UNDEBUG,
    CoreFormatError,
    CoreSegment,
    parse_core,
)
from undebug.errors import UsageError
from undebug.session.machine_map import DeviceRange
from undebug.target import ReadError, Target
from undebug.text import escape

__all__ = ["BUNDLE_SCHEMA", "Bundle", "CoreTarget", "bundle_elf", "is_bundle", "open_bundle",
           "read_bundle"]

BUNDLE_VERSION = 1
BUNDLE_SCHEMA = f"undebug-bundle/{BUNDLE_VERSION}"  # docs/bundle.md
CORE_FILE = "core.elf"
SUMMARY_FILE = "summary.json"
MAX_DEVICES = 4096  # device ranges read back from a summary (QEMU has a few dozen)
INCOMPLETE_FILE = "INCOMPLETE"
FLIGHT_FILE = "flight-recorder.bin"
CONSOLE_FILE = "console.log"
TRACE_TAIL_FILE = "trace-tail.utrace"
QEMU_CORE_FILE = "qemu-core.elf"  # undebug dump --qemu-core: QEMU's own format
ELF_DIR = "elf"
TARGET_XML_FILE = "gdb-target.json"  # QEMU's register layout files, for undebug gdbserver
MAX_SUMMARY = 64 << 20


class _Index:
    """Segments sorted by one address (virtual or physical), found by bisection."""

    def __init__(self, segments: list[CoreSegment], physical: bool) -> None:
        self.physical = physical
        self.segments = sorted(segments, key=self._start)
        self.starts = [self._start(s) for s in self.segments]

    def _start(self, s: CoreSegment) -> int:
        return s.paddr if self.physical else s.vaddr

    def find(self, address: int) -> CoreSegment | None:
        at = bisect.bisect_right(self.starts, address) - 1
        if at < 0:
            return None
        segment = self.segments[at]
        return segment if address < self.starts[at] + segment.memsz else None


class CoreTarget(Target):
    """A guest as undebug dumped it: one moment, forever (the run token never changes)."""

    def __init__(self, core: Path, elf: ElfFile) -> None:
        super().__init__(elf)
        self.path = core
        self.bundle: Bundle | None = None
        try:
            with core.open("rb") as f:
                size = core.stat().st_size
                self._map: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) \
                    if size else None
        except FileNotFoundError:
            raise UsageError(f"{core} is missing", hint="dump again") from None
        except OSError as exc:
            raise UsageError(f"cannot read {core}: {exc.strerror}") from None
        if self._map is None:
            raise UsageError(f"{core} is empty", hint="the dump did not finish: dump again")
        try:
            parsed = parse_core(self._map, size)
        except CoreFormatError as exc:
            self._map.close()
            raise UsageError(f"{core} is not a core undebug can read: {exc}") from None
        self.problems += [f"{core.name}: {w}" for w in parsed.warnings]
        self._virtual = _Index(parsed.segments, physical=False)
        self._physical = _Index(parsed.segments, physical=True)
        self._registers: dict[int, dict[str, int]] = {}
        self.info: dict[str, object] = {}
        for note in parsed.notes:
            if note.owner != OWNER_UNDEBUG:
                continue
            payload = note.json()
            if payload is None:
                self.warnings.append(f"{core.name}: an UNDEBUG note is not JSON: ignored")
            elif note.type == NT_UNDEBUG_VCPU:
                self._vcpu(payload)
            elif note.type == NT_UNDEBUG_INFO:
                self.info = payload
        count = next(n for n in range(len(self._registers) + 1) if n not in self._registers)
        if count < len(self._registers):  # vCPUs are 0..N-1: a gap is a damaged note
            self.problems.append(f"{core.name}: vCPU notes for {sorted(self._registers)} "
                                 f"are not numbered from 0 up: only vCPUs 0..{count - 1} used")
            self._registers = {cpu: r for cpu, r in self._registers.items() if cpu < count}
        if not self._registers:
            self.problems.append(f"{core.name} has no vCPU notes (not written by undebug, or "
                                 "damaged): no registers, so no running threads")
        if not parsed.segments:
            self.warnings.append(f"{core.name} holds no memory")

    def _vcpu(self, payload: dict[str, object]) -> None:
        cpu, registers = payload.get("cpu"), payload.get("registers")
        if not isinstance(cpu, int) or not 0 <= cpu < 1024 or not isinstance(registers, dict):
            self.warnings.append(f"{self.path.name}: a malformed vCPU note: ignored")
            return
        self._registers[cpu] = {str(k): v for k, v in registers.items()
                                if isinstance(v, int) and 0 <= v < 1 << 64}

    @property
    def run_token(self) -> int:
        return 0

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def cpu_count(self) -> int:
        return len(self._registers)

    def registers(self, cpu: int) -> dict[str, int]:
        if cpu not in self._registers:
            raise UsageError(f"no vCPU {cpu} in {self.path}: it has {len(self._registers)}")
        return self._registers[cpu]

    def _read(self, index: _Index, address: int, size: int, what: str) -> bytes:
        if size < 0 or not 0 <= address <= (1 << 64) - max(size, 1):
            raise ReadError(f"cannot read {size} bytes at {address:#x}: outside the address space")
        if self._map is None:
            raise ReadError(f"{self.path} is closed")
        out, at, end = [], address, address + size
        while at < end:
            segment = index.find(at)
            if segment is None:
                raise ReadError(f"{what} {at:#x} is not in the dump {self.path.name}")
            inside = at - index._start(segment)
            take = min(end - at, segment.memsz - inside)
            stored = max(0, min(take, segment.filesz - inside))
            if stored:
                start = segment.offset + inside
                out.append(self._map[start : start + stored])
            if take > stored:
                out.append(bytes(take - stored))  # a page the sparse dump left out: zero
            at += take
        return out[0] if len(out) == 1 else b"".join(out)

    def read(self, address: int, size: int) -> bytes:
        return self._read(self._virtual, address, size, "guest-virtual")

    def read_physical(self, address: int, size: int) -> bytes:
        return self._read(self._physical, address, size, "guest-physical")

    def machine_map(self) -> list[DeviceRange]:
        """QEMU's device map as the dump recorded it (summary.json's maps.devices): a
        dump has no QEMU to ask. A summary that lies about it: [] and a warning."""
        maps = self.bundle.summary.get("maps") if self.bundle is not None else None
        raw = maps.get("devices") if isinstance(maps, dict) else None
        if not isinstance(raw, list):
            return []
        try:
            return [DeviceRange.from_json(d) for d in raw[:MAX_DEVICES]]
        except (KeyError, TypeError, ValueError, AttributeError):
            self.warnings.append("summary.json's maps.devices is malformed: no device map")
            return []


@dataclass
class Bundle:
    """A bundle as found: its summary (``{}`` when unreadable) and what is wrong with it.
    ``problems`` make every command on it exit 2 after showing what it can."""

    path: Path
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def is_bundle(spec: str) -> bool:
    """Whether ``spec`` names a bundle, not a session: a path (names hold no slash), or a
    directory with a bundle's files."""
    path = Path(spec)
    return "/" in spec or (path.is_dir() and any(
        (path / f).exists() for f in (CORE_FILE, SUMMARY_FILE, INCOMPLETE_FILE)))


def read_bundle(path: Path) -> Bundle:
    bundle = Bundle(path, {})
    if not path.is_dir():
        raise UsageError(f"{path} is not a dump bundle (not a directory)")
    incomplete = path / INCOMPLETE_FILE
    if incomplete.exists():
        text = incomplete.read_text(errors="replace")[:1000].strip()
        bundle.problems.append(escape(text) or "the bundle is marked incomplete")
    summary = path / SUMMARY_FILE
    try:
        if summary.stat().st_size > MAX_SUMMARY:
            raise ValueError(f"larger than {MAX_SUMMARY >> 20} MiB")
        value = json.loads(summary.read_bytes())
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        bundle.problems.append(f"{path} has no {SUMMARY_FILE}")
        return bundle
    except (OSError, ValueError) as exc:
        bundle.problems.append(f"{summary} is unreadable: {escape(str(exc))}")
        return bundle
    schema = value.get("schema")
    version = schema.rpartition("/")[2] if isinstance(schema, str) and \
        schema.startswith("undebug-bundle/") else ""
    if not version.isdigit():
        bundle.problems.append(f"{summary} is not an undebug bundle summary (schema "
                               f"{escape(repr(schema))})")
    elif int(version) > BUNDLE_VERSION:
        bundle.problems.append(f"{summary} has schema {escape(str(schema))}, newer than this "
                               f"undebug reads ({BUNDLE_SCHEMA}): upgrade undebug; "
                               "showing what the core holds")
    bundle.summary = value
    return bundle


def bundle_elf(bundle: Bundle, elf: Path | None) -> ElfFile:
    """``--elf``, else the copy in the bundle, else the path the dump recorded."""
    if elf is not None:
        return ElfFile(elf)
    entries = bundle.summary.get("elfs")
    entry = entries[0] if isinstance(entries, list) and entries and \
        isinstance(entries[0], dict) else {}
    candidates = [bundle.path / str(entry["copy"])] if entry.get("copy") else []
    if entry.get("path"):
        candidates.append(Path(str(entry["path"])))
    for candidate in candidates:
        if candidate.is_file():
            return ElfFile(candidate)
    named = ", ".join(escape(str(c)) for c in candidates) or "none recorded"
    raise UsageError(f"the guest's ELF is missing ({named})",
                     hint="pass it with --elf, or dump with --include-elf")


def open_bundle(path: Path, elf: Path | None = None, force: bool = False) -> CoreTarget:
    """The bundle at ``path`` as a Target; its problems are in ``target.problems``."""
    bundle = read_bundle(path)
    target = CoreTarget(path / CORE_FILE, bundle_elf(bundle, elf))
    target.problems[:0] = bundle.problems
    target.bundle = bundle
    entries = bundle.summary.get("elfs")
    recorded = target.info.get("build_id") or (
        entries[0].get("build_id") if isinstance(entries, list) and entries and
        isinstance(entries[0], dict) else None)
    if recorded is not None and recorded != target.elf.build_id:
        problem = (f"{target.elf.path} has build-id {target.elf.build_id}, the dumped guest "
                   f"had {recorded}")
        if not force:
            target.close()
            raise UsageError(problem, hint="pass the guest's own ELF with --elf, or --force")
        target.warnings.append(problem + " (--force)")
    return target
