"""Guest threads as the debugger sees them at one stop: ids, names, registers.

QEMU's gdbstub knows only vCPUs. The server shows the guest OS's own threads instead (from
the injected :data:`~undebug.gdbserver.backend.ThreadProvider`), under the guest's own
thread ids, so that ``info threads`` and ``undebug threads`` agree. A thread on a vCPU has
that vCPU's registers; a sleeping one has the context it saved (rip, rsp, rbp and the
callee-saved registers on x86-64), and every other register is sent as unavailable
(``xx``). A vCPU that runs no known guest thread (early boot, no OS awareness) appears as
a thread of its own, ``vCPU N``.

Names are guest text: control characters are escaped before they reach the debugger, which
shows them raw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

from undebug.errors import UndebugError
from undebug.gdbserver.backend import ThreadProvider
from undebug.target import Target
from undebug.text import escape

__all__ = ["ProxyThread", "ThreadView"]

log = logging.getLogger("undebug.gdbserver")

MAX_GDB_ID = 0x3FFFFFFF  # guest ids above this (or 0, or repeated) get a substitute
VCPU_THREAD_BASE = 0x40000000  # + vCPU index: a vCPU that runs no known guest thread
SUBSTITUTE_BASE = 0x50000000  # + position in the list: a guest id gdb cannot take


@dataclass(frozen=True)
class ProxyThread:
    gdb_id: int  # what the debugger calls it: the guest's id when it can be used
    guest_id: int | None  # None for a vCPU that runs no known guest thread
    name: str  # escaped: safe to show
    state: str  # "sleeping", "running on vCPU 1", "blocked (event)", ...
    cpu: int | None  # the vCPU running it now
    registers: dict[str, int] = field(repr=False)


class ThreadView:
    """The threads at one stop (one run token). Build it with :meth:`from_target`."""

    def __init__(self, threads: list[ProxyThread], warnings: list[str]) -> None:
        self.threads = threads
        self.warnings = warnings
        self._by_id = {t.gdb_id: t for t in threads}
        self._by_cpu = {t.cpu: t for t in threads if t.cpu is not None}
        self._xml: bytes | None = None

    @classmethod
    def from_target(cls, target: Target, provider: ThreadProvider) -> ThreadView:
        warnings: list[str] = []
        threads: list[ProxyThread] = []
        try:
            snapshot = provider(target)
        except UndebugError as exc:
            warnings.append(f"no guest threads ({exc.message}): showing the vCPUs instead")
        else:
            warnings += snapshot.warnings
            used: set[int] = set()
            for index, t in enumerate(snapshot.threads):
                gdb_id = t.id
                if not 0 < gdb_id <= MAX_GDB_ID or gdb_id in used:
                    gdb_id = SUBSTITUTE_BASE + index
                    warnings.append(f"guest thread id {t.id} ({escape(t.name)}) is unusable "
                                    f"(zero, repeated or too large): shown as {gdb_id}")
                used.add(gdb_id)
                state = t.state if t.cpu is None else f"{t.state} on vCPU {t.cpu}"
                if t.wait_reason and t.wait_reason.startswith(t.state):
                    state = escape(t.wait_reason)  # "sleeping until +12.3 ms" says it all
                elif t.wait_reason:
                    state += f" ({escape(t.wait_reason)})"
                threads.append(ProxyThread(gdb_id, t.id, escape(t.name), state, t.cpu,
                                           dict(t.registers)))
        running = {t.cpu for t in threads if t.cpu is not None}
        try:
            cpus = target.cpu_count()
        except UndebugError as exc:
            warnings.append(f"cannot read the vCPUs: {exc.message}")
            cpus = 0
        for cpu in range(cpus):
            if cpu not in running:
                threads.append(ProxyThread(VCPU_THREAD_BASE + cpu, None, f"vCPU {cpu}",
                                           "running no known guest thread", cpu,
                                           dict(target.registers(cpu))))
        return cls(threads, warnings)

    def get(self, gdb_id: int) -> ProxyThread | None:
        return self._by_id.get(gdb_id)

    def on_cpu(self, cpu: int | None) -> ProxyThread | None:
        """The thread running on vCPU ``cpu`` (None: vCPU 0's, else the first thread)."""
        if cpu is None:
            cpu = 0
        thread = self._by_cpu.get(cpu)
        if thread is None and self.threads:
            thread = self._by_cpu.get(min(self._by_cpu)) if self._by_cpu else self.threads[0]
        return thread

    def xml(self) -> bytes:
        """The ``qXfer:threads:read`` document: ids, names, vCPUs ("core") and states."""
        if self._xml is None:
            rows = []
            for t in self.threads:
                core = f' core="{t.cpu:x}"' if t.cpu is not None else ""
                rows.append(f'<thread id="{t.gdb_id:x}"{core} name={quoteattr(t.name)}>'
                            f"{xml_escape(t.state)}</thread>")
            self._xml = ('<?xml version="1.0"?>\n<threads>\n' + "\n".join(rows)
                         + "\n</threads>\n").encode()
        return self._xml
