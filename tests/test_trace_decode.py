"""The trace decoder (tracers/decode.py), the flight-recorder reader, the ELF metadata and
the ``trace show``/``trace stats`` CLI, on streams built here by :class:`Encoder`.

:class:`Encoder` stands in for the guest stub (guest-stubs/src/trace.c): it writes
records exactly as tracers/FORMAT.md says. The stub itself is tested against real QEMU
elsewhere; these tests pin the host side to the format.
"""

from __future__ import annotations

import random
import shutil
import struct
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import undebug
from tracers.decode import (
    ID_FAULT,
    ID_LOG_STR,
    ID_LOST,
    ID_PANIC,
    ID_SYNC,
    ID_THREAD_NAME,
    ID_THREAD_SWITCH,
    MAGIC,
    Decoded,
    Records,
    StreamDecoder,
    decode,
    decode_file,
)
from tracers.flight import read_flight_recorder

SYNC_W0 = 0x434E595347424455
SYNC_W1 = 0xBCB1A6ACB8BDBBAA
HZ = 3_000_000_000
BOOT = 2_000_000_000_000  # a TSC a while after power-on, as on real machines


class Encoder:
    """Writes a trace stream as the guest stub does (FORMAT.md sections 1-3)."""

    def __init__(self, cpus: int = 2, build_id: bytes = bytes(range(20)), hz: int = HZ,
                 boot: int = BOOT) -> None:
        self.cpus, self.build_id, self.hz, self.boot = cpus, build_id, hz, boot
        self.out = bytearray()
        self.seq = [0] * cpus
        self.lost_total = [0] * cpus
        self.tid = [0] * cpus
        self.tsc = boot + 100

    def header(self, *, header_tsc: int = 0, version: int = 1, size: int = 80,
               flags: int = 1) -> Encoder:
        self.out += struct.pack("<QHHIQQHBBHH32sQ", MAGIC, version, size, flags, self.hz,
                                self.boot, self.cpus, len(self.build_id), 1, 16, 16,
                                self.build_id.ljust(32, b"\0"), header_tsc)
        self.out += bytes(size - 80)
        return self

    def record(self, ident: int, cpu: int, words: list[int] | tuple[int, ...] = (),
               text: bytes = b"", tsc: int | None = None, nslots: int | None = None) -> int:
        payload = struct.pack(f"<{len(words)}Q", *words) + text
        k = nslots or 1 + (len(payload) + 15) // 16
        payload = payload.ljust(16 * (k - 1), b"\0")
        self.tsc += 300
        at = len(self.out)
        self.out += struct.pack("<QHBBHH", self.tsc if tsc is None else tsc, ident, cpu, k,
                                self.seq[cpu] & 0xFFFF, self.tid[cpu]) + payload
        self.seq[cpu] += 1
        return at

    def event(self, ident: int, cpu: int, *args: int) -> int:
        return self.record(ident, cpu, list(args))

    def sync(self, cpu: int) -> int:
        return self.record(ID_SYNC, cpu, [SYNC_W0, SYNC_W1, self.seq[cpu], self.lost_total[cpu]])

    def drop(self, cpu: int, n: int) -> int:
        """Drop ``n`` records, then report them with a LOST record (section 3.2)."""
        first = self.seq[cpu]
        self.seq[cpu] += n
        self.lost_total[cpu] += n
        return self.record(ID_LOST, cpu, [n, first])

    def thread_name(self, cpu: int, tid: int, name: bytes) -> int:
        return self.record(ID_THREAD_NAME, cpu, [tid, len(name)], name)

    def switch(self, cpu: int, to: int) -> int:
        at = self.record(ID_THREAD_SWITCH, cpu, [self.tid[cpu], to])
        self.tid[cpu] = to
        return at

    def bytes(self) -> bytes:
        return bytes(self.out)


def busy_stream(events: int = 3000, cpus: int = 2, seed: int = 1) -> Encoder:
    """A realistic mix: SYNCs, names, switches, 0..6-argument events, loss, strings."""
    rnd = random.Random(seed)
    enc = Encoder(cpus).header(header_tsc=BOOT + 50)
    for cpu in range(cpus):
        enc.sync(cpu)
        enc.thread_name(cpu, cpu + 1, f"worker-{cpu}".encode())
        enc.switch(cpu, cpu + 1)
    for i in range(events):
        cpu = rnd.randrange(cpus)
        roll = rnd.random()
        if roll < 0.7:
            enc.event(2, cpu, i, i * 3)
        elif roll < 0.85:
            enc.event(rnd.randrange(5), cpu, *range(rnd.randrange(7)))
        elif roll < 0.9:
            enc.drop(cpu, rnd.randrange(1, 5))
        elif roll < 0.93:
            enc.switch(cpu, rnd.randrange(1, 9))
        elif roll < 0.95:
            enc.record(ID_LOG_STR, cpu, [2, 5], b"hello")
        elif roll < 0.96:
            enc.record(ID_FAULT, cpu, [14, 2, 0x1000, 0xdead])
        else:
            enc.sync(cpu)
    return enc


def same(a: Decoded, b: Decoded) -> None:
    """Two decodes are identical: every column, string, session, damage region."""
    for name in ("tsc", "id", "cpu", "nslots", "seq", "tid", "session"):
        assert np.array_equal(getattr(a.records, name), getattr(b.records, name)), name
    assert a.records.args.shape == b.records.args.shape
    assert np.array_equal(a.records.args, b.records.args)
    assert a.records.strings == b.records.strings
    assert a.sessions == b.sessions
    assert a.damage == b.damage
    assert a.truncated == b.truncated
    assert a.problem == b.problem


# ---- clean streams ---------------------------------------------------------------------

def test_two_argument_events_decode_to_columns() -> None:
    enc = Encoder().header()
    for i in range(100):
        enc.event(7, i % 2, i, 1000 + i)
    d = decode(enc.bytes())
    r = d.records
    assert d.problem is None and d.damage == [] and d.truncated is None
    assert len(r) == 100 and r.args.shape == (100, 2)
    assert r.id.tolist() == [7] * 100
    assert r.cpu.tolist() == [i % 2 for i in range(100)]
    assert r.args[:, 0].tolist() == list(range(100))
    assert r.args[:, 1].tolist() == [1000 + i for i in range(100)]
    assert r.seq.tolist() == [i // 2 for i in range(100)]
    assert d.sessions[0].header.build_id == bytes(range(20))


def test_fast_and_careful_paths_agree_on_a_clean_mixed_stream() -> None:
    data = busy_stream(5000).bytes()
    fast, slow = decode(data), decode(data, fast=False)
    same(fast, slow)
    assert fast.damage == [] and len(fast.records) > 5000


def test_strings_use_their_length_not_a_nul() -> None:
    enc = Encoder().header()
    enc.thread_name(0, 3, b"a\0b\x1b]0;x\x07")  # NUL and escapes inside: kept as bytes
    enc.record(ID_THREAD_NAME, 0, [4, 200], b"short")  # a length past the record: clamped
    enc.record(ID_PANIC, 1, [3, 0], b"boom and more")
    d = decode(enc.bytes())
    assert list(d.records.strings.values()) == [b"a\0b\x1b]0;x\x07", b"short".ljust(16, b"\0"),
                                                b"boo"]


def test_repeated_headers_start_sessions() -> None:
    enc = Encoder().header(header_tsc=BOOT + 10)
    enc.event(1, 0, 1, 2)
    enc.header(header_tsc=BOOT + 500)  # a reconnect
    enc.seq = [40, 0]  # the guest's counters went on while nobody listened
    enc.event(1, 0, 3, 4)
    enc.event(1, 1, 5, 6)
    for fast in (True, False):
        d = decode(enc.bytes(), fast=fast)
        assert [s.first_record for s in d.sessions] == [0, 1]
        assert [s.offset for s in d.sessions] == [0, 112]
        assert d.records.session.tolist() == [0, 1, 1]
        assert d.damage == []


def test_header_size_is_skipped_as_given() -> None:
    enc = Encoder().header(size=96)  # a later version may grow the header
    enc.event(1, 0, 9, 9)
    d = decode(enc.bytes())
    assert len(d.records) == 1 and d.damage == []


# ---- damage ----------------------------------------------------------------------------

def test_resync_after_overwritten_bytes_reports_the_region_and_recovers() -> None:
    enc = busy_stream(2000)
    enc.sync(0)
    enc.sync(1)
    marker = len(enc.out)
    for i in range(50):
        enc.event(2, i % 2, 777, i)
    data = bytearray(enc.bytes())
    start = 3000
    data[start : start + 100] = b"\xee" * 100
    clean = decode(enc.bytes())
    for fast in (True, False):
        d = decode(bytes(data), fast=fast)
        assert len(d.damage) == 1
        region = d.damage[0]
        # it starts at the first header the garbage spoiled (garbage inside a payload
        # cannot be seen) and ends past the garbage
        assert start - 16 * 16 <= region.offset <= start + 100 <= region.offset + region.skipped
        # everything after the damage is recovered
        tail = d.records.args[:, 0][-50:].tolist()
        assert tail == [777] * 50
        assert len(d.records) >= len(clean.records) - 100 // 16 - 2
        assert marker > region.offset
    same(decode(bytes(data)), decode(bytes(data), fast=False))


def test_resync_after_a_shift_finds_the_sync_byte_by_byte() -> None:
    enc = Encoder().header()
    for i in range(20):
        enc.event(1, 0, i, i)
    cut = len(enc.out)
    enc.sync(0)
    for i in range(20):
        enc.event(1, 0, 100 + i, i)
    data = enc.bytes()
    shifted = data[:cut] + b"\xee" * 7 + data[cut:]  # 7 bytes inserted: alignment is gone
    d = decode(shifted)
    assert [(x.offset, x.skipped) for x in d.damage] == [(cut, 7)]
    assert d.records.id[20] == ID_SYNC
    assert d.records.args[-20:, 0].tolist() == list(range(100, 120))
    # 5 bytes lost at the end of a record: it still looks whole, the next header does
    # not; the SYNC began inside what was taken, so a confirmed header ends the damage
    shifted = data[: cut - 5] + b"\x01\x02\x03" + data[cut:]
    d = decode(shifted)
    assert [(x.offset, x.skipped) for x in d.damage] == [(cut, 46)]
    assert d.records.args[-20:, 0].tolist() == list(range(100, 120))


def test_truncated_file_keeps_every_complete_record() -> None:
    enc = Encoder().header()
    for i in range(10):
        enc.event(1, 0, i, i)
    data = enc.bytes()
    for cut in (len(data) - 1, len(data) - 16, len(data) - 17):
        d = decode(data[:cut])
        assert len(d.records) == 9 and d.damage == []
        assert d.truncated is not None and d.truncated.offset == len(data) - 32
    d = decode(data[:50])  # inside the stream header
    assert d.problem and "cut short" in d.problem


def test_absurd_nslots_are_damage() -> None:
    for bad in (0, 17, 255):
        enc = Encoder().header()
        enc.event(1, 0, 1, 1)
        enc.record(1, 0, [1, 2], nslots=2)
        enc.sync(0)
        enc.event(1, 0, 5, 5)
        data = bytearray(enc.bytes())
        data[80 + 32 + 11] = bad
        d = decode(bytes(data))
        assert [(x.offset, x.skipped) for x in d.damage] == [(112, 32)]
        assert d.records.args[:, 0].tolist() == [1, SYNC_W0, 5]


def test_unknown_ids_need_metadata_to_be_refused() -> None:
    enc = Encoder().header()
    enc.event(1, 0, 1, 1)
    enc.event(50, 0, 2, 2)  # not in a 10-record metadata section
    enc.sync(0)
    enc.event(3, 0, 3, 3)
    enc.record(0xFF42, 0, [9, 9])  # an unknown reserved id: skipped by nslots, warned
    enc.event(4, 0, 4, 4)
    d = decode(enc.bytes(), tracepoint_count=10)
    assert [(x.offset, x.reason) for x in d.damage] == [(112, "unknown tracepoint id 50")]
    assert d.records.id.tolist() == [1, ID_SYNC, 3, 0xFF42, 4]
    assert any("0xff42" in w for w in d.warnings)
    assert decode(enc.bytes()).damage == []  # without metadata every id < 0xff00 is fine


def test_a_record_far_in_the_future_is_damage_but_a_sync_after_a_pause_is_not() -> None:
    enc = Encoder().header(header_tsc=BOOT)
    enc.event(1, 0, 1, 1)
    enc.event(1, 0, 2, 2)
    far = enc.tsc + 601 * HZ
    enc.record(1, 0, [3, 3], tsc=far)
    enc.tsc = far
    enc.sync(0)  # the guest was paused for 10 minutes: the SYNC brings the decoder along
    enc.event(1, 0, 4, 4)
    d = decode(enc.bytes())
    assert [(x.offset, x.skipped) for x in d.damage] == [(144, 32)]
    assert d.records.args[:, 0].tolist() == [1, 2, SYNC_W0, 4]


def test_random_bytes_are_not_a_trace() -> None:
    data = random.Random(5).randbytes(100_000)
    d = decode(data)
    assert d.problem is not None and "not an undebug trace" in d.problem
    assert len(d.records) == 0
    assert decode(b"").problem == "empty file: no stream header yet"


def test_a_newer_format_version_is_named() -> None:
    d = decode(Encoder().header(version=2).bytes())
    assert d.problem and "version 2" in d.problem


def test_random_bytes_after_a_header_are_one_damage_region() -> None:
    enc = Encoder().header()
    enc.event(1, 0, 1, 1)
    junk = random.Random(7).randbytes(50_000)
    data = enc.bytes() + junk
    start = time.monotonic()
    d = decode(data)
    assert time.monotonic() - start < 5
    assert len(d.records) >= 1 and d.records.args[0, 0] == 1
    assert sum(x.skipped for x in d.damage) + 112 + 16 * int(d.records.nslots[1:].sum()) \
        + (d.truncated.size if d.truncated else 0) == len(data)


# ---- incremental decoding --------------------------------------------------------------

def feed_in_pieces(data: bytes, rnd: random.Random, fast: bool = True) -> Decoded:
    decoder = StreamDecoder(fast=fast)
    parts, damage, warnings = [], [], []
    at = 0
    while at < len(data):
        step = rnd.choice([1, 3, 16, 31, 100, 1000])
        batch = decoder.feed(data[at : at + step])
        at += step
        parts.append(batch.records)
        damage += batch.damage
    end = decoder.finish()
    parts.append(end.records)
    damage += end.damage
    warnings += end.warnings
    return Decoded(Records.concat(parts), end.sessions, damage, warnings, end.truncated,
                   end.problem, end.size)


def test_feeding_in_pieces_gives_the_same_records() -> None:
    enc = busy_stream(800)
    data = bytearray(enc.bytes())
    data[5000:5040] = b"\x00" * 40  # damage on the way
    whole = decode(bytes(data))
    for seed in range(3):
        pieces = feed_in_pieces(bytes(data), random.Random(seed))
        same(whole, pieces)


def test_a_partial_record_waits_for_more_bytes() -> None:
    enc = Encoder().header()
    enc.event(1, 0, 1, 1)
    enc.event(1, 0, 2, 2)
    data = enc.bytes()
    decoder = StreamDecoder()
    first = decoder.feed(data[:120])
    assert len(first.records) == 1 and first.truncated is None and first.damage == []
    second = decoder.feed(data[120:])
    assert second.records.args[:, 0].tolist() == [2] and second.records.start == 1
    assert decoder.finish().truncated is None


# ---- fuzzing ---------------------------------------------------------------------------

_VALID = busy_stream(300, seed=3).bytes()


@st.composite
def damaged_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID[: draw(st.integers(80, len(_VALID)))])
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["overwrite", "insert", "delete"]))
        chunk = draw(st.binary(min_size=1, max_size=40))
        if kind == "overwrite":
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = chunk
        else:
            del data[at : at + len(chunk)]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000), damaged_streams()))
def test_fuzz_never_raises_and_both_paths_agree(data: bytes) -> None:
    start = time.monotonic()
    fast = decode(data)
    slow = decode(data, fast=False)
    assert time.monotonic() - start < 5
    same(fast, slow)
    covered = sum(x.skipped for x in fast.damage) + sum(
        s.header.header_size for s in fast.sessions) + 16 * int(fast.records.nslots.sum()) + (
        fast.truncated.size if fast.truncated else 0)
    if fast.sessions and fast.sessions[0].offset == 0:
        assert covered == len(data)  # every byte is a header, a record, damage or a tail


# ---- files -----------------------------------------------------------------------------

def test_decode_file_reads_through_mmap(tmp_path: Path) -> None:
    data = busy_stream(500).bytes()
    path = tmp_path / "t.utrace"
    path.write_bytes(data)
    same(decode_file(path), decode(data))
    (tmp_path / "empty.utrace").write_bytes(b"")
    assert decode_file(tmp_path / "empty.utrace").problem


# ---- the flight recorder ---------------------------------------------------------------

class FakeTarget:
    """Guest memory as a dict of regions (a mock Target: only what the reader uses)."""

    def __init__(self, symbols: dict[str, tuple[int, int]],
                 memory: dict[int, bytearray]) -> None:
        from undebug.elf import Symbol

        self.memory = memory
        table = {name: Symbol(name, at, size, "object") for name, (at, size) in symbols.items()}
        self.elf = type("Elf", (), {"path": Path("guest.elf"), "symbol": staticmethod(table.get)})()
        self.load_offset = 0
        self.reads = 0
        self.on_read: object = None

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        if callable(self.on_read):
            self.on_read(self)
        for base, region in self.memory.items():
            if base <= address and address + size <= base + len(region):
                return bytes(region[address - base : address - base + size])
        from undebug.target import ReadError
        raise ReadError(f"unmapped {address:#x}")


def ring_header(cpu: int, data: int, size: int, head: int, tail: int, seq: int) -> bytes:
    return struct.pack("<IHBBQQQQQQQQQQQQH", 0x474E5255, cpu, 0, 0, data, size, head, tail, 0,
                       0, seq, 0, 0, 0, 0, seq, 0).ljust(128, b"\0")


def test_flight_recorder_copies_each_ring_and_handles_wrap_around() -> None:
    enc = Encoder(cpus=2).header(flags=0)
    header = enc.bytes()
    size = 256
    ring0 = Encoder(cpus=2)  # records for CPU 0: 10 two-slot records, 320 bytes > size
    for i in range(10):
        ring0.event(1, 0, i, i)
    stream0 = ring0.bytes()
    storage0 = bytearray(size)
    for pos in range(len(stream0)):  # written at position p of a ring of 256 bytes
        storage0[pos % size] = stream0[pos]
    head, tail = len(stream0), len(stream0) - 7 * 32  # the newest 7 records survive
    ring1 = Encoder(cpus=2)
    ring1.event(2, 1, 42, 43)
    storage1 = bytearray(ring1.bytes()).ljust(size, b"\0")
    rings = ring_header(0, 0x10000, size, head, tail, 10) + \
        ring_header(1, 0x20000, size, 32, 0, 1) + bytes(128)
    target = FakeTarget({"undebug_trace_header": (0x1000, 80),
                         "undebug_trace_rings": (0x2000, len(rings)),
                         "undebug_trace_ring_data": (0x10000, 0x20000)},
                        {0x1000: bytearray(header), 0x2000: bytearray(rings),
                         0x10000: storage0, 0x20000: storage1})
    rec = read_flight_recorder(target)  # type: ignore[arg-type]
    d = decode(rec.data)
    assert d.damage == [] and d.problem is None
    assert d.records.args[:, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 42]
    assert [r.copied for r in rec.rings] == [224, 32]


def test_flight_recorder_drops_what_a_running_guest_overwrote_meanwhile() -> None:
    enc = Encoder(cpus=1).header(flags=0)
    ring = Encoder(cpus=1)
    for i in range(4):
        ring.event(1, 0, i, i)
    rings = bytearray(ring_header(0, 0x10000, 256, 128, 0, 4))
    target = FakeTarget({"undebug_trace_header": (0x1000, 80),
                         "undebug_trace_rings": (0x2000, len(rings)),
                         "undebug_trace_ring_data": (0x10000, 256)},
                        {0x1000: bytearray(enc.bytes()), 0x2000: rings,
                         0x10000: bytearray(ring.bytes()).ljust(256, b"\0")})

    def guest_runs(t: FakeTarget) -> None:
        if t.reads == 4:  # after the data was copied: the oldest record is gone
            rings[32:40] = struct.pack("<Q", 32)

    target.on_read = guest_runs
    rec = read_flight_recorder(target)  # type: ignore[arg-type]
    assert decode(rec.data).records.args[:, 0].tolist() == [1, 2, 3]
    assert any("overwritten" in w for w in rec.warnings)


# ---- metadata --------------------------------------------------------------------------

def test_metadata_of_the_reference_guest(guest_image: Path, tmp_path: Path) -> None:
    """The reference guest links the stub: its ELF must carry tracepoint metadata (a
    build without it is a failure here, not a skip)."""
    from tracers.metadata import KIND_SPAN_BEGIN, KIND_SPAN_END, for_stream, load_tracepoints

    elf = tmp_path / "refguest.elf"
    shutil.copy(guest_image, elf)  # the real one may be rebuilt while we read
    tps = load_tracepoints(elf)
    assert tps.warnings == [] and tps.count == len(tps.by_id) > 0
    kinds = {tp.kind for tp in tps.by_id.values()}
    assert KIND_SPAN_BEGIN in kinds and KIND_SPAN_END in kinds
    for tp in tps.by_id.values():
        assert tp.name.isidentifier() and len(tp.arg_names) == tp.nargs
    header = Encoder(build_id=bytes.fromhex(tps.build_id or "")).header().bytes()
    matching = decode(header).sessions
    assert for_stream(tps, matching) == (tps, [])
    other = decode(Encoder(build_id=b"\x99" * 20).header().bytes()).sessions
    usable, warnings = for_stream(tps, other)
    assert usable is None and "mismatch" in warnings[0]


def test_bad_metadata_records_are_skipped_with_warnings(guest_image: Path, tmp_path: Path) -> None:
    from tracers.metadata import load_tracepoints
    from undebug.elf import ElfFile

    elf = tmp_path / "bad.elf"
    shutil.copy(guest_image, elf)
    section = ElfFile(elf).section("undebug_tracepoints")
    assert section is not None
    data = bytearray(elf.read_bytes())
    data[section.file_offset : section.file_offset + 4] = b"XXXX"  # record 0: no magic
    bad_pointer = section.file_offset + 64 + 16  # record 1: name points nowhere
    data[bad_pointer : bad_pointer + 8] = struct.pack("<Q", 0xDEAD_0000_0000)
    elf.write_bytes(bytes(data))
    tps = load_tracepoints(elf)
    assert 0 not in tps.by_id and 1 not in tps.by_id
    assert len(tps.by_id) == tps.count - 2
    assert any("record 0" in w for w in tps.warnings) and any("record 1" in w for w in tps.warnings)


# ---- the CLI ---------------------------------------------------------------------------

def test_cli_show_and_stats_on_a_file(tmp_path: Path) -> None:
    enc = Encoder().header()
    enc.thread_name(0, 1, b"evil\x1b]0;owned\x07")
    enc.switch(0, 1)
    enc.event(3, 0, 11, 22)
    enc.drop(0, 2)
    enc.event(3, 0, 33, 44)
    enc.record(ID_PANIC, 1, [4, 0], b"oops")
    path = tmp_path / "t.utrace"
    data = bytearray(enc.bytes())
    path.write_bytes(bytes(data))
    show = undebug("trace", "show", str(path))
    assert show.code == 0, show.stderr
    assert "evil\\x1b]0;owned\\x07" in show.stdout and "\x1b" not in show.stdout
    assert "a0=0xb a1=0x16" in show.stdout and "panic  oops" in show.stdout
    assert "2 record(s) lost" in show.stdout
    stats = undebug("trace", "stats", str(path), "--json")
    assert stats.code == 0, stats.stderr
    doc = stats.json()
    assert doc["schema"] == "undebug/1" and doc["events"] == 2
    assert doc["tracepoints"] == [{"id": 3, "name": "tp#3", "count": 2, "kind": None}]
    cpu0 = next(x for x in doc["loss"] if x["cpu"] == 0)
    assert cpu0["lost_gaps"] == cpu0["lost_records"] == 2 and cpu0["agree"]
    assert doc["threads"][0]["name"] == "evil\x1b]0;owned\x07"  # JSON escapes it (\u001b)
    assert "\\u001b" in stats.stdout
    # damage is shown where it occurs, and decoding goes on past it
    data[80 + 48 + 8 : 80 + 48 + 12] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    damaged = undebug("trace", "show", str(path))
    assert damaged.code == 0 and "-- damage at offset" in damaged.stdout
    assert "panic  oops" in damaged.stdout


def test_cli_refuses_what_is_not_a_trace(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(random.Random(1).randbytes(4096))
    result = undebug("trace", "stats", str(junk), "--json")
    assert result.code == 2
    assert "not an undebug trace" in result.json()["error"]["message"]
    assert undebug("trace", "show", str(tmp_path / "missing.utrace")).code == 2
    assert undebug("trace", "show", "no-such-guest").code == 2


def test_cli_on_a_live_guest(shared_guest: str, tmp_path: Path) -> None:
    """The reference guest streams over virtio-serial; its supervisor records the stream."""
    import os
    import signal
    import subprocess
    import sys

    stats = undebug("trace", "stats", shared_guest, "--json")
    assert stats.code == 0, stats.stderr  # no stream from the reference guest is a failure
    doc = stats.json()
    names = {t["name"] for t in doc["tracepoints"]}
    assert doc["events"] > 0 and "handle_request" in names
    assert doc["loss"] and all(x["agree"] for x in doc["loss"])
    assert doc["damage"] == [] and not any("mismatch" in w for w in doc["warnings"])
    flight = undebug("trace", "show", shared_guest, "--flight-recorder", "--filter",
                     "handle_request")
    assert flight.code == 0, flight.stderr
    assert "begin handle_request  req_id=" in flight.stdout
    out = tmp_path / "rec.utrace"
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "record",
                             shared_guest, "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "recorded" in stdout and os.stat(out).st_mode & 0o777 == 0o600
    recorded = decode_file(out)
    assert recorded.problem is None and recorded.damage == [] and len(recorded.records) > 0
    from tracers.origin import read_origin

    origin = read_origin(out)  # FILE.origin: the ELF, and the OS provider that names it
    assert origin is not None and origin.elf and origin.os_name == "refguest"
