"""Register values as the RSP carries them: hex in the target's byte order, ``xx`` when
unavailable.

One codec for both ends of the wire: the client decodes ``g``/``p`` replies and encodes
``P`` writes (the supervisor's register writes), the gdbserver encodes ``g``/``p`` replies
and decodes ``G``/``P`` writes. Where each register sits and how wide it is comes from the
target description (:mod:`undebug.gdb.tdesc`). The only target is x86-64, little-endian.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

from undebug.gdb.packets import RspException
from undebug.gdb.tdesc import Register

__all__ = ["decode_register", "decode_registers", "encode_register",
           "encode_registers", "registers_size"]

_BYTE_ORDER: Final[Literal["little", "big"]] = "little"
_VALUE = re.compile(r"[0-9a-fA-FxX]*")


def encode_register(value: int | None, reg: Register) -> str:
    """One register in target byte order (truncated to its width), ``xx`` bytes when None."""
    if value is None:
        return "xx" * reg.size
    return (value & ((1 << (8 * reg.size)) - 1)).to_bytes(reg.size, _BYTE_ORDER).hex()


def encode_registers(values: Mapping[str, int | None], layout: tuple[Register, ...]) -> str:
    """A ``g`` reply or a ``G`` packet: every register of ``layout``, in its order (a
    register missing from ``values`` is unavailable)."""
    return "".join(encode_register(values.get(reg.name), reg) for reg in layout)


def decode_register(text: str, reg: Register) -> int | None:
    """A ``p`` reply or a ``P`` value: exactly the register's width; None when sent as
    ``xx`` (gdb's "unavailable", any ``x`` counts)."""
    if len(text) != 2 * reg.size or not _VALUE.fullmatch(text):
        raise RspException(f"register {reg.name} ({reg.size} bytes) sent as {text[:40]!r}")
    if "x" in text.lower():
        return None
    return int.from_bytes(bytes.fromhex(text), _BYTE_ORDER)


def registers_size(layout: tuple[Register, ...]) -> int:
    """Bytes of a whole ``g`` reply (``G`` packet) for ``layout``."""
    return max((reg.offset + reg.size for reg in layout), default=0)


def decode_registers(text: str, layout: tuple[Register, ...],
                     whole: bool = False) -> dict[str, int | None]:
    """Every register of ``layout`` from a ``g`` reply (or a ``G`` packet): None when sent as
    ``xx`` or cut off (a stub may send fewer than it describes); ``whole`` refuses a text
    that is not exactly as long as the layout (a ``G`` packet must set every register)."""
    if whole and len(text) != 2 * registers_size(layout):
        raise RspException(f"{len(text)} hex digits for registers that take "
                           f"{2 * registers_size(layout)}")
    out: dict[str, int | None] = {}
    for reg in layout:
        start = 2 * reg.offset
        chunk = text[start : start + 2 * reg.size]
        out[reg.name] = decode_register(chunk, reg) if len(chunk) == 2 * reg.size else None
    return out
