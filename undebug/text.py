"""Make untrusted text (guest memory, console output, names) safe for a terminal.

Guest-controlled bytes never reach a terminal raw: a hostile thread name such as
``"evil\\x1b]0;owned\\x07"`` would otherwise retitle or reprogram the user's terminal.
The escaping is unambiguous: a backslash is doubled, so the guest cannot forge an escape
(the four characters ``\\x1b`` in guest text print as ``\\\\x1b``).
"""

from __future__ import annotations

import re

__all__ = ["escape", "hexdump", "human_size"]

# Backslash (so escapes cannot be forged), C0 controls except tab, DEL, C1 controls
# (0x80-0x9f, which some terminals obey), the bytes of invalid UTF-8 (decoded as lone
# surrogates), and the Unicode controls that make text display differently from what it
# is: bidi marks, embeddings, overrides and isolates, the line and paragraph separators,
# and the byte-order mark.
_UNSAFE = re.compile("[\\\\\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e"
                     "\u2066-\u2069\ufeff\udc80-\udcff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\x1b": "\\x1b", "\x07": "\\x07"}


def _replace(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, from surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED.get(char, f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def escape(value: str | bytes, *, keep_newlines: bool = False) -> str:
    """Return ``value`` with every control character written as a visible escape.

    Bytes are decoded as UTF-8 with invalid sequences shown as ``\\xNN``. With
    ``keep_newlines`` a ``\\n`` passes through (for multi-line console text).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="surrogateescape")
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_replace, line) for line in value.split("\n"))
    return _UNSAFE.sub(_replace, value)


def hexdump(address: int, data: bytes) -> list[str]:
    """``data`` (read at ``address``) as 16-byte lines of hex and printable ASCII: guest
    bytes shown without ever reaching the terminal raw."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{address + at:016x}  {chunk.hex(' '):<47}  {text}")
    return lines


def human_size(size: int) -> str:
    """4K, 2M, 1G, 1.5G, or bytes below 1 KiB."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) or value >= 100 \
                else f"{value:.1f}{unit}"
    return f"{size}B"
