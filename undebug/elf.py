"""The guest's ELF file: symbols by name and address (pyelftools, parsed once).

The file is untrusted: a corrupt or stripped ELF gives clear errors, not tracebacks.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from undebug.errors import UsageError

__all__ = ["ElfFile", "Symbol"]


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # "func" or "object"


class ElfFile:
    """Symbols of one ELF, loaded when first asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_name: dict[str, Symbol] | None = None
        self._sorted: list[Symbol] = []
        self._starts: list[int] = []

    def _load(self) -> dict[str, Symbol]:
        if self._by_name is not None:
            return self._by_name
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        by_name: dict[str, Symbol] = {}
        try:
            with self.path.open("rb") as f:
                elf = ELFFile(f)
                for section in elf.iter_sections():
                    if not isinstance(section, SymbolTableSection):
                        continue
                    for sym in section.iter_symbols():
                        kind = {"STT_FUNC": "func", "STT_OBJECT": "object"}.get(
                            sym["st_info"]["type"])
                        if kind and sym.name and sym["st_shndx"] != "SHN_UNDEF":
                            by_name.setdefault(sym.name, Symbol(
                                sym.name, sym["st_value"], sym["st_size"], kind))
        except OSError as exc:
            raise UsageError(f"cannot read ELF {self.path}: {exc.strerror}") from None
        except (ELFError, ValueError, KeyError, IndexError) as exc:
            raise UsageError(f"ELF {self.path} is corrupt: {exc}") from None
        self._by_name = by_name
        self._sorted = sorted(by_name.values(), key=lambda s: s.address)
        self._starts = [s.address for s in self._sorted]
        return by_name

    def symbol(self, name: str) -> Symbol | None:
        return self._load().get(name)

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff`` for an address inside a known function or object."""
        self._load()
        at = bisect.bisect_right(self._starts, address) - 1
        if at < 0:
            return None
        sym = self._sorted[at]
        if address >= sym.address + max(sym.size, 1):
            return None
        offset = address - sym.address
        return f"{sym.name}+{offset:#x}" if offset else sym.name
