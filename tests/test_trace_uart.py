"""The byte-at-a-time fallback transport under overload: the reference guest (real QEMU,
TCG, -smp 2) streams over the 16550 UART (COM2, a file here) while two CPUs flood.

The flusher runs from the timer tick; it sends at most UNDEBUG_FLUSH_BUDGET bytes of
whole records per poll (before: everything up to head, up to a whole 512 KiB ring from
one timer interrupt), so a poll stays short and the rest waits in the rings, whose
producers drop and count what no longer fits. The guest reports the flusher's counters;
the host checks that nothing went missing silently: every gap in the sequence numbers is
a LOST record, no damage, and the file holds at least the bytes the guest says it sent.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tracers.decode import decode_file
from tracers.metadata import load_tracepoints
from tracers.model import TraceModel
from undebug.vm.qemu import find_qemu


def test_uart_flush_has_a_per_poll_budget_and_loss_is_counted(guest_image: Path,
                                                              tmp_path: Path) -> None:
    console, trace = tmp_path / "console.log", tmp_path / "uart.utrace"
    command = [find_qemu(), "-M", "pc", "-accel", "tcg", "-m", "128", "-smp", "2",
               "-display", "none", "-vga", "none", "-nodefaults", "-no-user-config",
               "-no-reboot", "-serial", f"file:{console}", "-serial", f"file:{trace}",
               "-device", "isa-debug-exit,iobase=0x501,iosize=0x04",
               "-kernel", str(guest_image),
               "-append", "trace=uart threads=2 trace_flood=50000 run_for=3000"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = console.read_text(errors="replace")
    assert "refguest: shutdown code=0" in log, log
    flood = re.search(r"trace_flood done events=(\d+) cycles=\d+ lost=(\d+)", log)
    flush = re.search(r"trace flush polls=(\d+) deferred=(\d+) stalled=(\d+) bytes=(\d+) "
                      r"max_poll_us=(\d+)", log)
    assert flood and flush, log
    events, guest_lost = int(flood[1]), int(flood[2])
    polls, deferred, _stalled, sent, max_poll_us = (int(x) for x in flush.groups())
    assert events == 100_000
    # the budget at work: polls left bytes for later, and none took long
    assert polls > 0 and deferred > 0
    assert max_poll_us < 200_000, max_poll_us  # 2 KiB, not a 512 KiB ring per tick

    tps = load_tracepoints(guest_image)
    decoded = decode_file(trace, tracepoint_count=tps.count)
    assert decoded.problem is None and decoded.damage == []  # whole records, never mixed
    [session] = decoded.sessions
    assert session.header.transport_name == "uart"
    assert trace.stat().st_size >= sent  # what the guest sent when the flood ended is there
    loss = TraceModel(decoded, tps).loss()
    assert {x.cpu for x in loss} == {0, 1}
    assert all(x.agree and x.damage_gaps == 0 for x in loss), loss
    # the overload was real, and every record dropped is counted in band
    host_lost = sum(x.gaps for x in loss)
    assert host_lost == sum(x.lost_records for x in loss) >= guest_lost > 0
