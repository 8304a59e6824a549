"""The trace wire format (tracers/FORMAT.md, version 1): constants, the stream header and
the record layout (its numpy dtypes are the fast path's, tracers/fastpath.py).

It exists so that everything that reads the bytes (the decoder, its fast path, the
channels, the flight-recorder reader, the supervisor's recorder) takes the layout from one
place, and so that code that only needs the record ids need not import the decoder (nor
numpy: the supervisor imports this).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "ID_FAULT", "ID_INVALID", "ID_LOG_STR", "ID_LOST", "ID_PANIC",
           "ID_SPAN_CONTEXT",
           "ID_SYNC", "ID_THREAD_NAME", "ID_THREAD_SWITCH", "MAGIC", "MAGIC_BYTES", "MAX_ARGS",
           "MAX_SLOTS", "RESERVED_FIRST", "RESERVED_NAMES", "RESERVED_SLOTS",
           "SLOT", "SLOT_STRUCT", "STRING_IDS", "SYNC_PATTERN", "SYNC_W0",
           "SYNC_W1", "TSC_WINDOW_S", "U64_MAX", "VERSION", "Data", "StreamHeader"]

MAGIC = 0x4543415254424455  # "UDBTRACE"
MAGIC_BYTES = b"UDBTRACE"
VERSION = 1
HEADER_SIZE = 80
SLOT = 16
MAX_SLOTS = 16
MAX_ARGS = 6
SYNC_W0 = 0x434E595347424455  # "UDBGSYNC"
SYNC_W1 = SYNC_W0 ^ 0xFFFF_FFFF_FFFF_FFFF
SYNC_PATTERN = struct.pack("<QQ", SYNC_W0, SYNC_W1)
TSC_WINDOW_S = 600  # a record may be at most 10 minutes newer than the newest good one
U64_MAX = (1 << 64) - 1

ID_SYNC, ID_LOST, ID_THREAD_NAME, ID_THREAD_SWITCH = 0xFF00, 0xFF01, 0xFF02, 0xFF03
ID_FAULT, ID_PANIC, ID_LOG_STR, ID_SPAN_CONTEXT = 0xFF04, 0xFF05, 0xFF06, 0xFF07
RESERVED_FIRST, ID_INVALID = 0xFF00, 0xFFFF
RESERVED_NAMES = {ID_SYNC: "sync", ID_LOST: "lost", ID_THREAD_NAME: "thread_name",
                  ID_THREAD_SWITCH: "thread_switch", ID_FAULT: "fault", ID_PANIC: "panic",
                  ID_LOG_STR: "log_str", ID_SPAN_CONTEXT: "span_context"}
# nslots allowed per known reserved id (FORMAT.md section 3)
RESERVED_SLOTS = {ID_SYNC: (3, 3), ID_LOST: (2, 2), ID_THREAD_NAME: (2, 4),
                  ID_THREAD_SWITCH: (2, 2), ID_FAULT: (3, 3), ID_PANIC: (2, 9),
                  ID_LOG_STR: (2, 9), ID_SPAN_CONTEXT: (2, 6)}
# records with a string payload
STRING_IDS = (ID_THREAD_NAME, ID_PANIC, ID_LOG_STR, ID_SPAN_CONTEXT)

SLOT_STRUCT = struct.Struct("<QHBBHH")  # a record's header slot: tsc id cpu nslots seq tid
_HEADER = struct.Struct("<QHHIQQHBBHH32sQ")
_TRANSPORTS = {0: "memory", 1: "virtio-serial", 2: "uart", 3: "debugcon"}

Data = bytes | bytearray | mmap.mmap  # a stream's bytes: a buffer, or a file mapped read-only


@dataclass(frozen=True)
class StreamHeader:
    """The 80-byte stream header (FORMAT.md section 1)."""

    version: int
    header_size: int
    flags: int
    tsc_hz: int
    boot_tsc: int
    cpu_count: int
    transport: int
    max_slots: int
    ring_count: int
    build_id: bytes
    header_tsc: int

    @property
    def streaming(self) -> bool:
        return bool(self.flags & 1)

    @property
    def transport_name(self) -> str:
        return _TRANSPORTS.get(self.transport, f"transport {self.transport}")

    @classmethod
    def parse(cls, data: bytes) -> StreamHeader | str:
        """The header in ``data`` (at least 80 bytes), or why it is not a valid one."""
        (magic, version, size, flags, hz, boot, cpus, id_len, transport, max_slots, rings,
         build_id, header_tsc) = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return "no UDBTRACE magic"
        if version != VERSION:
            return f"trace format version {version} (this undebug reads version {VERSION})"
        if size < HEADER_SIZE or size % SLOT or size > 4096:
            return f"bad header_size {size}"
        if not 1 <= cpus <= 256:
            return f"bad cpu_count {cpus}"
        if id_len > 32:
            return f"bad build_id_len {id_len}"
        if hz == 0:
            return "tsc_hz is 0"
        if not 1 <= max_slots <= MAX_SLOTS:
            return f"bad max_slots {max_slots}"
        return cls(version, size, flags, hz, boot, cpus, transport, max_slots, rings,
                   bytes(build_id[:id_len]), header_tsc)
