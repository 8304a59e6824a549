"""The target's register layout: parsing ``target.xml`` and decoding ``g``/``p`` replies.

Kept apart from the client because it is pure data handling: it takes a function that
fetches an annex and never touches the connection, so it can be tested on saved XML.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from undebug.gdb.packets import RspException

__all__ = ["Register", "TargetDescription", "decode_registers", "parse_target_xml"]

_XI_INCLUDE = re.compile(r"<(/?)xi:include\b")  # QEMU omits the xmlns:xi declaration


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


def parse_target_xml(fetch: Callable[[str], bytes], annex: str = "target.xml") -> TargetDescription:
    """Build the layout from ``annex``, following ``xi:include`` through ``fetch``.

    Registers are numbered in document order (a ``regnum`` attribute restarts the count)
    and laid out in the ``g`` reply in regnum order, as gdb does.
    """
    arch: list[str] = []
    found: list[tuple[int, ET.Element, str]] = []
    next_num = 0

    def load(name: str, depth: int) -> ET.Element:
        if depth > 8:
            raise RspException("target description: xi:include nested more than 8 deep")
        text = fetch(name).decode("utf-8", "replace")
        return ET.fromstring(_XI_INCLUDE.sub(r"<\1xinclude", text))

    def visit(el: ET.Element, feature: str, depth: int) -> None:
        nonlocal next_num
        if el.tag == "feature":
            feature = el.get("name", "")
        for child in el:
            if child.tag == "architecture" and child.text:
                arch.append(child.text.strip())
            elif child.tag == "xinclude":
                visit(load(child.get("href", ""), depth + 1), feature, depth + 1)
            elif child.tag == "feature":
                visit(child, feature, depth)
            elif child.tag == "reg":
                next_num = int(child.get("regnum", next_num))
                found.append((next_num, child, feature))
                next_num += 1

    try:
        visit(load(annex, 0), "", 0)
        regs: list[Register] = []
        offset = 0
        for num, el, feature in sorted(found, key=lambda f: f[0]):
            bits = int(el.get("bitsize", "0"))
            name, kind = el.get("name", f"r{num}"), el.get("type", "int")
            regs.append(Register(name, bits, num, offset, kind, el.get("group"), feature))
            offset += (bits + 7) // 8
    except (ValueError, ET.ParseError) as e:
        raise RspException(f"malformed target description from the stub: {e}") from e
    return TargetDescription(arch[0] if arch else None, tuple(regs))


def decode_registers(g_reply: str, registers: tuple[Register, ...]) -> dict[str, int]:
    """Decode a ``g`` reply (little-endian); registers sent as ``xx`` or cut off are omitted."""
    out: dict[str, int] = {}
    for reg in registers:
        start, end = 2 * reg.offset, 2 * (reg.offset + (reg.bitsize + 7) // 8)
        text = g_reply[start:end]
        if len(text) == end - start and "x" not in text.lower():
            out[reg.name] = int.from_bytes(bytes.fromhex(text), "little")
    return out
