"""The target's register layout, parsed from ``target.xml``.

Kept apart from the client because it is pure data handling: it takes a function that
fetches an annex and never touches the connection, so it can be tested on saved XML. The
values in that layout are encoded and decoded by :mod:`undebug.gdb.registers`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from undebug.gdb.packets import RspException

__all__ = ["Register", "TargetDescription", "fetch_target_xml", "parse_target_xml"]

_XI_INCLUDE = re.compile(r"<(/?)xi:include\b")  # QEMU omits the xmlns:xi declaration
MAX_DEPTH = 8  # xi:include nesting (QEMU's x86-64 description: 1)
MAX_FILES = 32  # files in one description (QEMU 7.2's x86-64: 2)
MAX_REGISTERS = 1024  # QEMU 7.2's x86-64: 66
MAX_REGNUM = 4096
MAX_BITSIZE = 2048  # AVX-512's zmm registers have 512


@dataclass(frozen=True)
class Register:
    """One register of the target description and where it sits in a ``g`` reply."""

    name: str
    bitsize: int
    regnum: int
    offset: int  # bytes into the g reply
    type: str
    group: str | None
    feature: str

    @property
    def size(self) -> int:
        """Bytes it takes on the wire (a bitsize that is no multiple of 8 is rounded up)."""
        return (self.bitsize + 7) // 8


@dataclass(frozen=True)
class TargetDescription:
    """The register layout the stub describes in ``target.xml``."""

    architecture: str | None
    registers: tuple[Register, ...]

    def find(self, name: str) -> Register:
        """The register called ``name``; KeyError names the ones that exist."""
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(f"no register {name!r}; known: {[r.name for r in self.registers]}")


def _parse(text: bytes) -> ET.Element:
    try:
        return ET.fromstring(_XI_INCLUDE.sub(r"<\1xinclude", text.decode("utf-8", "replace")))
    except ET.ParseError as e:
        raise RspException(f"malformed target description from the stub: {e}") from e


def fetch_target_xml(fetch: Callable[[str], bytes], annex: str = "target.xml") -> dict[str, bytes]:
    """``annex`` and every file it includes (``xi:include``), each fetched once.

    The stub is untrusted: includes nested more than MAX_DEPTH deep, or more than
    MAX_FILES files, are an error rather than an endless crawl."""
    files: dict[str, bytes] = {}

    def load(name: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RspException(f"target description: xi:include nested more than {MAX_DEPTH} deep")
        if name in files:
            return
        if len(files) >= MAX_FILES:
            raise RspException(f"target description: more than {MAX_FILES} files")
        files[name] = fetch(name)
        for el in _parse(files[name]).iter("xinclude"):
            load(el.get("href", ""), depth + 1)

    load(annex, 0)
    return files


def parse_target_xml(fetch: Callable[[str], bytes], annex: str = "target.xml") -> TargetDescription:
    """Build the layout from ``annex``, following ``xi:include`` through ``fetch``
    (see :func:`fetch_target_xml` for the bounds).

    Registers are numbered in document order (a ``regnum`` attribute restarts the count)
    and laid out in the ``g`` reply in regnum order, as gdb does.
    """
    files = fetch_target_xml(fetch, annex)
    arch: list[str] = []
    found: list[tuple[int, ET.Element, str]] = []
    next_num = 0
    includes = 0

    def visit(el: ET.Element, feature: str, depth: int) -> None:
        nonlocal next_num, includes
        if el.tag == "feature":
            feature = el.get("name", "")
        for child in el:
            if child.tag == "architecture" and child.text:
                arch.append(child.text.strip())
            elif child.tag == "xinclude":
                includes += 1
                if includes > MAX_FILES or depth >= MAX_DEPTH:
                    raise RspException(f"target description: more than {MAX_FILES} includes")
                visit(_parse(files[child.get("href", "")]), feature, depth + 1)
            elif child.tag == "feature":
                visit(child, feature, depth)
            elif child.tag == "reg":
                next_num = int(child.get("regnum", next_num))
                found.append((next_num, child, feature))
                next_num += 1
                if len(found) > MAX_REGISTERS or not 0 <= next_num <= MAX_REGNUM:
                    raise RspException(f"target description: more than {MAX_REGISTERS} "
                                       "registers, or a register number out of range")

    try:
        visit(_parse(files[annex]), "", 0)
        regs: list[Register] = []
        offset = 0
        for num, el, feature in sorted(found, key=lambda f: f[0]):
            bits = int(el.get("bitsize", "0"))
            if not 0 < bits <= MAX_BITSIZE:
                raise ValueError(f"register {el.get('name')!r} has {bits} bits")
            name, kind = el.get("name", f"r{num}"), el.get("type", "int")
            regs.append(Register(name, bits, num, offset, kind, el.get("group"), feature))
            offset += regs[-1].size
    except ValueError as e:
        raise RspException(f"malformed target description from the stub: {e}") from e
    return TargetDescription(arch[0] if arch else None, tuple(regs))

