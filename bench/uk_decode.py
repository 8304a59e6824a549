"""Unikraft trace buffer: decode a full 1 MiB uk_trace_buffer, vs a struct.unpack_from loop.

The buffer is synthesised here, in Python, in the exact Unikraft 0.17 format (FORMAT.md
section 11): TPde definitions as the 0.17 macro lays them out (three tracepoints: "%d %lu"
(int, unsigned long), "%lu" and "%u %u %lu", so samples are 36, 32 and 40 bytes, in a
pseudo-random mix), samples ``{'TRhd', size, ns, cookie}`` + packed arguments written
until the next one no longer fits, as Unikraft stops. undebug: ``decode_samples`` into
the event model's columns (every sample checked: chain, size per tracepoint, cookie).
Baseline, measured in the same run, interleaved: a ``struct.unpack_from`` loop over the
same buffer (header, then the tracepoint's precompiled argument ``Struct``), the way a
straightforward Python reader (like Unikraft's parse.py) walks it. Both must agree.
Informational, same run: an unaligned buffer (a fourth tracepoint "%c %lu", 33-byte
samples, in one sample of five), which takes the decoder's any-offset path.
"""

from __future__ import annotations

import random
import statistics
import struct
import time
from typing import Any

from tracers.unikraft.metadata import UkTracepoints, parse_definitions
from tracers.unikraft.samples import SAMPLE_MAGIC, decode_samples

BUFFER = 1 << 20
ROUNDS = 21
ADDRESS = 0x177000  # where 0.17's trace.ld put the section in the images built here
# (name, format, argument sizes, struct format of the arguments)
TRACEPOINTS = [("trace_work", "%d %lu", (4, 8), "<iQ"), ("trace_tick", "%lu", (8,), "<Q"),
               ("trace_io", "%u %u %lu", (4, 4, 8), "<IIQ"), ("trace_ch", "%c %lu", (1, 8), "<BQ")]
ALIGNED, UNALIGNED = (0, 0, 0, 1, 2), (0, 0, 1, 2, 3)  # which tracepoints, how often


def definitions() -> bytes:
    """``.uk_tracepoints_list`` as 0.17's ``__UK_TRACE_REG`` lays it out (32-aligned)."""
    out = bytearray()
    for name, fmt, sizes, _ in TRACEPOINTS:
        n, f = name.encode() + b"\0", fmt.encode() + b"\0"
        body = struct.pack("<BBB", len(sizes), len(n), len(f)) + bytes(sizes) + \
            bytes(len(sizes)) + n + f
        size = (16 + len(body) + 7) // 8 * 8
        out += b"\0" * (-len(out) % 32)
        out += (struct.pack("<IIQ", 0x65645054, size, ADDRESS + len(out)) + body).ljust(
            size, b"\0")
    return bytes(out)


def synthesise(uk: UkTracepoints, mix: tuple[int, ...] = ALIGNED) -> tuple[bytes, int]:
    """A full buffer (its used bytes) and its sample count."""
    cookies = sorted(uk.by_cookie)
    rng = random.Random(1)
    buf = bytearray()
    ns, count = 100_000_000, 0
    while True:
        k = rng.choice(mix)
        _, _, sizes, fmt = TRACEPOINTS[k]
        payload = struct.pack(fmt, *([count % 3] * (len(sizes) - 1) + [count]))
        if len(buf) + 24 + len(payload) > BUFFER:
            return bytes(buf), count
        ns += 1000 + count % 7
        buf += struct.pack("<IIQQ", SAMPLE_MAGIC, len(payload), ns, cookies[k]) + payload
        count += 1


def unpack_loop(data: bytes, uk: UkTracepoints) -> list[tuple[int, int, tuple[int, ...]]]:
    """The baseline: walk the chain with struct.unpack_from."""
    head = struct.Struct("<IIQQ")
    args = {u.cookie: struct.Struct(TRACEPOINTS[u.tracepoint.id][3])
            for u in uk.by_cookie.values()}
    out = []
    p, n = 0, len(data)
    while p + 24 <= n:
        magic, size, ns, cookie = head.unpack_from(data, p)
        if magic != SAMPLE_MAGIC:
            break
        out.append((ns, cookie, args[cookie].unpack_from(data, p + 24)))
        p += 24 + size
    return out


def check(data: bytes, uk: UkTracepoints, count: int) -> None:
    """Both readers see every sample, with the same times and arguments."""
    ours, base = decode_samples(data, uk), unpack_loop(data, uk)
    assert len(ours.records) == len(base) == count and not ours.damage
    assert [int(t) for t in ours.records.tsc] == [b[0] for b in base]
    nargs = {u.tracepoint.id: u.tracepoint.nargs for u in uk.by_cookie.values()}
    assert [tuple(int(v) for v in row[: nargs[int(i)]]) for row, i in
            zip(ours.records.args, ours.records.id, strict=True)] == [b[2] for b in base]


def run() -> dict[str, Any]:
    uk = parse_definitions(definitions(), ADDRESS)
    assert len(uk.by_cookie) == len(TRACEPOINTS) and not uk.warnings
    data, count = synthesise(uk)
    odd, odd_count = synthesise(uk, UNALIGNED)
    check(data, uk, count)
    check(odd, uk, odd_count)
    samples: dict[str, list[float]] = {"undebug": [], "struct": [], "undebug_unaligned": [],
                                       "struct_unaligned": []}
    for i in range(ROUNDS):
        sides = ["undebug", "struct", "undebug_unaligned", "struct_unaligned"]
        for side in sides[i % 4:] + sides[: i % 4]:
            buf = odd if side.endswith("unaligned") else data
            t0 = time.perf_counter()
            if side.startswith("undebug"):
                decode_samples(buf, uk)
            else:
                unpack_loop(buf, uk)
            samples[side].append(time.perf_counter() - t0)
    ours, theirs = statistics.median(samples["undebug"]), statistics.median(samples["struct"])
    odd_ours = statistics.median(samples["undebug_unaligned"])
    odd_theirs = statistics.median(samples["struct_unaligned"])
    summary = {
        "buffer_bytes": len(data), "samples": count,
        "buffer_written_by": "Python (bench/uk_decode.py), Unikraft 0.17 format",
        "undebug_median_s": round(ours, 6), "undebug_samples_per_s": round(count / ours),
        "struct_median_s": round(theirs, 6), "struct_samples_per_s": round(count / theirs),
        "speedup": round(theirs / ours, 2),
        "goal_10M_per_s_met": count / ours >= 10e6, "goal_5x_struct_met": theirs / ours >= 5,
        "unaligned_samples": odd_count,
        "unaligned_undebug_samples_per_s": round(odd_count / odd_ours),
        "unaligned_struct_samples_per_s": round(odd_count / odd_theirs),
        "unaligned_speedup": round(odd_theirs / odd_ours, 2),
    }
    return {"samples": samples, "summary": summary}
