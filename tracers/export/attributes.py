"""Span and event attributes from a record's words and its tracepoint's metadata.

Values as OpenTelemetry holds them: integers are int64 (an unsigned word past that is its
decimal string), pointers hex strings, booleans and characters as such; the source
location is ``code.file.path`` and ``code.line.number`` (semantic conventions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tracers.metadata import (
    ARG_BOOL,
    ARG_CHAR,
    ARG_POINTER,
    ARG_SIGNED,
    ARG_STRING,
    ARG_UNSIGNED,
    Tracepoint,
)

__all__ = ["INT64_MAX", "LEVELS", "AttrValue", "AttributeJson", "code_attributes",
           "plain_names", "tracepoint_args", "word_value"]

AttrValue = str | int | float | bool
LEVELS = {0: "error", 1: "warning", 2: "info", 3: "debug"}  # a log tracepoint's level
INT64_MAX = (1 << 63) - 1


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def word_value(kind: int, word: int, texts: list[bytes]) -> AttrValue:
    """An argument word as an attribute value by its declared type (OTLP integers are
    int64: an unsigned word past that is given as its decimal string)."""
    if kind == ARG_SIGNED:
        return _signed(word)
    if kind == ARG_BOOL:
        return bool(word)
    if kind == ARG_CHAR:
        return chr(word & 0xFF)
    if kind == ARG_POINTER:
        return f"{word:#x}"
    if kind == ARG_STRING:
        return texts[word].decode(errors="replace") if word < len(texts) else ""
    if kind == ARG_UNSIGNED or kind == 0:
        return word if word <= INT64_MAX else str(word)
    return f"{word:#x}"


def tracepoint_args(tp: Tracepoint, words: list[int], text: bytes) -> dict[str, AttrValue]:
    """A record's arguments by their names in the metadata."""
    texts = text.split(b"\0") if ARG_STRING in tp.arg_types else []
    out: dict[str, AttrValue] = {}
    for i in range(tp.nargs):
        name = tp.arg_names[i] if i < len(tp.arg_names) else f"arg{i}"
        kind = tp.arg_types[i] if i < len(tp.arg_types) else 0
        out[name] = word_value(kind, words[i] if i < len(words) else 0, texts)
    return out


def plain_names(tp: Tracepoint) -> tuple[str, ...] | None:
    """The argument names of a tracepoint whose arguments are all unsigned (most: their
    words are their values), else None."""
    if not all(t == ARG_UNSIGNED for t in tp.arg_types):
        return None
    return tuple(tp.arg_names[k] if k < len(tp.arg_names) else f"arg{k}"
                 for k in range(tp.nargs))


def code_attributes(tp: Tracepoint) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    if tp.file:
        out["code.file.path"] = tp.file
    if tp.line:
        out["code.line.number"] = tp.line
    return out



class AttributeJson:
    """Attributes as the JSON text of a list's items, for the file writers. A recording
    repeats the same keys and many of the same values, so their text is cached (a
    bounded number of entries); integers, which seldom repeat, are formatted into the
    cached text of their key: ``int_head(key) + str(value) + int_tail``."""

    CACHE = 1 << 16

    def __init__(self, item: Callable[[str, AttrValue], Any], int_head: Callable[[str], str],
                 int_tail: str) -> None:
        self.item, self.int_head, self.int_tail = item, int_head, int_tail
        self._heads: dict[str, str] = {}
        self._items: dict[tuple[str, AttrValue, type], str] = {}  # with the type: True == 1.0

    def text(self, attrs: dict[str, AttrValue]) -> str:
        parts = []
        for k, v in attrs.items():
            if type(v) is int:
                head = self._heads.get(k)
                if head is None:
                    if len(self._heads) >= self.CACHE:
                        self._heads.clear()
                    head = self._heads[k] = self.int_head(k)
                parts.append(f"{head}{v}{self.int_tail}")
                continue
            key = (k, v, type(v))
            item = self._items.get(key)
            if item is None:
                if len(self._items) >= self.CACHE:
                    self._items.clear()
                item = self._items[key] = json.dumps(self.item(k, v), separators=(",", ":"))
            parts.append(item)
        return ",".join(parts)
