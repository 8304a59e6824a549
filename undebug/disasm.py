"""Machine code around an address, decoded by capstone, each instruction with the source
line (from the ELF's DWARF line program) and the function it belongs to.

x86 instructions have no fixed length, so decoding backwards from a pc is guesswork: the
window starts at the start of the pc's function (when it is near) and runs forward, so
every instruction shown is one the CPU would decode. The bytes are the guest's own (a
breakpoint the supervisor planted shows as the guest sees it), read through a Target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from undebug.elf import ElfFile
from undebug.errors import UsageError

__all__ = ["Instruction", "disassemble"]

MAX_LEAD = 4096  # bytes from a function's start to the pc decoded to find the way in
MAX_INSN = 15  # the longest x86 instruction


@dataclass(frozen=True)
class Instruction:
    address: int
    size: int
    text: str  # mnemonic and operands, as capstone writes them (Intel syntax)
    where: str | None  # function+offset
    file: str | None  # the source line this instruction was compiled from
    line: int | None


def disassemble(elf: ElfFile, read: Callable[[int, int], bytes], pc: int, *, before: int = 8,
                after: int = 16, load_offset: int = 0) -> list[Instruction]:
    """Up to ``before`` instructions before ``pc`` and ``after`` from it. ``read(address,
    size)`` reads the guest (a failed read raises its own error); ``load_offset`` is the
    target's slide (runtime address = ELF address + it)."""
    import capstone

    if elf.architecture != "x86_64":
        raise UsageError(f"no disassembler for {elf.architecture}", hint="x86_64 only, for now")
    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    function = elf.function_at(pc - load_offset)
    start = pc
    if function is not None and 0 <= pc - (function.address + load_offset) <= MAX_LEAD:
        start = function.address + load_offset
    end = pc + after * MAX_INSN
    data = read(start, end - start)
    decoded = [(i.address, i.size, f"{i.mnemonic} {i.op_str}".strip())
               for i in engine.disasm(data, start)]
    if pc not in {address for address, _, _ in decoded}:  # decoded out of step: start at pc
        decoded = [(i.address, i.size, f"{i.mnemonic} {i.op_str}".strip())
                   for i in engine.disasm(data[pc - start :], pc)]
    at = next((k for k, (address, _, _) in enumerate(decoded) if address == pc), 0)
    out = []
    for address, size, text in decoded[max(0, at - before) : at + after]:
        line = elf.line_at(address - load_offset)
        out.append(Instruction(address, size, text, elf.symbolize(address - load_offset),
                               line[0] if line else None, line[1] if line else None))
    return out
