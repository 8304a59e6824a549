"""Unikraft's trace buffer in guest memory, copied out and decoded.

lib/ukdebug/trace.c (0.17): ``char uk_trace_buffer[CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE]``,
``char *uk_trace_buffer_writep`` (where the next sample goes) and ``size_t
uk_trace_buffer_free``. The buffer is linear: once a sample does not fit, tracing stops
for good (``free`` is set to 0, or stays below a header's size) and nothing counts what
is dropped after that, so "full" is all that can be said. Only ``[buffer, writep)`` is
read; a write pointer outside the buffer is reported and the whole buffer (the symbol's
size, never more) is read instead, up to where its samples stop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tracers.records import Decoded
from tracers.unikraft.metadata import BUFFER_SYMBOL, UkTracepoints, load_unikraft
from tracers.unikraft.samples import decode_samples
from undebug.errors import UndebugError, UsageError

if TYPE_CHECKING:
    from undebug.elf import Symbol
    from undebug.target import Target

__all__ = ["BufferState", "UnikraftRecording", "read_unikraft_buffer"]

WRITEP_SYMBOL = "uk_trace_buffer_writep"
FREE_SYMBOL = "uk_trace_buffer_free"
MAX_BUFFER = 256 << 20  # a larger symbol is corrupt, not a buffer worth reading


@dataclass(frozen=True)
class BufferState:
    """What the guest's buffer variables said, and how much of the buffer was read."""

    symbol: str
    address: int
    size: int  # the symbol's (CONFIG_LIBUKDEBUG_TRACE_BUFFER_SIZE)
    used: int  # bytes read: from the buffer's start to the write pointer
    free: int  # uk_trace_buffer_free
    full: bool  # tracing has stopped: a sample no longer fits
    samples: int  # decoded

    def json(self) -> dict[str, Any]:
        return {"kind": "unikraft", **asdict(self)}


@dataclass
class UnikraftRecording:
    """The decoded samples, the definitions that name them, and the buffer's state."""

    decoded: Decoded
    tracepoints: UkTracepoints
    buffer: BufferState
    warnings: list[str] = field(default_factory=list)


def _symbol(target: Target, name: str, sizes: tuple[int, ...]) -> Symbol:
    symbol = target.elf.symbol(name)
    if symbol is None:
        raise UsageError(f"{target.elf.path} has no symbol {name}: the image was not built "
                         "with CONFIG_LIBUKDEBUG_TRACEPOINTS",
                         hint="pass the image's debug ELF (IMAGE.dbg) with --elf")
    if symbol.size not in sizes and not (sizes == () and 0 < symbol.size <= MAX_BUFFER):
        raise UsageError(f"the symbol {name} in {target.elf.path} is {symbol.size} bytes: "
                         "not Unikraft's", hint="pass the image's own debug ELF")
    return symbol


def read_unikraft_buffer(target: Target) -> UnikraftRecording:
    """Copy ``[uk_trace_buffer, uk_trace_buffer_writep)`` and decode it."""
    from undebug.target import ReadError

    uk = load_unikraft(target.elf)
    buffer = _symbol(target, BUFFER_SYMBOL, ())
    writep_sym = _symbol(target, WRITEP_SYMBOL, (4, 8))
    free_sym = _symbol(target, FREE_SYMBOL, (4, 8))
    low, size = buffer.address + target.load_offset, buffer.size
    warnings = list(uk.warnings)
    try:
        writep = target.read_int(writep_sym.address + target.load_offset, writep_sym.size)
        free = target.read_int(free_sym.address + target.load_offset, free_sym.size)
    except ReadError as exc:
        raise UsageError(f"cannot read Unikraft's trace buffer pointers: {exc.message}") \
            from None
    exact = True
    if writep == 0:  # Unikraft's uk-gdb.py: seen when no tracepoint was ever compiled in
        used = 0
    elif low <= writep <= low + size:
        used = writep - low
    else:
        warnings.append(f"{WRITEP_SYMBOL} ({writep:#x}) points outside {BUFFER_SYMBOL} "
                        f"({low:#x}+{size:#x}): reading the whole buffer, up to where its "
                        "samples stop")
        used, exact = size, False
    if free != 0 and exact and used + free != size:
        warnings.append(f"{FREE_SYMBOL} is {free}, but {used} of {size} bytes are used: "
                        "the buffer's variables disagree")
    try:
        data = target.read(low, used) if used else b""
    except ReadError as exc:
        raise UsageError(f"cannot read {BUFFER_SYMBOL}: {exc.message}") from None
    try:
        cpus = target.cpu_count()
    except UndebugError:  # only the session line's count
        cpus = 1
    decoded = decode_samples(data, uk, exact_end=exact, cpu_count=max(cpus, 1))
    full = free < uk.header.size
    if full:
        warnings.append(f"buffer full: later samples were not recorded (Unikraft's trace "
                        f"buffer is linear: {used} of {size} bytes used, {free} free; it "
                        "counts nothing it drops)")
    state = BufferState(BUFFER_SYMBOL, low, size, used, free, full, len(decoded.records))
    return UnikraftRecording(decoded, uk, state, warnings)
