"""Where Nanos put a position-independent program, and the libraries its dynamic linker
loaded: the program's load bias from the process Nanos made, its libraries from the
dynamic linker's ``link_map`` chain (:mod:`undebug.os.solib`).

Nanos (src/unix/exec.c ``load_process``) maps an ET_DYN program at ``DEFAULT_PROG_ADDR``
plus a random page-aligned offset (ASLR) and keeps a copy of the auxiliary vector it
gave the process (``struct process`` ``saved_aux``): bias = ``AT_ENTRY`` - e_entry, as
gdb's ``svr4_exec_displacement`` computes it, checked against ``AT_PHDR``. Whether the
file is what the guest runs is then checked by its build-id, or, since Nanos pages a
file in on demand and its header page may be untouched, by its text
(:func:`undebug.os.solib.check_loaded`); a doubt is a warning.
"""

from __future__ import annotations

import struct
import weakref
from typing import TYPE_CHECKING

from undebug.elf import ElfFile
from undebug.os.provider import read_struct
from undebug.os.solib import check_loaded, find_libraries, lowest_load
from undebug.target import ReadError, Target

if TYPE_CHECKING:
    from undebug.os.nanos import NanosProvider

__all__ = ["place_programs", "program_bias", "saved_aux"]

MASK = (1 << 64) - 1

# the run token at which each Target's programs were last looked at: a look that found no
# dynamic linker's chain (the program not started yet) is made again at the next stop
_LOOKED: weakref.WeakKeyDictionary[Target, int] = weakref.WeakKeyDictionary()
AT_PHDR, AT_ENTRY = 3, 9
ET_DYN = 3


def saved_aux(provider: NanosProvider) -> dict[int, int]:
    """The first process's auxiliary vector as its kernel kept a copy of it
    (``struct process`` ``saved_aux[]``, ``struct aux`` {tag, val}): tag -> value."""
    target = provider.target
    layout = target.elf.struct("process")
    if layout is None or not layout.has_member("saved_aux"):
        return {}
    for address in provider.processes(target.warnings):
        try:
            raw = read_struct(target, layout, address).bytes("saved_aux")
        except ReadError:
            continue
        pairs = struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16])
        found = {tag: value for tag, value in pairs if tag}
        if found:
            return found
    return {}


def _header(elf: ElfFile) -> tuple[int, int, int] | None:
    """(e_type, e_entry, e_phoff) of an x86-64 ELF."""
    try:
        with elf.path.open("rb") as f:
            header = f.read(64)
        kind, = struct.unpack_from("<H", header, 0x10)
        entry, phoff = struct.unpack_from("<QQ", header, 0x18)
    except (OSError, struct.error):
        return None
    return kind, entry, phoff


def program_bias(target: Target, elf: ElfFile, aux: dict[int, int]) -> tuple[int | None, str]:
    """(the load bias of ``elf`` in the guest, None when the process's auxiliary vector
    says it is not the program; what is uncertain about it, or "")."""
    fields, low = _header(elf), lowest_load(elf)
    if fields is None or low is None or AT_ENTRY not in aux:
        return None, "the kernel keeps no auxiliary vector of the process yet"
    _, entry, phoff = fields
    bias = (aux[AT_ENTRY] - entry) & MASK
    if AT_PHDR in aux and (aux[AT_PHDR] - phoff - low) & MASK != bias:
        return None, (f"the process's AT_ENTRY {aux[AT_ENTRY]:#x} and AT_PHDR "
                      f"{aux[AT_PHDR]:#x} do not fit {elf.path.name}'s entry and program "
                      "headers: it is not the program the guest runs")
    return bias, check_loaded(target, elf, bias, [])


def place_programs(provider: NanosProvider) -> None:
    """Place each of ``target.unplaced`` at the bias the process's auxiliary vector says
    (``AT_ENTRY`` - e_entry, checked against ``AT_PHDR``), then add the libraries of every
    program (``link_map``) whose host ELF matches to ``target.programs``."""
    target = provider.target
    if not target.programs or target.link_maps or _LOOKED.get(target) == target.run_token:
        return
    aux = saved_aux(provider)
    if not aux:
        return  # no process yet: the next look (a later stop) tries again
    _LOOKED[target] = target.run_token
    pcs = [t.registers.get("rip", 0) for t in provider.threads().threads]
    for elf in list(target.unplaced):
        bias, doubt = program_bias(target, elf, aux)
        if bias is None:
            target.warnings.append(f"{elf.path.name} is position-independent and its load "
                                   f"bias was not found ({doubt}): its symbols are shown at "
                                   "its link addresses (give it with --debug-elf FILE@ADDR)")
            continue
        if doubt:
            target.warnings.append(f"{elf.path.name} at load bias {bias:#x} (the process's "
                                   f"AT_ENTRY): {doubt}")
        target.place(elf, bias)
    target.unplaced = []
    # not a PIE left at 0 (its bias unknown: its PT_DYNAMIC is not where the file says)
    placed = [(e, b) for e, b in target.programs if b or (_header(e) or (ET_DYN,))[0] != ET_DYN]
    for elf, bias in placed:
        for library in find_libraries(target, elf, bias, target.warnings, pcs,
                                      target.sysroot):
            if library.elf is not None:
                target.programs.append((library.elf, library.entry.bias))
