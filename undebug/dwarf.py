"""DWARF debug info reduced to plain data: struct/enum layouts, variable types, lines.

:mod:`undebug.elf` calls :func:`index_dwarf` once per ELF and caches the result on disk
as JSON, so everything here returns lists, dicts, strs and ints only: no pyelftools
objects survive the parse. Walking DIEs is the slow part of loading an ELF (seconds for a
big kernel), which is why it is done once and never on a debugger stop.

Only top-level DIEs of each compilation unit are indexed (where C puts named types and
globals); the first complete definition of a name wins, as in gdb's lookup.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["MAX_MEMBERS", "index_dwarf"]

MAX_DEPTH = 8  # nested struct members flattened into dotted paths, and type-name recursion
MAX_MEMBERS = 4096  # flattened members per struct; more is a corrupt or absurd type

_CV = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
       "DW_TAG_restrict_type", "DW_TAG_atomic_type")
_AGGREGATE = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
              "DW_TAG_class_type": "class"}

MemberRow = list[Any]  # [offset, size, type_name, is_pointer, array_length | None]


def _name(die: Any) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _target(die: Any) -> Any | None:
    """The DIE that DW_AT_type points at, or None (void)."""
    if "DW_AT_type" not in die.attributes:
        return None
    return die.get_DIE_from_attribute("DW_AT_type")


def _strip(die: Any | None) -> Any | None:
    """Follow typedefs and qualifiers to the type that gives the layout."""
    for _ in range(MAX_DEPTH * 4):
        if die is None or die.tag not in _CV:
            return die
        die = _target(die)
    return die


def _dims(die: Any) -> list[int]:
    """Array dimensions; 0 for a flexible array member."""
    dims: list[int] = []
    for sub in die.iter_children():
        if sub.tag != "DW_TAG_subrange_type":
            continue
        if "DW_AT_count" in sub.attributes:
            dims.append(int(sub.attributes["DW_AT_count"].value))
        elif "DW_AT_upper_bound" in sub.attributes and \
                isinstance(sub.attributes["DW_AT_upper_bound"].value, int):
            dims.append(int(sub.attributes["DW_AT_upper_bound"].value) + 1)
        else:
            dims.append(0)
    return dims or [0]


def _size(die: Any | None, depth: int = 0) -> int:
    if die is None or depth > MAX_DEPTH * 4:
        return 0
    if "DW_AT_byte_size" in die.attributes:
        return int(die.attributes["DW_AT_byte_size"].value)
    if die.tag in _CV:
        return _size(_target(die), depth + 1)
    if die.tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
        return int(die.cu["address_size"])
    if die.tag == "DW_TAG_array_type":
        count = 1
        for dim in _dims(die):
            count *= dim
        return count * _size(_target(die), depth + 1)
    return 0


def _type_name(die: Any | None, depth: int = 0) -> str:
    """A C spelling close to gdb's ``whatis``: ``uint64_t``, ``struct thread *``, ``char [32]``."""
    if die is None:
        return "void"
    if depth > MAX_DEPTH:
        return "..."
    tag, name = die.tag, _name(die)
    if tag in ("DW_TAG_base_type", "DW_TAG_typedef"):
        return name or "?"
    if tag in _AGGREGATE or tag == "DW_TAG_enumeration_type":
        kind = _AGGREGATE.get(tag, "enum")
        return f"{kind} {name}" if name else f"{kind} {{...}}"
    if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
        return f"{tag[7:-5]} {_type_name(_target(die), depth + 1)}"
    if tag == "DW_TAG_pointer_type":
        inner = _target(die)
        if inner is not None and inner.tag == "DW_TAG_subroutine_type":
            return f"{_type_name(_target(inner), depth + 1)} (*)()"
        return f"{_type_name(inner, depth + 1)} *"
    if tag == "DW_TAG_array_type":
        return _type_name(_target(die), depth + 1) + " " + "".join(f"[{d}]" for d in _dims(die))
    return name or tag.removeprefix("DW_TAG_")


def _member_offset(die: Any) -> int:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        bits = die.attributes.get("DW_AT_data_bit_offset")
        return int(bits.value) // 8 if bits is not None else 0
    if isinstance(attr.value, int):
        return attr.value
    # DWARF 2 style: an expression, in practice DW_OP_plus_uconst (0x23) ULEB128.
    ops = list(attr.value)
    if ops[:1] == [0x23]:
        result, shift = 0, 0
        for byte in ops[1:]:
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return result
    raise ValueError(f"member location expression {ops!r} is not a constant")


def _flatten(die: Any, prefix: str, base: int, depth: int, out: dict[str, MemberRow]) -> None:
    for child in die.iter_children():
        if child.tag != "DW_TAG_member" or len(out) >= MAX_MEMBERS:
            continue
        name = _name(child)
        offset = base + _member_offset(child)
        ctype = _target(child)
        real = _strip(ctype)
        if name is not None:
            is_array = real is not None and real.tag == "DW_TAG_array_type"
            out[prefix + name] = [offset, _size(ctype), _type_name(ctype),
                                  real is not None and real.tag == "DW_TAG_pointer_type",
                                  _dims(real)[0] if is_array else None]
        if real is not None and real.tag in _AGGREGATE and depth < MAX_DEPTH:
            # An anonymous struct/union member's fields are reached without a name, as in C.
            inner = prefix if name is None else f"{prefix}{name}."
            _flatten(real, inner, offset, depth + 1, out)


def _enumerators(die: Any) -> list[list[Any]]:
    return [[int(c.attributes["DW_AT_const_value"].value), _name(c) or "?"]
            for c in die.iter_children()
            if c.tag == "DW_TAG_enumerator" and "DW_AT_const_value" in c.attributes]


def _index_types(dwarf: Any) -> dict[str, Any]:
    structs: dict[str, Any] = {}
    enums: dict[str, list[list[Any]]] = {}
    variables: dict[str, str] = {}
    for cu in dwarf.iter_CUs():
        for die in cu.get_top_DIE().iter_children():
            tag, name = die.tag, _name(die)
            if "DW_AT_declaration" in die.attributes:
                continue
            if tag == "DW_TAG_typedef" and name:
                real = _strip(die)  # typedef struct {...} spinlock_t: reachable as "spinlock_t"
                if real is not None and real.tag in _AGGREGATE and name not in structs:
                    members: dict[str, MemberRow] = {}
                    _flatten(real, "", 0, 0, members)
                    structs[name] = {"size": _size(real), "members": members}
                elif real is not None and real.tag == "DW_TAG_enumeration_type":
                    enums.setdefault(name, _enumerators(real))
            elif tag in _AGGREGATE and name and name not in structs:
                members = {}
                _flatten(die, "", 0, 0, members)
                structs[name] = {"size": _size(die), "members": members}
            elif tag == "DW_TAG_enumeration_type" and name and name not in enums:
                enums[name] = _enumerators(die)
            elif tag == "DW_TAG_variable":
                # A definition after an extern declaration names neither itself nor its
                # type: both are on the declaration it points at.
                spec = die.get_DIE_from_attribute("DW_AT_specification") \
                    if "DW_AT_specification" in die.attributes else die
                name = _name(spec)
                if name and name not in variables:
                    variables[name] = _type_name(_target(spec))
    return {"structs": structs, "enums": enums, "variables": variables}


def _file_names(program: Any) -> dict[int, str]:
    """Line-program file index -> path (DWARF 5 counts files and dirs from 0, 2-4 from 1)."""
    version = program["version"]
    dirs = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
            for d in program["include_directory"]]
    names: dict[int, str] = {}
    for number, entry in enumerate(program["file_entry"], 0 if version >= 5 else 1):
        name = entry.name.decode("utf-8", "replace")
        dir_index = entry.dir_index if version >= 5 else entry.dir_index - 1
        if not os.path.isabs(name) and dir_index > 0 and dir_index < len(dirs):
            name = os.path.join(dirs[dir_index], name)
        names[number] = name
    return names


def _index_lines(dwarf: Any) -> dict[str, Any]:
    files: list[str] = []
    file_ids: dict[str, int] = {}
    rows: list[tuple[int, int, int]] = []  # (address, file id or -1 at a sequence end, line)
    for cu in dwarf.iter_CUs():
        program = dwarf.line_program_for_CU(cu)
        if program is None:
            continue
        names = _file_names(program)
        for entry in program.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                rows.append((state.address, -1, 0))
                continue
            path = names.get(state.file, "?")
            if path not in file_ids:
                file_ids[path] = len(files)
                files.append(path)
            rows.append((state.address, file_ids[path], state.line))
    # A sequence end sorts before a row starting at the same address, so that row wins.
    rows.sort(key=lambda r: (r[0], r[1] >= 0))
    return {"files": files, "address": [r[0] for r in rows], "file": [r[1] for r in rows],
            "line": [r[2] for r in rows]}


def index_dwarf(elf: Any) -> dict[str, Any] | None:
    """Types, globals and the line table of a pyelftools ``ELFFile``; None without DWARF.

    Corrupt DWARF raises whatever pyelftools raises; the caller turns it into a UsageError.
    """
    if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
        return None
    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
    return {**_index_types(dwarf), "lines": _index_lines(dwarf)}
