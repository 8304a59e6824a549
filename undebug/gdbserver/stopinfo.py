"""What the debugger is told about a stop and about each thread, gdb's way and LLDB's.

gdb reads the stopped thread and the reason from the stop reply (``T05thread:ID;core:N;``
and ``swbreak:``/``hwbreak:``/``watch:ADDR``), and every thread's name from
``qXfer:threads:read`` (:meth:`~undebug.gdbserver.threads.ThreadView.xml`). LLDB 14 never
reads ``qXfer:threads`` nor ``qThreadExtraInfo``: it takes names from ``jThreadsInfo``
(one JSON array of every thread, asked after each stop), or, failing that, from
``qThreadStopInfo`` (a T reply per thread) and the ``name``/``hexname`` key of a stop
reply. So a stop reply carries ``hexname`` (gdb skips keys it does not know), and a
thread that did not stop gets signal 0 (no stop reason in LLDB's ``thread list``).

Names are escaped for a terminal already (:class:`~undebug.gdbserver.threads.ProxyThread`);
here they are hex-encoded (T replies) or JSON-escaped.
"""

from __future__ import annotations

import json

from undebug.gdb.registers import encode_register
from undebug.gdb.tdesc import Register
from undebug.gdbserver.backend import Stop
from undebug.gdbserver.threads import ProxyThread, ThreadView
from undebug.gdbserver.wire import to_hex_text

__all__ = ["EXPEDITED", "stop_reply", "thread_stop_info", "threads_info"]

EXPEDITED = ("rip", "rsp", "rbp")  # sent with every thread: LLDB unwinds without asking


def stop_reply(stop: Stop, thread: ProxyThread, hardware: bool | None = None) -> bytes:
    """``T`` + signal, the thread that stopped (a guest thread), its vCPU, its name, why:
    ``watch:ADDR`` (or ``rwatch``/``awatch``), else ``hwbreak:``/``swbreak:`` when
    ``hardware`` is known (None: no breakpoint, or the client takes no stop reasons)."""
    reply = f"T{stop.signal:02x}thread:{thread.gdb_id:x};"
    if thread.cpu is not None:
        reply += f"core:{thread.cpu:x};"
    reply += f"hexname:{to_hex_text(thread.name).decode()};"
    if stop.watch is not None:
        reply += f"{stop.watch[0]}:{stop.watch[1]:x};"
    elif hardware is not None:
        reply += "hwbreak:;" if hardware else "swbreak:;"
    return reply.encode()


def _stopped(view: ThreadView, stop: Stop, thread: ProxyThread) -> bool:
    return view.on_cpu(stop.cpu) is thread


def thread_stop_info(view: ThreadView, stop: Stop, thread: ProxyThread,
                     hardware: bool | None = None) -> bytes:
    """``qThreadStopInfo``: the stop reply for the thread that stopped, ``T00`` (no
    reason) with the name for every other one."""
    if _stopped(view, stop, thread):
        return stop_reply(stop, thread, hardware)
    return stop_reply(Stop(0), thread)


def threads_info(view: ThreadView, stop: Stop, layout: tuple[Register, ...]) -> bytes:
    """``jThreadsInfo``: every thread's id, name, signal (only the stopped one has one)
    and the registers an unwind starts from, as LLDB's debugserver sends them."""
    by_name = {reg.name: reg for reg in layout}
    rows: list[dict[str, object]] = []
    for thread in view.threads:
        row: dict[str, object] = {"tid": thread.gdb_id, "name": thread.name}
        if thread.cpu is not None:
            row["core"] = thread.cpu
        if _stopped(view, stop, thread):
            row["signal"] = stop.signal  # a SIGTRAP at a breakpoint: LLDB finds which
            if stop.watch is not None:
                row["reason"] = "watchpoint"
                row["description"] = f"{stop.watch[1]} 0"  # LLDB: "ADDRESS INDEX"
        registers = {str(by_name[name].regnum): encode_register(value, by_name[name])
                     for name in EXPEDITED
                     if name in by_name and (value := thread.registers.get(name)) is not None}
        if registers:
            row["registers"] = registers
        rows.append(row)
    return json.dumps(rows, separators=(",", ":")).encode()
