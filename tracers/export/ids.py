"""Span and trace ids derived from the recording, never random, for one record or many.

An id is a mix of the begin record's CPU, TSC, sequence number and thread under a key
made from its session (the guest's boot TSC, TSC rate and build-id) and what the id is
for, so exporting the same recording twice (a retry) sends the same ids and a backend
de-duplicates instead of doubling. The mix is splitmix64's finaliser, which numpy computes
for a whole batch at once; the per-session key is a keyed BLAKE2b of the header.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from tracers.records import Session

__all__ = ["SPAN", "TRACE", "idents"]

SPAN, TRACE = b"undebug.span", b"undebug.trace"
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@lru_cache(maxsize=64)
def _keys(boot_tsc: int, tsc_hz: int, build_id: bytes, person: bytes) -> tuple[int, int]:
    digest = hashlib.blake2b(struct.pack("<QQ", boot_tsc, tsc_hz), digest_size=16,
                             key=build_id[:64], person=person).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def idents(session: Session, cpu: npt.ArrayLike, tsc: npt.ArrayLike, seq: npt.ArrayLike,
           tid: npt.ArrayLike, size: int, person: bytes) -> npt.NDArray[np.uint8]:
    """(n, size) id bytes, size 8 (a span id) or 16 (a trace id); never all zero."""
    h = session.header
    keys = _keys(h.boot_tsc, h.tsc_hz, h.build_id, person)
    t = np.asarray(tsc, np.uint64)
    rest = (np.asarray(cpu, np.uint64) | (np.asarray(seq, np.uint64) << np.uint64(8))
            | (np.asarray(tid, np.uint64) << np.uint64(24)))
    with np.errstate(over="ignore"):
        first = _mix(_mix(t ^ np.uint64(keys[0])) ^ rest)
        words = [first] if size == 8 else [first, _mix(first ^ np.uint64(keys[1]))]
    out = np.stack(words, axis=1).astype(">u8").view(np.uint8).reshape(len(t), size)
    zero = ~out.any(axis=1)
    out[zero, -1] = 1
    return out
