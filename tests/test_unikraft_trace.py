"""Unikraft's own tracepoints (tracers/unikraft/), on a program gcc -g builds here from
tests/data/unikraft/trace_mirror.c: a MIRROR of Unikraft 0.17's format (TPde records in a
non-ALLOC ``.uk_tracepoints_list`` placed after ``.comment`` as 0.17's trace.ld does,
``.uk_trace_keyvals``, ``struct uk_tracepoint_header`` and the ``uk_trace_buffer``
variables), written for these tests; it is not Unikraft's code. The program fills its
buffer and waits; the reader reads it through a Target over the live process's memory
(/proc/PID/mem), as it reads a guest's.

What the samples should hold is derived here from the C program's loop, never from the
reader's output; record offsets come from readelf. A last test boots a real Unikraft
image (UNDEBUG_UNIKRAFT_IMAGE) and compares the events with the guest's console.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, real_image, undebug, wait_for_console
from tests.memory_targets import ProcessTarget
from tracers.model import TraceModel
from tracers.report import EventPrinter
from tracers.unikraft.buffer import read_unikraft_buffer
from tracers.unikraft.metadata import SECTION, load_unikraft, parse_definitions
from tracers.unikraft.samples import decode_samples
from undebug.elf import ElfFile

DATA = ROOT / "tests" / "data" / "unikraft"
MAGIC = b"TRhd"
HEADER = 24
BUFSZ = 4096
WORDS = "abcdefghij"
STR_TP = "named_thing_with_a_long_name"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ukmirror") / "mirror"
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-Werror", "-no-pie", f"-DBUFSZ={BUFSZ}",
                    "-Wl,-T," + str(DATA / "trace_mirror.ld"), "-o", str(out),
                    str(DATA / "trace_mirror.c")], check=True, capture_output=True)
    return out


@pytest.fixture
def running(mirror: Path, request: pytest.FixtureRequest) -> Iterator[ProcessTarget]:
    """The mirror program run with ``request.param`` (its buffer filled), as a Target."""
    proc = subprocess.Popen([str(mirror), *request.param], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        target = ProcessTarget(ElfFile(mirror), proc.pid, writable=True)
        yield target
        target.close()
    finally:
        proc.kill()
        proc.wait()


def expected_events(n: int) -> list[tuple[str, dict[str, str] | None, int]]:
    """(tracepoint, args as trace show formats them, payload bytes) per sample, in order:
    the C program's loop, written again in Python."""
    out: list[tuple[str, dict[str, str] | None, int]] = []
    for i in range(n):
        n2 = 0x64685254 if i == 4 else i * 1000 + 1  # an argument that reads "TRhd"
        out.append(("trace_work", {"arg1": str(i - 3), "arg2": str(n2)}, 12))
        if i % 3 == 0:
            out.append(("small", {"arg1": repr(chr(ord("a") + i % 26)), "arg2": str(-i)}, 3))
        if i % 5 == 0:
            text = WORDS[i % 10:]
            out.append((STR_TP, {"arg1": repr(text), "arg2": str(-i)}, 1 + len(text) + 8))
        if i % 7 == 0:
            out.append(("tk", None, 0))
    return out


def shown(decoded: Any, uk: Any) -> list[dict[str, Any]]:
    printer = EventPrinter(uk.tracepoints, None)
    printer.lines(TraceModel(decoded, uk.tracepoints), collect=True)
    return printer.events


def offsets(events: list[tuple[str, dict[str, str] | None, int]]) -> list[int]:
    at, out = 0, []
    for _, _, payload in events:
        out.append(at)
        at += HEADER + payload
    return out


# ---- definitions -----------------------------------------------------------------------

def test_definitions_are_read_where_gcc_put_them_with_the_format_s_signedness(
        mirror: Path) -> None:
    symbols = {}
    for line in subprocess.run(["readelf", "-sW", str(mirror)], capture_output=True,
                               text=True, check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[7].startswith("tp_"):
            symbols[fields[7]] = (int(fields[1], 16), int(fields[2]))
    uk = load_unikraft(ElfFile(mirror))
    assert uk.warnings == [] and uk.format_version == 1
    section = ElfFile(mirror).section(SECTION)
    assert section is not None and section.address != 0  # after .comment, as in 0.17
    by_name = {u.tracepoint.name: u for u in uk.by_cookie.values()}
    where = {"tk": "tp_tick", "small": "tp_small", "trace_work": "tp_work", STR_TP: "tp_str"}
    assert set(by_name) == set(where)
    for name, symbol in where.items():
        assert by_name[name].cookie == symbols[symbol][0]  # the record's own address
    # gcc aligned the records 16 or 32 bytes apart: no fixed stride would find them all
    starts = sorted(a for a, _ in symbols.values())
    ends = {a + s for a, s in symbols.values()}
    assert any(b not in ends for b in starts[1:])
    assert by_name["trace_work"].sizes == (4, 8)
    tps = uk.tracepoints
    from tracers.metadata import ARG_CHAR, ARG_SIGNED, ARG_STRING, ARG_UNSIGNED

    assert tps.by_id[by_name["trace_work"].tracepoint.id].arg_types == (ARG_SIGNED,
                                                                        ARG_UNSIGNED)
    assert by_name["small"].tracepoint.arg_types == (ARG_CHAR, ARG_SIGNED)  # %c %hd
    assert by_name[STR_TP].tracepoint.arg_types == (ARG_STRING, ARG_SIGNED)  # %s %ld
    assert by_name["tk"].tracepoint.nargs == 0


def test_hostile_definitions_are_skipped_with_a_reason(mirror: Path) -> None:
    elf = ElfFile(mirror)
    section = elf.section(SECTION)
    assert section is not None
    data = bytearray(mirror.read_bytes()[section.file_offset:][: section.size])
    good = parse_definitions(bytes(data), section.address)
    first = min(u.offset for u in good.by_cookie.values())
    bad = bytearray(data)
    struct.pack_into("<I", bad, first + 4, 0)  # size 0: must not loop
    got = parse_definitions(bytes(bad), section.address)
    assert len(got.by_cookie) == len(good.by_cookie) - 1
    assert any("size 0" in w for w in got.warnings)
    bad = bytearray(data)
    bad[first + 16] = 200  # 200 arguments
    assert any("skipped" in w for w in parse_definitions(bytes(bad), section.address).warnings)
    moved = parse_definitions(bytes(data), section.address + 64)  # cookies no longer match
    assert not moved.by_cookie and all("cookie" in w for w in moved.warnings)
    rng = random.Random(9)
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 12)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        parse_definitions(bytes(mutated), section.address)  # never raises
    parse_definitions(bytes(rng.randbytes(5000)) + b"TPde", 0)


# ---- samples ---------------------------------------------------------------------------

@pytest.mark.parametrize("running", [["mix", "40"]], indirect=True)
def test_samples_decode_into_the_event_model_with_names_and_formatted_args(
        running: ProcessTarget) -> None:
    recording = read_unikraft_buffer(running)
    want = expected_events(40)
    events = shown(recording.decoded, recording.tracepoints)
    assert [(e["tracepoint"], e["args"]) for e in events] == [(n, a) for n, a, _ in want]
    assert [e["time_ns"] for e in events] == [1000 * (k + 1) for k in range(len(want))]
    state = recording.buffer
    used = offsets(want)[-1] + HEADER + want[-1][2]
    assert (state.used, state.size, state.free, state.full) == (used, BUFSZ, BUFSZ - used,
                                                                False)
    assert recording.warnings == [] and recording.decoded.damage == []
    assert recording.decoded.truncated is None


@pytest.mark.parametrize("running", [["fill"]], indirect=True)
def test_a_full_buffer_is_said_to_be_full(running: ProcessTarget) -> None:
    recording = read_unikraft_buffer(running)
    fits = BUFSZ // (HEADER + 12)
    events = shown(recording.decoded, recording.tracepoints)
    assert [e["args"] for e in events] == [{"arg1": str(i - 3), "arg2": str(i * 1000 + 1)}
                                           for i in range(fits)]
    assert recording.buffer.full and recording.buffer.used == fits * (HEADER + 12)
    assert any("buffer full: later samples were not recorded" in w
               for w in recording.warnings)


@pytest.mark.parametrize("running", [["mix", "40"]], indirect=True)
def test_damage_is_skipped_and_counted_and_a_wild_write_pointer_reported(
        running: ProcessTarget) -> None:
    recording = read_unikraft_buffer(running)
    uk = recording.tracepoints
    want = expected_events(40)
    at = offsets(want)
    buffer = running.elf.symbol("uk_trace_buffer")
    assert buffer is not None
    data = running.read(buffer.address, recording.buffer.used)

    bad = bytearray(data)
    bad[at[10] : at[10] + 4] = b"XXXX"  # sample 10's magic
    got = decode_samples(bytes(bad), uk)
    assert [(d.offset, d.skipped, d.record_index) for d in got.damage] == \
        [(at[10], at[11] - at[10], 10)]
    assert [e["args"] for e in shown(got, uk)] == [a for _, a, _ in want[:10] + want[11:]]

    bad = bytearray(data)
    struct.pack_into("<I", bad, at[20] + 4, 0xFFFFFFF0)  # sample 20 claims 4 GiB
    got = decode_samples(bytes(bad), uk)
    assert [(d.offset, d.skipped) for d in got.damage] == [(at[20], at[21] - at[20])]
    assert len(got.records) == len(want) - 1

    got = decode_samples(data[: at[30] + 10], uk)  # cut inside sample 30
    assert len(got.records) == 30 and got.truncated is not None
    assert (got.truncated.offset, got.truncated.size) == (at[30], 10)

    writep = running.elf.symbol("uk_trace_buffer_writep")
    assert writep is not None
    running.write(writep.address, struct.pack("<Q", 0xDEAD0000))
    wild = read_unikraft_buffer(running)
    assert any("points outside uk_trace_buffer" in w for w in wild.warnings)
    assert len(wild.decoded.records) == len(want) and wild.decoded.truncated is None
    assert wild.buffer.used == BUFSZ  # the symbol's size, never more


def reference(data: bytes, uk: Any) -> tuple[list[tuple[int, int, tuple[int, ...]]],
                                             list[tuple[int, int]]]:
    """A plain sequential walk with struct (what the decoder must agree with): the
    samples (time, id, argument words) and the damage (offset, bytes)."""
    n, p = len(data), 0
    chain: list[int] = []
    damage: list[tuple[int, int]] = []

    def next_magic(after: int) -> int:
        q = data.find(MAGIC, after)
        return q if q != -1 and q + HEADER <= n else -1

    while p < n:
        if p + HEADER <= n and data[p : p + 4] == MAGIC:
            end = p + HEADER + struct.unpack_from("<I", data, p + 4)[0]
            if end <= n:
                chain.append(p)
                p = end
                continue
            q = next_magic(p + 1)
        else:
            q = next_magic(p)
        if q == -1:
            break
        damage.append((p, q - p))
        p = q
    samples = []
    for p in chain:
        size, time_ns, cookie = struct.unpack_from("<IQQ", data, p + 4)
        u = uk.by_cookie.get(cookie)
        if u is None:
            samples.append((time_ns, -1, ()))
            continue
        at, end, words = p + HEADER, p + HEADER + size, []
        for width, is_string in zip(u.sizes, u.strings, strict=True):
            if is_string:
                length = data[at] if at < end else 0
                words.append(sum(u.strings[: len(words)]))
                at += 1 + length
            else:
                value = int.from_bytes(data[at : at + width], "little",
                                       signed=u.tracepoint.arg_types[len(words)] == 2)
                words.append(value & (1 << 64) - 1)
                at += width
        if at != end:
            damage.append((p, HEADER + size))
            continue
        samples.append((time_ns, u.tracepoint.id, tuple(words)))
    return samples, sorted(damage)


@pytest.mark.parametrize("running", [["mix", "60"]], indirect=True)
def test_hostile_buffers_never_crash_and_agree_with_a_sequential_walk(
        running: ProcessTarget) -> None:
    recording = read_unikraft_buffer(running)
    uk = recording.tracepoints
    buffer = running.elf.symbol("uk_trace_buffer")
    assert buffer is not None
    data = running.read(buffer.address, recording.buffer.used)
    rng = random.Random(17)
    cases = [bytes(rng.randbytes(3000)), MAGIC * 500, bytes(200), data[:23]]
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(mutated) - 8)
            choice = rng.randrange(3)
            if choice == 0:
                mutated[at] = rng.randrange(256)
            elif choice == 1:
                mutated[at : at + 4] = MAGIC
            else:
                struct.pack_into("<I", mutated, at, rng.choice([0, 1, 13, 1 << 31]))
        cases.append(bytes(mutated[: rng.randint(len(mutated) // 2, len(mutated))]))
    started = time.monotonic()
    for case in cases:
        got = decode_samples(case, uk)
        samples, damage = reference(case, uk)
        r = got.records
        ids = [int(i) if int(i) < uk.tracepoints.count else -1 for i in r.id]
        assert [(int(t), i) for t, i in zip(r.tsc, ids, strict=True)] == \
            [(t, i) for t, i, _ in samples]
        for k, (_, i, words) in enumerate(samples):
            if i >= 0:
                assert tuple(int(w) for w in r.args[k, : len(words)]) == words
        assert [(d.offset, d.skipped) for d in got.damage] == damage
    assert time.monotonic() - started < 30


# ---- a real Unikraft image -------------------------------------------------------------

def test_trace_show_on_a_real_unikraft_image_prints_the_app_s_tracepoints() -> None:
    image = str(real_image("UNDEBUG_UNIKRAFT_IMAGE",
        "a Unikraft 0.17 image with CONFIG_LIBUKDEBUG_TRACEPOINTS and its IMAGE.dbg beside it"))
    debug = Path(image + ".dbg")
    assert shutil.which("qemu-system-x86_64") and debug.exists()
    name = "uktrace-real"
    started = undebug("run", "-d", "--name", name, image)
    assert started.code == 0, started.stderr
    try:
        console = wait_for_console(name, "worker-2: iteration 20", timeout=90)
        doc = undebug("trace", "show", name, "--flight-recorder", "--elf", str(debug),
                      "--json")
        assert doc.code == 0, doc.stderr
        from tests.test_schema import check

        shown_doc = doc.json()
        check("trace show", shown_doc)
        events = shown_doc["events"]
        assert events and {e["tracepoint"] for e in events} == {"trace_work"}
        pairs = {(int(e["args"]["arg1"]), int(e["args"]["arg2"])) for e in events}
        printed = {(int(w), int(n)) for w, n in
                   re.findall(r"worker-(\d): iteration (\d+)", console)}
        assert printed and printed <= pairs  # every line the guest printed was traced
        assert {w for w, _ in pairs} == {0, 1, 2}
        times = [e["time_ns"] for e in events]
        assert times == sorted(times)
        plain = undebug("trace", "show", name, "--elf", str(debug))
        assert plain.code == 0, plain.stderr
        assert "no undebug trace stream arrived" in plain.stderr
        assert re.search(r"trace_work  arg1=\d arg2=\d+", plain.stdout)
        stats = undebug("trace", "stats", name, "--elf", str(debug), "--json")
        assert stats.code == 0, stats.stderr
        check("trace stats", stats.json())
        assert stats.json()["buffer"]["samples"] >= len(events)
    finally:
        undebug("kill", name)


# ---- the bridge: samples that undebug's Unikraft library forwards into its stream --------

def _bridge_words(data: bytes, at: int) -> tuple[list[int], int]:
    """The words guest-stubs/unikraft/uk.c's bridge_uk_trace() puts in one uk_tracepoint
    record for the sample at ``at`` (cookie, ns, size, the payload's first 24 bytes as 3
    little-endian words), and where the next sample starts."""
    _, size, ns, cookie = struct.unpack_from("<IIQQ", data, at)
    payload = data[at + HEADER : at + HEADER + min(size, 24)].ljust(24, b"\0")
    return [cookie, ns, size, *struct.unpack("<3Q", payload)], at + HEADER + size


@pytest.mark.parametrize("running", [["mix", "40"]], indirect=True)
def test_forwarded_samples_get_their_definition_s_name_and_arguments(
        running: ProcessTarget) -> None:
    """Real samples in Unikraft's format (the mirror's buffer, live), packed as the
    library packs them: each gets its tracepoint back with the arguments that fit in 24
    bytes; a longer payload keeps those and says it was longer."""
    from tracers.report import _event_args
    from tracers.unikraft.bridge import PAYLOAD_BYTES, decode_bridged

    recording = read_unikraft_buffer(running)
    uk = recording.tracepoints
    data = running.read(running.elf.symbol("uk_trace_buffer").address,  # type: ignore[union-attr]
                        recording.buffer.used)
    want = expected_events(40)
    at = 0
    string_sample: list[int] = []
    for k, (name, args, payload) in enumerate(want):
        words, at = _bridge_words(data, at)
        sample = decode_bridged(words, uk)
        assert sample is not None and sample.tracepoint.name == name
        assert sample.ns == 1000 * (k + 1) and sample.size == payload
        assert payload <= PAYLOAD_BYTES and sample.complete
        assert _event_args(sample.tracepoint, sample.words, sample.text) == (args or {})
        if name == STR_TP:
            string_sample = words
    assert at == recording.buffer.used
    # a payload longer than the 24 bytes sent (the mirror writes none): the same "%s %ld"
    # sample told as a 40-byte string plus the long: no argument fits, and it says so
    longer = [*string_sample[:2], 1 + 40 + 8,
              (string_sample[3] & ~0xFF) | 40, *string_sample[4:]]
    cut = decode_bridged(longer, uk)
    assert cut is not None and cut.tracepoint.name == STR_TP
    assert cut.words == [] and not cut.complete and cut.size == 49
    assert decode_bridged([0xDEAD, 1, 0, 0, 0, 0], uk) is None  # no such definition
    assert decode_bridged([1, 2, 3], uk) is None
