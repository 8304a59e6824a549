"""Live trace flushing on a real reference guest in QEMU (TCG): the stub batches for its
rest interval while nobody follows, and for the supervisor's live one while a real
``undebug trace show --follow`` holds a lease (undebug/session/live_trace.py,
tracers/FORMAT.md 7.1); the stub's parser takes garbage from the host's side of its
trace port without stalling the stream (a QEMU this test starts and feeds itself).

The flush interval is seen from the host twice over: in the spacing of the batches the
recording grows by (each batch one wake-up of the supervisor) and in the guest's own
``undebug_trace_hostmsg.live_ms``, read from its memory at the offset its DWARF gives.
``trace_flush_bytes=1000000`` leaves age as the only trigger, so the spacing is the
interval. The rest interval is the stub's compiled default (trace.h); live is LIVE_MS.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import real_image, supervisor_loop_wakeups_per_s, undebug, wait_for_console
from tests.test_trace_export_otlp import Receiver, receiver  # noqa: F401 (a fixture)
from tracers.decode import decode
from undebug.elf import ElfFile
from undebug.session.live_trace import LIVE_MS, message

REST_MS = 250  # UNDEBUG_FLUSH_MS, guest-stubs/include/undebug/trace.h


def at_rest(spacing_ms: float) -> bool:
    """The rest interval, give or take a loaded host's late timer ticks (under TCG a
    descheduled vCPU polls late); live (LIVE_MS) is an order of magnitude below."""
    return 0.8 * REST_MS < spacing_ms < 2.5 * REST_MS


def live(spacing_ms: float) -> bool:
    return spacing_ms < 4 * LIVE_MS
APPEND = "threads=3 trace_flush_bytes=1000000"


def _spacing_ms(times: list[float]) -> float:
    """Median gap between batches: arrivals closer than 8 ms are one batch (QEMU may
    hand one batch to the socket in a few writes)."""
    starts = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.008]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 3, f"too few batches to measure: {times}"
    return statistics.median(gaps)


def recording_spacing_ms(name: str, seconds: float = 3.0) -> float:
    """The batch spacing of guest ``name``, from its recording's growth."""
    path = Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / name / "trace.utrace"
    last, times = path.stat().st_size, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        size = path.stat().st_size
        if size != last:
            times.append(time.monotonic())
            last = size
        time.sleep(0.002)
    return _spacing_ms(times)


def live_ms_in_guest(name: str, elf: Path) -> int:
    """``undebug_trace_hostmsg.live_ms`` as the guest holds it (0: at rest)."""
    image = ElfFile(elf)
    layout = image.struct("undebug_hostmsg_parser")
    assert layout is not None
    member = layout.member("live_ms")
    result = undebug("mem", name, "undebug_trace_hostmsg", str(layout.size), "--json")
    assert result.code == 0, result.stderr
    raw = bytes.fromhex(result.json()["hex"])
    return int.from_bytes(raw[member.offset: member.offset + member.size], "little")


def flush_status(name: str) -> dict[str, object]:
    [guest] = [g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name]
    flush = guest["trace"]["flush"]
    assert isinstance(flush, dict)
    return flush


def wait_for_consumers(name: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while flush_status(name)["live_consumers"] != count:
        assert time.monotonic() < deadline, flush_status(name)
        time.sleep(0.1)


class Follower:
    """A real ``undebug trace show NAME --follow``, its output's arrival times kept."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "show",
                                      name, "--follow"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.arrivals: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 1 << 16):
            if b"handle_request" in chunk:
                self.arrivals.append(time.monotonic())

    def stop(self, signum: int) -> None:
        self.proc.send_signal(signum)
        self.proc.wait(timeout=20)
        self.thread.join(timeout=5)


@pytest.fixture
def resting_guest(guest_image: Path) -> Iterator[str]:
    name = "lease"
    assert undebug("run", "-d", "--name", name, "--append", APPEND,
                   str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")
        time.sleep(0.5)
        yield name
    finally:
        undebug("kill", name)


def test_a_follower_makes_the_guest_flush_live_until_the_last_one_goes(
        resting_guest: str, guest_image: Path) -> None:
    name = resting_guest
    assert flush_status(name) == {"mode": "rest", "live_consumers": 0, "live_ms": LIVE_MS,
                                  "unsent": 0}
    assert at_rest(recording_spacing_ms(name))
    assert live_ms_in_guest(name, guest_image) == 0

    first = Follower(name)
    second: Follower | None = None
    try:
        wait_for_consumers(name, 1)
        assert flush_status(name)["mode"] == "live"
        assert live_ms_in_guest(name, guest_image) == LIVE_MS
        assert live(recording_spacing_ms(name))
        # following wakes the stream's thread, never the event loop (no connect per poll)
        assert supervisor_loop_wakeups_per_s(name) < 3
        # the follower prints the events as the batches come
        seen = len(first.arrivals)
        time.sleep(2)
        assert _spacing_ms(first.arrivals[seen:]) < 100

        second = Follower(name)
        wait_for_consumers(name, 2)
        first.stop(signal.SIGKILL)  # a reader killed: its connection's end releases it
        wait_for_consumers(name, 1)
        assert flush_status(name)["mode"] == "live"
        assert live_ms_in_guest(name, guest_image) == LIVE_MS
        assert live(recording_spacing_ms(name))

        second.stop(signal.SIGINT)
        wait_for_consumers(name, 0)
        assert flush_status(name)["mode"] == "rest"
        assert live_ms_in_guest(name, guest_image) == 0
        assert at_rest(recording_spacing_ms(name))
    finally:
        for f in (first, second):
            if f is not None and f.proc.poll() is None:
                f.stop(signal.SIGKILL)


def test_a_live_otlp_export_holds_the_lease_too(resting_guest: str,
                                                receiver: Receiver) -> None:  # noqa: F811
    """``trace export --otlp URL --follow`` (what ``run --otlp`` starts) is a live reader."""
    name = resting_guest
    export = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "export", name,
                               "--otlp", receiver.url, "--follow"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_consumers(name, 1)
        assert live(recording_spacing_ms(name))
    finally:
        export.send_signal(signal.SIGINT)
        export.wait(timeout=30)
    wait_for_consumers(name, 0)
    assert at_rest(recording_spacing_ms(name))


def test_the_tuis_trace_pane_holds_the_lease_only_while_its_events_are_watched(
        resting_guest: str) -> None:
    from tui.trace_follow import TraceFollower

    follower = TraceFollower(resting_guest)
    try:
        follower.hold_live(True)
        follower.hold_live(True)  # every period while watched: still one lease
        wait_for_consumers(resting_guest, 1)
        follower.hold_live(False)  # the pane hidden: only the rate is counted
        wait_for_consumers(resting_guest, 0)
        follower.hold_live(True)
        wait_for_consumers(resting_guest, 1)
    finally:
        follower.close()
    wait_for_consumers(resting_guest, 0)


def test_a_real_unikraft_guest_with_the_library_flushes_live_while_followed() -> None:
    """The same on Unikraft 0.17 with undebug's library (guest-stubs/unikraft/), whose
    poll thread (every 10 ms) reads the host's messages; the image must be built from
    this tree's library (guest-stubs/unikraft/README.md): an older one keeps its rest
    interval and fails here."""
    from tests.test_unikraft_stub import STUB_IMAGE

    image = real_image("UNDEBUG_UNIKRAFT_STUB_IMAGE", STUB_IMAGE)
    name = "uklease"
    assert undebug("run", "-d", "--name", name, str(image)).code == 0
    follower: Follower | None = None
    try:
        wait_for_console(name, "worker-2: iteration 20")
        assert at_rest(recording_spacing_ms(name))
        follower = Follower(name)
        wait_for_consumers(name, 1)
        assert live_ms_in_guest(name, Path(f"{image}.dbg")) == LIVE_MS
        assert live(recording_spacing_ms(name))
        follower.stop(signal.SIGINT)
        wait_for_consumers(name, 0)
        assert live_ms_in_guest(name, Path(f"{image}.dbg")) == 0
        assert at_rest(recording_spacing_ms(name))
    finally:
        if follower is not None and follower.proc.poll() is None:
            follower.stop(signal.SIGKILL)
        undebug("kill", name)


def test_a_follower_ends_with_the_guest_having_printed_its_last_events(
        guest_image: Path) -> None:
    name = "leaseend"
    assert undebug("run", "-d", "--name", name, "--append", "threads=3 run_for=4000",
                   str(guest_image)).code == 0
    follower = None
    try:
        wait_for_console(name, "refguest: ready")
        follower = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "show",
                                     name, "--follow"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        out, err = follower.communicate(timeout=60)  # the guest ends: so does the follower
        assert follower.returncode == 0, err
        last = undebug("trace", "show", name, "--json").json()["events"][-1]["time_ns"]
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        undebug("kill", name)
    assert f" {last // 10**9}.{last % 10**9:09d} " in out.splitlines()[-1]  # the last one


# ---- the host's side of the port fed by the test: garbage, then a real message ----------

def _own_qemu(tmp: Path, image: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    sock_path = tmp / "trace.sock"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-display", "none",
        "-vga", "none", "-nodefaults", "-serial", f"file:{tmp / 'console.log'}",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=trace0,path={sock_path},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=trace0,name=undebug.trace,nr=1",
        "-kernel", str(image), "-append", APPEND])
    deadline = time.monotonic() + 20
    while not sock_path.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(sock_path))
    return proc, sock


def test_garbage_from_the_host_neither_stalls_the_stream_nor_stops_a_later_message(
        tmp_path: Path, guest_image: Path) -> None:
    proc, sock = _own_qemu(tmp_path, guest_image)
    arrivals: list[tuple[float, int]] = []  # (time, bytes so far)
    received = bytearray()

    def read() -> None:
        while chunk := sock.recv(1 << 20):
            received.extend(chunk)
            arrivals.append((time.monotonic(), len(received)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def spacing_over(seconds: float) -> tuple[float, int]:
        start, before = time.monotonic(), len(received)
        time.sleep(seconds)
        times = [t for t, _ in list(arrivals) if t >= start]
        return _spacing_ms(times), len(received) - before

    try:
        deadline = time.monotonic() + 60
        while b"refguest: ready" not in (tmp_path / "console.log").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rest, _ = spacing_over(3)
        assert at_rest(rest), rest

        rng = random.Random(7)
        magic = message(1, 20)[:4]
        bad = [struct.pack("<IBBHII", 0x4C544355, 1, 1, 0, 5000, 0),  # out of range
               struct.pack("<IBBHII", 0x4C544355, 9, 1, 0, 20, 0),  # unknown version
               struct.pack("<IBBHII", 0x4C544355, 1, 7, 0, 20, 0),  # unknown op
               magic * 8 + message(1, 20)[:11]]  # magic runs and a cut-off message
        garbage = bytes(rng.getrandbits(8) for _ in range(64 << 10)) + b"".join(bad)
        sock.sendall(garbage)
        still, grew = spacing_over(3)
        assert grew > 0 and at_rest(still), still  # streaming, at rest

        sock.sendall(message(1, LIVE_MS))
        spacing, grew = spacing_over(3)
        assert grew > 0 and live(spacing), spacing
    finally:
        proc.kill()
        proc.wait(timeout=20)
        reader.join(timeout=5)
        sock.close()
    decoded = decode(bytes(received))
    assert decoded.problem is None and decoded.sessions
    assert decoded.damaged_bytes == 0  # the guest's stream is whole: nothing it sent broke
