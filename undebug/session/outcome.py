"""How a guest ended, told from what QEMU reports: events, run state, exit status.

One place turns QEMU's signals into the verdict ``run --ci`` exits with and ``ps``
shows, so every front end agrees on what "crashed" means.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass
from typing import Any

from undebug.vm.qemu import guest_exit_code

__all__ = ["Outcome", "from_adopted_exit", "from_crash_stop", "from_exit_status", "from_panic",
           "from_shutdown", "from_supervisor_death", "from_timeout"]


@dataclass(frozen=True)
class Outcome:
    """The end of a guest. ``ok`` is what a CI job cares about."""

    kind: str  # exit, panic, reset, shutdown, timeout, killed, qemu-error
    reason: str  # one line for a person; may hold guest text: escape before printing
    ok: bool
    exit_code: int | None = None  # the guest's own code (isa-debug-exit), when it gave one
    run_state: str | None = None  # QEMU's run state when the end was seen (None: exited)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _with_console(reason: str, console: str | None) -> str:
    return f"{reason}: {console}" if console else reason


def from_panic(console: str | None, run_state: str | None) -> Outcome:
    """pvpanic fired: QEMU paused the guest (``panic=pause``)."""
    return Outcome("panic", _with_console("guest panicked", console), False, None, run_state)


def from_crash_stop(location: str, console: str | None) -> Outcome:
    """The guest reached its OS's crash path (a ``crash`` breakpoint) and was stopped
    there, before the OS could end QEMU; it is kept paused."""
    return Outcome("panic", _with_console(f"guest crashed (stopped at {location})", console),
                   False, None, "paused")


def from_shutdown(event: dict[str, Any], console: str | None, run_state: str | None) -> Outcome:
    """A QMP SHUTDOWN event. With ``reboot=shutdown``, a triple fault arrives as a
    guest-reset shutdown; a guest power-off as guest-shutdown (QEMU then pauses)."""
    reason = str(event.get("reason", "unknown"))
    if event.get("guest") and reason == "guest-reset":
        return Outcome("reset", _with_console(
            "guest reset itself (triple fault or reboot request)", console), False, None, run_state)
    if event.get("guest") and reason == "guest-shutdown":
        return Outcome("shutdown", "guest powered off", True, 0, run_state)
    if event.get("guest"):
        return Outcome("shutdown", f"guest shut down ({reason})", False, None, run_state)
    return Outcome("killed", f"QEMU was shut down by the host ({reason})", False, None, run_state)


def from_exit_status(status: int, qemu_error: str | None, console: str | None) -> Outcome:
    """QEMU's process ended. Odd statuses carry the guest's isa-debug-exit code."""
    if status < 0:
        reason = f"QEMU was killed by signal {-status} ({_signal_name(-status)})"
        if qemu_error:  # an abort: QEMU's own assertion (e.g. a TCG watchpoint bug)
            reason += f"; its last line on stderr: {qemu_error}"
        return Outcome("killed", reason, False)
    code = guest_exit_code(status)
    if qemu_error:
        return Outcome("qemu-error", f"QEMU failed (status {status}): {qemu_error}", False)
    if code == 0:
        return Outcome("exit", "guest exited with code 0", True, 0)
    if code is not None:
        return Outcome("exit", _with_console(f"guest exited with code {code}", console), False, code)
    return Outcome("killed", f"QEMU exited with status {status}", False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def from_adopted_exit(reason: str) -> Outcome:
    """An adopted QEMU (``attach``) went away: it is not our child, so its exit status
    is unknown; its gdbstub closing is all we see."""
    return Outcome("exit", f"the adopted QEMU has gone (exit status unknown): {reason}", False)


def from_supervisor_death(pid: object) -> Outcome:
    """The supervisor ended without recording an outcome: it was killed (its QEMU dies
    with it, by PR_SET_PDEATHSIG)."""
    return Outcome("killed", f"supervisor died (pid {pid})", False)


def from_silence(seconds: float, last_line: str, run_state: str | None) -> Outcome:
    """``run --ci --hang-after``: the trace stream went quiet (the guest hangs)."""
    return Outcome("hang", f"no trace record for {seconds:g} s (guest paused); last console "
                   f"line: {last_line}", False, None, run_state)


def from_timeout(seconds: float, last_line: str, run_state: str | None) -> Outcome:
    """``run --ci --timeout`` passed: a hang, or a guest that never boots."""
    return Outcome("timeout", f"no shutdown within {seconds:g} s (guest paused); last console "
                   f"line: {last_line}", False, None, run_state)
