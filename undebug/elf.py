"""The guest's ELF file: symbols, sections, build-id, DWARF layouts and lines.

pyelftools parses the file once, on the first question, into a plain-data index (the
DWARF part comes from :mod:`undebug.dwarf`). The index is cached on disk as JSON, keyed by
the build-id and a fingerprint of the section headers (a stripped copy keeps the build-id
but not the symbols), so later debugger start-ups skip the slow DWARF walk.

The file is untrusted: a corrupt, truncated or foreign ELF, or corrupt DWARF, raises
:class:`~undebug.errors.UsageError` with a message, never a traceback. A stripped ELF
works with what is left (``has_symbols`` / ``has_dwarf`` say what that is).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from undebug.elf_headers import PT_LOAD, ElfHeaderError, note_sections, notes, program_headers
from undebug.errors import UsageError

NT_GNU_BUILD_ID = 3

__all__ = ["MAX_STRUCT_SIZE", "ElfFile", "LoadedText", "Member", "MemberNotFound", "Section", "StructLayout",
           "Symbol", "cache_dir"]

MAX_STRUCT_SIZE = 1 << 20  # larger than any struct an OS helper reads per object: corrupt DWARF
CACHE_VERSION = 3  # bump when the index format changes: old files are then ignored
_ARCH = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "aarch64",
         "EM_ARM": "arm", "EM_RISCV": "riscv"}
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # "func" or "object"
    binding: str = "global"  # "global", "weak" or "local" (a file's static)


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    size: int
    file_offset: int
    flags: int = 0  # sh_flags

    @property
    def kind(self) -> str:
        """What a loaded section holds, as a memory map names it: text, rodata, data or
        bss (by name: the index keeps no section types), from its flags."""
        if self.flags & _SHF_EXECINSTR:
            return "text"
        if not self.flags & _SHF_WRITE:
            return "rodata"
        return "bss" if self.name.startswith(".bss") else "data"


@dataclass(frozen=True)
class LoadedText:
    """An executable section the guest loads: bytes it must hold unchanged if it runs this
    ELF (what identifies an ELF without a build-id, as Unikraft's ``.dbg``)."""

    vaddr: int
    paddr: int
    offset: int  # in the file
    size: int
    sha256: str  # of its file bytes


@dataclass(frozen=True)
class Member:
    """One (possibly nested) struct member; ``offset`` counts from the outermost struct."""

    path: str
    offset: int
    size: int
    type_name: str  # as gdb's whatis spells it: "uint64_t", "struct thread *", "char [32]"
    is_pointer: bool
    array_length: int | None


class MemberNotFound(UsageError):
    """A struct has no member of that name: the guest's sources differ from what we expect."""

    def __init__(self, struct: str, path: str) -> None:
        super().__init__(f"struct {struct} has no member {path!r} in the DWARF",
                         hint="the guest was built from sources this OS's undebug support "
                         "does not know; pass the ELF it was built from (--elf)")
        self.struct, self.path = struct, path


@dataclass(frozen=True)
class StructLayout:
    """A struct's size and its members by dotted path ("ctx.rip"), from DWARF."""

    name: str
    size: int
    members: dict[str, Member]

    def member(self, path: str) -> Member:
        found = self.members.get(path)
        if found is None:
            raise MemberNotFound(self.name, path)
        return found

    def has_member(self, path: str) -> bool:
        """For OS helpers that support two guest versions: ask, never compare versions."""
        return path in self.members


def cache_dir() -> Path:
    """``$UNDEBUG_CACHE_DIR``, else ``$XDG_CACHE_HOME/undebug/elf``, else ~/.cache/undebug/elf."""
    override = os.environ.get("UNDEBUG_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "undebug" / "elf"


def _check_bounds(elf: Any, size: int) -> None:
    """pyelftools trusts header offsets; a truncated file must fail here, with a reason."""
    header = elf.header
    if header["e_shoff"] + header["e_shnum"] * header["e_shentsize"] > size:
        raise UsageError("section header table lies past the end of the file (truncated?)")
    if header["e_phoff"] + header["e_phnum"] * header["e_phentsize"] > size:
        raise UsageError("program header table lies past the end of the file (truncated?)")
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS" and \
                section["sh_offset"] + section["sh_size"] > size:
            raise UsageError(f"section {section.name} lies past the end of the file (truncated?)")


def _build_id(data: bytes) -> tuple[str | None, int | None]:
    """The GNU build-id and the virtual address of its bytes (where the guest has them):
    from a PT_NOTE, else from a note section (Unikraft's images have no PT_NOTE)."""
    segments = program_headers(data)
    for note in [*notes(data, segments), *note_sections(data)]:
        if note.type != NT_GNU_BUILD_ID or note.name != b"GNU":
            continue
        address = None
        for load in segments:
            if load.type == PT_LOAD and load.offset <= note.desc_offset < load.offset + load.filesz:
                address = load.vaddr + note.desc_offset - load.offset
        return note.desc.hex(), address
    return None, None


def _loaded_text(elf: Any, data: bytes) -> list[list[Any]]:
    """Every executable section the guest loads: [vaddr, paddr, offset, size, sha256].
    Sections, not whole segments: a read-only segment also holds data the CPU itself
    writes (the accessed bit of a GDT in .rodata)."""
    loads = [s for s in program_headers(data) if s.type == PT_LOAD]
    out: list[list[Any]] = []
    for section in elf.iter_sections():
        flags, size, offset = section["sh_flags"], section["sh_size"], section["sh_offset"]
        if section["sh_type"] != "SHT_PROGBITS" or not flags & _SHF_ALLOC or \
                not flags & _SHF_EXECINSTR or size <= 0:
            continue
        vaddr = section["sh_addr"]
        paddr = next((load.paddr + vaddr - load.vaddr for load in loads
                      if load.vaddr <= vaddr < load.vaddr + load.memsz), vaddr)
        out.append([vaddr, paddr, offset, size,
                    hashlib.sha256(data[offset : offset + size]).hexdigest()])
    return out


def _symbols(elf: Any) -> list[list[Any]]:
    from elftools.elf.sections import SymbolTableSection

    kinds = {"STT_FUNC": "func", "STT_OBJECT": "object"}
    bindings = {"STB_GLOBAL": "global", "STB_WEAK": "weak"}
    out: list[list[Any]] = []
    seen: set[str] = set()
    for section in elf.iter_sections():
        if not isinstance(section, SymbolTableSection):
            continue
        for sym in section.iter_symbols():
            kind = kinds.get(sym["st_info"]["type"])
            if kind and sym.name and sym["st_shndx"] != "SHN_UNDEF" and sym.name not in seen:
                seen.add(sym.name)  # the first (the static symtab before .dynsym) wins
                out.append([sym.name, sym["st_value"], sym["st_size"], kind,
                            bindings.get(sym["st_info"]["bind"], "local")])
    return out


def _cache_key(data: bytes) -> str | None:
    """The build-id plus a digest of the ELF and section headers (strip keeps the build-id,
    changes the latter; without a build-id, of the loaded bytes too), read with struct:
    a cache hit never imports pyelftools (~15-25 ms of every command's start-up). None
    for a file whose headers do not parse: then there is no cache entry, and
    :func:`_open` says what is wrong."""
    try:
        build_id, _ = _build_id(data)  # checks the magic, class and program headers
        end = "<" if data[5] == 1 else ">"
        if data[4] == 2:  # ELF64: e_shoff; e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            ehsize, _, _, shentsize, shnum = struct.unpack_from(end + "5H", data, 0x34)
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            ehsize, _, _, shentsize, shnum = struct.unpack_from(end + "5H", data, 0x28)
    except (ElfHeaderError, struct.error):
        return None
    digest = hashlib.sha256(data[:ehsize] + data[shoff : shoff + shnum * shentsize])
    digest.update(struct.pack("<Q", len(data)))
    if build_id is None:  # nothing names the contents: two builds may share every header
        for load in program_headers(data):
            if load.type == PT_LOAD:
                first, last = load.file_range(len(data))
                digest.update(data[first:last])
    return f"{build_id or 'no-build-id'}-{digest.hexdigest()[:16]}"


def _open(data: bytes) -> Any:
    """A pyelftools ELFFile over ``data``, checked."""
    import io

    from elftools.elf.elffile import ELFFile

    if data[:4] != b"\x7fELF":
        raise UsageError("not an ELF file (wrong magic)")
    if len(data) < 64:
        raise UsageError(f"only {len(data)} bytes, shorter than an ELF header (truncated?)")
    elf = ELFFile(io.BytesIO(data))
    _check_bounds(elf, len(data))
    return elf


def _parse(elf: Any, data: bytes) -> dict[str, Any]:
    """Everything slow, once: the index that is cached on disk."""
    from undebug.dwarf import index_dwarf

    build_id, build_id_address = _build_id(data)
    sections = [[s.name, s["sh_addr"], s["sh_size"], s["sh_offset"], s["sh_flags"]]
                for s in elf.iter_sections() if s.name]
    dwarf = index_dwarf(elf)
    machine = str(elf.header["e_machine"])
    return {"version": CACHE_VERSION, "build_id": build_id,
            "build_id_address": build_id_address, "loaded_text": _loaded_text(elf, data),
            "architecture": _ARCH.get(machine, machine.removeprefix("EM_").lower()),
            "symbols": _symbols(elf), "sections": sections, "dwarf": dwarf}


def _unversioned(name: str) -> str:
    """A symbol's name without its ELF symbol version (``clock_nanosleep@@GLIBC_2.17``,
    ``clock_nanosleep@GLIBC_2.2.5``: ``clock_nanosleep``), as gdb shows it."""
    at = name.find("@")
    return name if at <= 0 else name[:at]


class ElfFile:
    """One guest ELF, parsed on first use; every lookup after that is a dict or a bisect."""

    def __init__(self, path: Path | str, code: Path | str | None = None) -> None:
        self.path = Path(path)
        # a separate debug file's stripped twin, which has the code and the call frame
        # information (.eh_frame) the debug file keeps as NOBITS: the unwinder reads it
        self.code_path = self.path if code is None else Path(code)
        self.loaded_from_cache = False  # set by the load: tests and --verbose timing use it
        self._index: dict[str, Any] | None = None
        self._sorted: list[Symbol] = []
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._by_name: dict[str, Symbol] = {}
        self._sections: dict[str, Section] = {}
        self._text: list[tuple[int, int]] = []
        self._structs: dict[str, StructLayout] = {}
        self._key: str | None = None

    # -- loading ------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self._index is not None:
            return self._index
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read ELF {self.path}: {exc.strerror}") from None
        try:
            key = self._key = _cache_key(data)
            cache = None if key is None else cache_dir() / f"{key}.json"
            index = None if cache is None else self._read_cache(cache)
            self.loaded_from_cache = index is not None
            if index is None:  # a miss: pyelftools parses and checks the file
                index = _parse(_open(data), data)
                self._unpack(index)
                if cache is not None:
                    self._write_cache(cache, index)
        except (UsageError, ElfHeaderError) as exc:
            message = exc.message if isinstance(exc, UsageError) else str(exc)
            raise UsageError(f"ELF {self.path} is corrupt: {message}",
                             hint="pass the guest's own, complete ELF") from None
        except Exception as exc:  # pyelftools on hostile input raises anything at all
            raise UsageError(f"ELF {self.path} is corrupt or unsupported: "
                             f"{type(exc).__name__}: {exc}",
                             hint="pass the guest's own, complete ELF") from None
        self._index = index
        return index

    def derived(self, part: str, build: Callable[[], Any]) -> Any:
        """``build()`` (plain JSON data derived from this ELF, such as its decoded CFI),
        cached on disk under this ELF's cache key and ``part``: built once per ELF."""
        self._load()
        cache = None if self._key is None else cache_dir() / f"{self._key}.{part}.json"
        if cache is not None:
            with contextlib.suppress(OSError, ValueError), cache.open("rb") as f:
                return json.load(f)
        value = build()
        if cache is not None:
            self._write_cache(cache, value)
        return value

    def _read_cache(self, cache: Path) -> dict[str, Any] | None:
        try:
            with cache.open("rb") as f:
                index = json.load(f)
            if not isinstance(index, dict) or index.get("version") != CACHE_VERSION:
                return None
            self._unpack(index)  # a cache file that does not unpack is as good as none
            return index
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None

    @staticmethod
    def _write_cache(cache: Path, index: Any) -> None:
        """Best effort, atomic, private (0600): a read-only home must not break debugging."""
        import tempfile  # only on a cache miss

        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:  # mkstemp creates 0600
                    json.dump(index, f, separators=(",", ":"))
                os.replace(tmp, cache)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _unpack(self, index: dict[str, Any]) -> None:
        raw = [str(n) for n, *_ in index["symbols"]]
        symbols = [Symbol(_unversioned(str(n)), int(a), int(s), str(k), str(b))
                   for n, a, s, k, b in index["symbols"]]
        # a name as the file spells it (clock_nanosleep@@GLIBC_2.17), else without its
        # version: the default one (@@) before an older one (@), as the linker binds it
        self._by_name = dict(zip(raw, symbols, strict=True))
        for _, sym in sorted(zip(raw, symbols, strict=True), key=lambda r: "@@" not in r[0]):
            self._by_name.setdefault(sym.name, sym)
        # of aliases at one address the last is shown, as gdb picks its minimal symbol:
        # a global before a file's static, then the greatest name (nanosleep, not
        # __nanosleep; malloc, not __libc_malloc)
        self._sorted = sorted(symbols, key=lambda s: (s.address, s.kind != "func",
                                                      s.binding != "local", s.name))
        self._starts = [s.address for s in self._sorted]
        self._sections = {str(n): Section(str(n), int(a), int(s), int(o), int(f))
                          for n, a, s, o, f in index["sections"]}
        self._text = sorted((int(a), int(a) + int(s)) for _, a, s, _, flags in index["sections"]
                            if int(flags) & _SHF_ALLOC and int(flags) & _SHF_EXECINSTR)
        # A size-0 symbol (assembly without .size) covers up to the next symbol, like gdb's.
        self._ends = []
        for i, sym in enumerate(self._sorted):
            end = sym.address + sym.size
            if sym.size == 0:
                nxt = next((s.address for s in self._sorted[i + 1:] if s.address > sym.address),
                           sym.address + 1)
                end = min(nxt, self._section_end(sym.address))
            self._ends.append(end)
        self._structs = {}
        dwarf = index["dwarf"]
        if dwarf is not None and not isinstance(dwarf["lines"]["address"], list):
            raise TypeError("bad line table")

    def _section_end(self, address: int) -> int:
        for start, end in self._text:
            if start <= address < end:
                return end
        return address + 1

    # -- what the file has --------------------------------------------------------------

    @property
    def build_id(self) -> str | None:
        """Hex NT_GNU_BUILD_ID: compared with guest memory to refuse the wrong ELF."""
        return self._load()["build_id"]  # type: ignore[no-any-return]

    @property
    def build_id_address(self) -> int | None:
        """Virtual address of the build-id bytes (inside a PT_LOAD, so the guest has them)."""
        return self._load()["build_id_address"]  # type: ignore[no-any-return]

    @property
    def loaded_text(self) -> list[LoadedText]:
        """The executable sections, to compare with guest memory."""
        return [LoadedText(int(v), int(p), int(o), int(n), str(h))
                for v, p, o, n, h in self._load()["loaded_text"]]

    @property
    def architecture(self) -> str:
        """"x86_64", "aarch64", ...: the register set the unwinder must use."""
        return str(self._load()["architecture"])

    @property
    def has_symbols(self) -> bool:
        self._load()
        return bool(self._by_name)

    @property
    def has_dwarf(self) -> bool:
        return self._load()["dwarf"] is not None

    # -- symbols ------------------------------------------------------------------------

    def symbol(self, name: str) -> Symbol | None:
        self._load()
        return self._by_name.get(name)

    def symbols(self) -> list[Symbol]:
        """All function and object symbols, by address."""
        self._load()
        return list(self._sorted)

    def _containing(self, address: int, kind: str | None) -> Symbol | None:
        self._load()
        at = bisect.bisect_right(self._starts, address) - 1
        # Aliases share an address; walk back over the few that start at or before it.
        for i in range(at, max(at - 8, -1), -1):
            sym = self._sorted[i]
            if (kind is None or sym.kind == kind) and sym.address <= address < self._ends[i]:
                return sym
        return None

    def function_at(self, address: int) -> Symbol | None:
        """The function whose code contains ``address`` (bisect, no pyelftools)."""
        return self._containing(address, "func")

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff`` for an address inside a known function or object."""
        sym = self._containing(address, "func") or self._containing(address, None)
        if sym is None:
            return None
        offset = address - sym.address
        return f"{sym.name}+{offset:#x}" if offset else sym.name

    def in_text(self, address: int) -> bool:
        """True inside an executable section: a plausible pc even without a symbol."""
        self._load()
        return any(start <= address < end for start, end in self._text)

    def section(self, name: str) -> Section | None:
        self._load()
        return self._sections.get(name)

    @property
    def loaded_sections(self) -> list[Section]:
        """The sections the guest holds in memory (SHF_ALLOC, not empty), by address; not
        ``.tbss``, the size of each thread's TLS zeroes, which takes no memory of its own."""
        self._load()
        return sorted((s for s in self._sections.values() if s.flags & _SHF_ALLOC and s.size > 0
                       and not s.name.startswith(".tbss")), key=lambda s: s.address)

    # -- DWARF --------------------------------------------------------------------------

    def line_at(self, address: int) -> tuple[str, int] | None:
        """(file, line) of the instruction at ``address``, from the DWARF line program."""
        dwarf = self._load()["dwarf"]
        if dwarf is None:
            return None
        lines = dwarf["lines"]
        at = bisect.bisect_right(lines["address"], address) - 1
        if at < 0 or lines["file"][at] < 0:
            return None
        return lines["files"][lines["file"][at]], int(lines["line"][at])

    def line_address(self, file: str, line: int) -> int | None:
        """The lowest code address of ``file:line`` (or of the next line that has code,
        as gdb does); ``file`` may be a base name. None without DWARF or a match."""
        dwarf = self._load()["dwarf"]
        if dwarf is None:
            return None
        lines = dwarf["lines"]
        files = {i for i, path in enumerate(lines["files"])
                 if path == file or path.endswith("/" + file)}
        best: tuple[int, int] | None = None
        for address, index, number in zip(lines["address"], lines["file"], lines["line"],
                                           strict=True):
            if index in files and number >= line:
                key = (int(number), int(address))
                best = key if best is None or key < best else best
        return None if best is None else best[1]

    def source_path(self, file: str) -> Path | None:
        """Where the source ``file`` (a path from the line program, often relative to its
        compilation unit's directory) is on this machine, or None when it is not."""
        candidates = [Path(file)] if Path(file).is_absolute() else \
            [Path(d) / file for d in self.derived("compdirs", self._comp_dirs)]
        return next((c for c in candidates if c.is_file()), None)

    def _comp_dirs(self) -> list[str]:
        """The compilation directories (DW_AT_comp_dir) of the DWARF's units, once each."""
        import io

        from elftools.elf.elffile import ELFFile

        found: list[str] = []
        with contextlib.suppress(Exception):  # no or broken DWARF: no directories
            dwarf = ELFFile(io.BytesIO(self.path.read_bytes())).get_dwarf_info(
                relocate_dwarf_sections=False)
            for cu in dwarf.iter_CUs():
                value = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
                name = value.value.decode("utf-8", "replace") if value is not None else None
                if name and name not in found:
                    found.append(name)
        return found

    def struct(self, name: str) -> StructLayout | None:
        """The layout of ``struct name`` (or a typedef of a struct), or None without DWARF;
        a size of 0 or above :data:`MAX_STRUCT_SIZE` is a :class:`UsageError`."""
        name = name.removeprefix("struct ").removeprefix("union ").strip()
        if name in self._structs:
            return self._structs[name]
        dwarf = self._load()["dwarf"]
        raw = None if dwarf is None else dwarf["structs"].get(name)
        if raw is None:
            return None
        members = {path: Member(path, int(o), int(s), str(t), bool(p),
                                None if n is None else int(n))
                   for path, (o, s, t, p, n) in raw["members"].items()}
        size = int(raw["size"])
        if not 0 < size <= MAX_STRUCT_SIZE:
            # 0 would divide by zero (array counts), a huge size would be read from the guest.
            raise UsageError(f"struct {name} in {self.path} has an impossible size in the "
                             f"DWARF: {size} bytes (allowed: 1 .. {MAX_STRUCT_SIZE})",
                             hint="the ELF's debug info is corrupt or not the guest's: pass "
                             "the guest's own ELF")
        layout = StructLayout(name, size, members)
        self._structs[name] = layout
        return layout

    def enum(self, name: str) -> dict[int, str] | None:
        """Value -> enumerator name of ``enum name`` (or a typedef of an enum)."""
        dwarf = self._load()["dwarf"]
        raw = None if dwarf is None else dwarf["enums"].get(name.removeprefix("enum ").strip())
        return None if raw is None else {int(v): str(n) for v, n in raw}

    def variable_type(self, name: str) -> str | None:
        """The C type of global ``name`` as gdb's whatis spells it, e.g. ``struct percpu [16]``."""
        dwarf = self._load()["dwarf"]
        found = None if dwarf is None else dwarf["variables"].get(name)
        return None if found is None else str(found)


SHARED_KEPT = 4  # ELF versions kept parsed by shared_elf (a process looks at few guests)
_shared: dict[tuple[str, int, int, int, int], ElfFile] = {}
_shared_lock = threading.Lock()


def shared_elf(path: Path | str) -> ElfFile:
    """The parsed ElfFile of ``path`` as this process last loaded it, while the file is
    unchanged (device, inode, size and mtime): a reader that attaches again and again
    (the TUI, at every stop) parses the ELF's index and the unwinder its tables once,
    not at each attach. Loaded under a lock: workers attach from several threads."""
    try:
        st = os.stat(path)
    except OSError:
        return ElfFile(path)  # its load says why it cannot be read
    key = (str(Path(path).absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _shared_lock:
        elf = _shared.pop(key, None)
        if elf is None:
            elf = ElfFile(path)
            elf._load()  # a corrupt ELF raises here, and is not kept
            if len(_shared) >= SHARED_KEPT:
                del _shared[next(iter(_shared))]  # the least recently used
        _shared[key] = elf  # last: the most recently used
        return elf
