"""A guest's end as its OS means it: the crash in words, and what its exit code says.

The supervisor tells an outcome from QEMU's signals alone (it is OS-agnostic); the front
ends that show a verdict (``run``, ``ps``, ``wait``) ask the OS provider here, through
the guest's ELF and, for a crashed guest kept paused, through Target.
"""

from __future__ import annotations

import dataclasses

from undebug.errors import UndebugError
from undebug.session.outcome import Outcome
from undebug.text import escape

__all__ = ["os_outcome"]


def os_outcome(outcome: Outcome, name: str, elf: str | None) -> Outcome:
    """``outcome`` with the OS's reading: an exit code's meaning (Unikraft: 42 is a crash),
    or, for a crashed guest still paused, the reason in words ("page fault writing 0x0 in
    do_work (main.c:41), thread worker-1") in place of QEMU's."""
    from undebug.elf import ElfFile
    from undebug.os import provider_class

    try:
        provider = provider_class(ElfFile(elf)) if elf else None
    except UndebugError:
        return outcome  # no usable ELF: QEMU's word stands
    if provider is None:
        return outcome
    if outcome.kind == "exit" and outcome.exit_code is not None:
        verdict = provider.exit_verdict(outcome.exit_code)
        if verdict is not None:
            return dataclasses.replace(outcome, ok=verdict[0], reason=verdict[1])
        return outcome
    if outcome.ok or outcome.run_state is None:
        return outcome
    reason = _crash_reason(name)
    return dataclasses.replace(outcome, reason=reason) if reason else outcome


def _crash_reason(name: str) -> str | None:
    """The provider's words; for a panic (no exception) with the console's panic line, the
    one place its message is ("PANIC: assertion failed: refcount > 0 at main.c:270")."""
    from undebug.console import crash_line
    from undebug.os import provider_for
    from undebug.session.store import SessionDir
    from undebug.target import open_target

    try:
        with open_target(name, force=True) as target:
            crash = provider_for(target).crash()
    except UndebugError:
        return None  # unreadable now: QEMU's word stands
    except Exception:  # a provider's bug on hostile guest memory must not turn the
        return None    # verdict "the guest crashed" (exit 1) into undebug's own (exit 4)
    if crash is None:
        return None
    line = crash_line(SessionDir.named(name).console_log) if crash.vector is None else None
    return f"{crash.reason}: {escape(line)}" if line else crash.reason
