"""Recordings capped in rotated chunks (tracers/chunks.py, FORMAT.md section 10) and the
readers that take a stream batch by batch with bounded memory (tracers/summary.py, the
``trace show``/``trace stats`` CLI): on streams built here by the test encoder.

* every chunk decodes alone; read oldest first they are the newest bytes of the stream,
  one session, and ``trace stats`` counts what rotation dropped;
* stats folded over small batches equal stats of the whole stream at once (loss per CPU
  too, including a drop of more than 65535 records across a batch boundary);
* what is not a trace (``/dev/zero``) is refused with the reason;
* the readers' peak memory does not grow with the file (32 MB vs 256 MB).
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import undebug
from tests.test_trace_decode import Encoder
from tracers.channel import FileChannel
from tracers.chunks import CHUNK_COUNT, CONTINUED, ChunkWriter, chunk_paths
from tracers.decode import StreamDecoder, decode, decode_file
from tracers.model import TraceModel
from tracers.summary import StatsAccumulator


def long_stream(events: int, seed: int = 7) -> Encoder:
    """Two CPUs, SYNCs every 200 records of a CPU (the stub: 4096), drops now and then."""
    rnd = random.Random(seed)
    enc = Encoder(2).header(header_tsc=2_000_000_000_100)
    for cpu in (0, 1):
        enc.sync(cpu)
        enc.thread_name(cpu, cpu + 1, f"worker-{cpu}".encode())
    for _ in range(events):
        cpu = rnd.randrange(2)
        if enc.seq[cpu] % 200 == 0:
            enc.sync(cpu)
        if rnd.random() < 0.002:
            enc.drop(cpu, rnd.randrange(1, 9))
            enc.sync(cpu)
        enc.event(rnd.randrange(4), cpu, *range(rnd.randrange(5)))
    return enc


def write_in_pieces(path: Path, data: bytes, max_size: int) -> ChunkWriter:
    """As the supervisor does: whatever pieces the socket returns."""
    rnd = random.Random(3)
    writer = ChunkWriter(path, max_size)
    writer.anchor('{"offset": 0, "received_unix_ns": 1700000000000000000}\n')
    at = 0
    while at < len(data):
        n = rnd.randrange(1, 20_000)
        writer.write(data[at : at + n])
        at += n
    writer.close()
    return writer


def test_a_capped_recording_keeps_the_newest_chunks_and_each_decodes_alone(
        tmp_path: Path) -> None:
    data = long_stream(60_000).bytes()
    path = tmp_path / "capped.utrace"
    writer = write_in_pieces(path, data, 256 << 10)
    chunks = chunk_paths(path)
    assert 2 <= len(chunks) <= CHUNK_COUNT and chunks[-1][1] == path
    newest = chunks[-1][0]
    assert writer.dropped.dropped_chunks == newest - len(chunks) > 0
    sizes = [p.stat().st_size for _, p in chunks]
    # every byte was written once, plus a header copy at the start of every later chunk
    assert writer.dropped.dropped_bytes + sum(sizes) == len(data) + 80 * (newest - 1)
    # the full chunks leave the one being written its share of the cap
    assert sum(sizes[:-1]) <= (256 << 10) * (CHUNK_COUNT - 1) // CHUNK_COUNT
    for _, chunk in chunks:
        alone = decode_file(chunk)
        assert alone.problem is None and alone.damage == [] and alone.truncated is None
        assert len(alone.sessions) == 1 and alone.sessions[0].header.flags & CONTINUED
        assert (chunk.parent / (chunk.name + ".anchors")).exists()

    # read oldest first, the chunks are the newest bytes of the stream, as one session
    with FileChannel(path) as channel:
        joined = b"".join(iter(channel.read, b""))
        anchors = channel.anchors()
    assert anchors == {0: 1700000000000000000}
    body = joined[80:]
    assert data.endswith(body) and len(body) % 16 == 0 and len(body) > 3 * (64 << 10)
    assert data[:12] == joined[:12] and data[16:80] == joined[16:80]  # the header, flagged

    # trace stats of the chunks == trace stats of the same bytes in one plain file
    plain = tmp_path / "plain.utrace"
    plain.write_bytes(joined)
    chunked = undebug("trace", "stats", str(path), "--json")
    single = undebug("trace", "stats", str(plain), "--json")
    assert chunked.code == 0 and single.code == 0, chunked.stderr + single.stderr
    a, b = chunked.json(), single.json()
    for key in ("records", "events", "tracepoints", "threads", "loss", "damage", "duration_s"):
        assert a[key] == b[key], key
    assert len(a["sessions"]) == 1 and a["damage"] == []
    assert all(x["agree"] and x["lost_gaps"] > 0 for x in a["loss"])
    assert a["rotation"]["dropped_chunks"] == writer.dropped.dropped_chunks
    assert a["rotation"]["dropped_bytes"] == writer.dropped.dropped_bytes
    assert b["rotation"] is None
    text = undebug("trace", "stats", str(path))
    assert f"oldest {writer.dropped.dropped_chunks} chunk(s)" in text.stderr


def test_an_unbounded_recording_is_one_file(tmp_path: Path) -> None:
    data = long_stream(20_000).bytes()
    path = tmp_path / "all.utrace"
    write_in_pieces(path, data, 0)
    assert chunk_paths(path) == [(1, path)] and path.read_bytes() == data


def test_stats_folded_over_small_batches_equal_the_whole_stream() -> None:
    enc = long_stream(30_000, seed=11)
    enc.drop(1, 70_000)  # more than 16 bits can show: only the SYNCs around it tell
    enc.sync(1)
    for i in range(500):
        enc.event(1, i % 2, i)
    data = enc.bytes()
    whole = TraceModel(decode(data))
    decoder = StreamDecoder()
    acc = StatsAccumulator(None)
    batches = 0
    for at in range(0, len(data), 4099):  # batch edges fall inside records, anywhere
        acc.add(TraceModel(decoder.feed(data[at : at + 4099])))
        batches += 1
    acc.add(TraceModel(decoder.finish()))
    assert batches > 100
    assert acc.records == len(whole.records) and acc.events == int(whole.is_event.sum())
    assert acc.counts_by_tracepoint() == whole.counts_by_tracepoint()
    assert acc.counts_by_thread() == whole.counts_by_thread()
    assert acc.loss.result() == whole.loss()
    cpu1 = next(x for x in whole.loss() if x.cpu == 1)
    assert cpu1.gaps >= 70_000 and cpu1.agree
    assert acc.duration_s(whole.sessions) == pytest.approx(whole.duration_s(), abs=1e-9)


def test_dev_zero_is_not_a_trace() -> None:
    for command in ("show", "stats"):
        result = undebug("trace", command, "/dev/zero", timeout=20)
        assert result.code == 2, result.stderr
        assert "not an undebug trace" in result.stderr and "UDBTRACE magic" in result.stderr
        assert "empty" not in result.stderr


def test_a_header_copy_is_flagged_in_the_flags_field() -> None:
    """FORMAT.md section 10: bit 2 of the header's flags marks a chunk's copy."""
    head = Encoder(1).header(flags=1 | CONTINUED).bytes()
    assert struct.unpack_from("<I", head, 12)[0] == 5
    [session] = decode(head).sessions
    assert session.header.flags & CONTINUED and session.header.streaming


def peak_rss_mib(*args: str) -> float:
    """Run the CLI and return its peak resident set: the VmHWM of its own address space,
    read until it exits. Not its rusage: ru_maxrss survives exec, so a child forked from
    a test process that has grown (the whole suite loaded) reports the parent's size."""
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    where = Path(f"/proc/{proc.pid}")
    peak = 0
    while proc.poll() is None:
        try:  # before its exec the child is still a copy of this process: skip that
            if b"undebug.cli" in (where / "cmdline").read_bytes():
                for line in (where / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert peak > 0
    return peak / 1024


def test_stats_and_show_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    from bench.decode import write_stream

    files = {}
    for events in (125_000, 1_000_000, 8_000_000):  # 4 MB, 32 MB, 256 MB
        files[events] = tmp_path / f"{events}.utrace"
        write_stream(files[events], events)
    # before: stats took ~800 MB for the 256 MB file, show --json ~2 GB for the 32 MB one
    for command, small, large in ((["stats", "--json"], 1_000_000, 8_000_000),
                                  (["show", "--json", "--filter", "none"], 125_000, 1_000_000)):
        a = peak_rss_mib("trace", command[0], str(files[small]), *command[1:])
        b = peak_rss_mib("trace", command[0], str(files[large]), *command[1:])
        assert b < a + 40 and b < 200, (command, a, b)


def test_cli_stats_over_many_windows_equal_the_whole_stream_at_once(tmp_path: Path) -> None:
    """A damaged, lossy stream of ~3 stats windows through the CLI (one buffer refilled,
    arrays reused) counts what decoding it whole counts."""
    data = bytearray(long_stream(400_000, seed=5).bytes())
    rnd = random.Random(9)
    for _ in range(6):  # damage here and there, across window edges too
        at = rnd.randrange(1000, len(data) - 1000)
        data[at : at + 7] = b"\xee" * 7
    path = tmp_path / "damaged.utrace"
    path.write_bytes(bytes(data))
    assert len(data) > 2 * (4 << 20)
    whole = TraceModel(decode(bytes(data)))
    result = undebug("trace", "stats", str(path), "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["damage"] == [{"offset": d.offset, "skipped": d.skipped,
                              "record_index": d.record_index, "reason": d.reason}
                             for d in whole.decoded.damage] != []
    assert doc["records"] == len(whole.records)
    assert {t["id"]: t["count"] for t in doc["tracepoints"]} == whole.counts_by_tracepoint()
    assert [(x["cpu"], x["records"], x["lost_gaps"], x["lost_records"], x["damage_gaps"],
             x["agree"]) for x in doc["loss"]] == \
        [(x.cpu, x.records, x.gaps, x.lost_records, x.damage_gaps, x.agree)
         for x in whole.loss()]


def test_show_json_is_one_document_when_the_stream_header_comes_late(tmp_path: Path) -> None:
    """Junk before the stream header, more than a show window of it: the events and spans
    still form one JSON document, with the junk reported as damage."""
    enc = Encoder(1).header()
    for i in range(3000):
        enc.event(1, 0, i)
    path = tmp_path / "late.utrace"
    path.write_bytes(random.Random(2).randbytes(3 << 20) + enc.bytes())
    result = undebug("trace", "show", str(path), "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert [e["words"][0] for e in doc["events"]] == list(range(3000))
    assert doc["damage"][0]["offset"] == 0 and doc["spans"] == []
    assert len(doc["sessions"]) == 1 and doc["sessions"][0]["offset"] >= 3 << 20


def test_follow_goes_on_across_rotations(tmp_path: Path) -> None:
    """``trace show -f`` of a recording that rotates while it is read prints every event
    once, in order per CPU, and no damage (the joined chunks are the stream)."""
    import signal
    import threading
    import time

    enc = Encoder(2).header()
    expected: dict[int, list[int]] = {0: [], 1: []}
    for i in range(12_000):
        cpu = i % 2
        if enc.seq[cpu] % 200 == 0:
            enc.sync(cpu)
        enc.event(1, cpu, i)
        expected[cpu].append(i)
    data = enc.bytes()
    path = tmp_path / "rotating.utrace"
    writer = ChunkWriter(path, 256 << 10)
    writer.write(data[:80])

    def write_slowly() -> None:
        for at in range(80, len(data), 4000):
            writer.write(data[at : at + 4000])
            time.sleep(0.01)
        writer.close()

    printed = tmp_path / "printed.txt"
    with printed.open("w") as sink:  # a file: a pipe nobody reads would block the follower
        follower = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "show",
                                     "-f", str(path)], stdout=sink, stderr=subprocess.PIPE,
                                    text=True)
        time.sleep(1)  # it has started (and is reading the first chunk)
        thread = threading.Thread(target=write_slowly)
        thread.start()
        thread.join()
        time.sleep(2)  # the follower polls every 0.1 s
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    out = printed.read_text()
    assert writer.dropped.dropped_chunks > 0  # it did rotate under the reader
    assert "damage" not in out and out.count("-- session") == 1
    seen: dict[int, list[int]] = {0: [], 1: []}
    for line in out.splitlines():
        if " tp#1 " in line:
            cpu = int(line.split()[1][3:])
            seen[cpu].append(int(line.split("a0=")[1].split()[0], 16))
    assert seen == expected


def test_a_reader_that_fell_behind_goes_on_with_the_oldest_chunk_left(tmp_path: Path) -> None:
    """The chunk being read is rotated and deleted before the reader notices: it reads
    what it holds open, then goes on with the oldest chunk left (a new session there)."""
    data = long_stream(60_000).bytes()
    path = tmp_path / "behind.utrace"
    writer = ChunkWriter(path, 256 << 10)
    writer.write(data[:1000])
    channel = FileChannel(path)
    first = channel.read(500)
    writer.write(data[1000:])  # many rotations: the chunk the reader holds is deleted
    writer.close()
    joined = first + b"".join(iter(channel.read, b""))
    assert channel.skipped_chunks > 0
    assert joined.startswith(data[:1000])
    decoded = decode(joined)
    assert decoded.damage == [] and decoded.truncated is None and len(decoded.sessions) == 2
    rest = joined[decoded.sessions[1].offset + 80 :]
    assert data.endswith(rest)  # from the oldest chunk left to the end
    channel.close()


def test_a_recording_of_another_build_is_refused_unless_forced(tmp_path: Path,
                                                                guest_image: Path) -> None:
    """One rule for show (followed too), stats and export: exit 2 naming both build-ids;
    --force names the events with the ELF anyway, with a warning."""
    import signal
    import time

    from tracers.metadata import load_tracepoints

    enc = Encoder(1, build_id=b"\x01" * 20).header()  # not the reference guest's
    enc.event(1, 0, 7)
    path = tmp_path / "other.utrace"
    path.write_bytes(enc.bytes())
    elf = load_tracepoints(guest_image)
    for command in (["show"], ["show", "-f"], ["stats"],
                    ["export", "--otlp-json", str(tmp_path / "o.jsonl")]):
        refused = subprocess.run([sys.executable, "-m", "undebug.cli", "trace", *command,
                                  str(path), "--elf", str(guest_image)],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "build-id mismatch" in refused.stderr and "01" * 20 in refused.stderr
        assert str(elf.build_id) in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "o.jsonl").exists()
    follower = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "show", "-f",
                                 str(path), "--elf", str(guest_image), "--force"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert "build-id mismatch" in err and "--force" in err
    assert f"{elf.by_id[1].name}  " in out and "tp#1" not in out  # named with the ELF
    stats = subprocess.run([sys.executable, "-m", "undebug.cli", "trace", "stats", str(path),
                            "--elf", str(guest_image), "--force", "--json"],
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    assert any("build-id mismatch" in w for w in json.loads(stats.stdout)["warnings"])
