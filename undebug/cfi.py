"""The ELF's call frame information (.eh_frame and .debug_frame) as plain rows, decoded
once per ELF and cached on disk beside its index.

pyelftools parses every FDE's instructions before the first lookup: 0.20 s of a 0.38 s
``bt --all`` on a 130-thread Unikraft image, paid by every command. Decoded once into
tuples of ints and kept as JSON keyed like the ELF's own index, a later command loads
them in a few milliseconds. The file is untrusted: a corrupt FDE becomes an error string
in its place (reported by the unwinder when a pc needs it), corrupt CFI as a whole an
error for the caller, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from undebug.elf import ElfFile

__all__ = ["CfiRow", "Fde", "load_fdes"]

# Register rule kinds, decoded once from pyelftools' RegisterRule.
UNDEFINED, SAME, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION = range(6)
_KINDS = {"UNDEFINED": UNDEFINED, "SAME_VALUE": SAME, "OFFSET": OFFSET,
          "VAL_OFFSET": VAL_OFFSET, "REGISTER": REGISTER, "EXPRESSION": EXPRESSION,
          "VAL_EXPRESSION": EXPRESSION, "ARCHITECTURAL": EXPRESSION}
CACHE_PART = "cfi-1"  # bump when the rows' format changes


@dataclass(frozen=True)
class CfiRow:
    pc: int
    cfa: tuple[int, int] | None  # (register, offset); None: a DWARF expression
    rules: tuple[tuple[int, int, int], ...]  # (register, kind, argument)


@dataclass(frozen=True)
class Fde:
    start: int
    end: int
    signal: bool  # CIE augmentation "S": the caller's pc is exact, not a return address
    rows: tuple[CfiRow, ...]
    pcs: tuple[int, ...]
    error: str | None = None  # its instructions could not be decoded


def load_fdes(elf: ElfFile) -> list[Fde]:
    """Every FDE of ``elf``, sorted by start (raises ``ValueError`` for corrupt CFI)."""
    part = CACHE_PART if elf.code_path == elf.path else f"{CACHE_PART}-code"
    raw = elf.derived(part, lambda: _decode(elf))
    fdes = []
    for start, end, signal, rows, error in raw:
        table = tuple(CfiRow(int(pc), None if reg is None else (int(reg), int(off)),
                             tuple((int(r), int(k), int(a)) for r, k, a in rules))
                      for pc, reg, off, rules in rows)
        fdes.append(Fde(int(start), int(end), bool(signal), table,
                        tuple(r.pc for r in table), None if error is None else str(error)))
    fdes.sort(key=lambda f: f.start)
    return fdes


def _decode(elf: ElfFile) -> list[list[Any]]:
    """[start, end, signal, rows, error] per FDE; rows are [pc, cfa reg|None, cfa offset,
    [[reg, kind, arg], ...]]."""
    import io

    from elftools.dwarf.callframe import FDE
    from elftools.elf.elffile import ELFFile

    try:
        elffile = ELFFile(io.BytesIO(elf.code_path.read_bytes()))
        dwarf = elffile.get_dwarf_info(relocate_dwarf_sections=False)
        entries: list[Any] = []
        if dwarf.has_EH_CFI():
            entries += dwarf.EH_CFI_entries()
        if dwarf.has_CFI():
            entries += dwarf.CFI_entries()
    except Exception as exc:  # pyelftools on hostile input raises anything at all
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    out: list[list[Any]] = []
    for entry in entries:
        if not isinstance(entry, FDE):
            continue
        start, size = entry.header["initial_location"], entry.header["address_range"]
        cie = entry.cie
        augmentation = (cie.header.get("augmentation") if cie is not None else None) or b""
        rows: list[list[Any]] = []
        error = None
        try:
            for row in entry.get_decoded().table:
                cfa = row["cfa"]
                rules = [[reg, _KINDS.get(rule.type, EXPRESSION),
                          rule.arg if isinstance(rule.arg, int) else 0]
                         for reg, rule in row.items() if isinstance(reg, int)]
                rows.append([row["pc"], None if cfa.expr is not None else cfa.reg,
                             0 if cfa.expr is not None else cfa.offset, rules])
        except Exception as exc:  # corrupt CFI instructions: pyelftools raises anything
            rows, error = [], f"{type(exc).__name__}: {exc}"
        out.append([start, start + size, b"S" in augmentation, rows, error])
    return out
