"""``summary.json``: what a dump bundle says in words (docs/bundle.md is its reference).

Built at the dump, from the same Target and OS awareness the live commands use: the
reason (the provider's crash reading, else the outcome QEMU gave), the vCPUs, every guest
thread with its backtrace (each frame says how it was found), the last flight-recorder
events, the console tail and a crash signature stable across runs (the faulting thread's
top functions, no addresses), so CI can group repeats of one crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from undebug.errors import UndebugError
from undebug.text import escape

if TYPE_CHECKING:
    from pathlib import Path

    from undebug.os.crash import Crash
    from undebug.os.provider import GuestThread, ThreadProvider
    from undebug.target import Target
    from undebug.unwind import Frame

__all__ = ["backtraces", "crash_signature", "flight_tail", "frame_json", "thread_json"]

SIGNATURE_FRAMES = 5
FLIGHT_TAIL = 50
MAX_FRAMES = 64


def thread_json(target: Target, t: GuestThread) -> dict[str, Any]:
    """A guest thread as ``undebug threads --json`` and summary.json show it."""
    pc = t.registers.get("rip", 0)
    return {"id": t.id, "name": t.name, "state": t.state, "cpu": t.cpu,
            "wait_reason": t.wait_reason, "pc": pc, "function": target.symbolize(pc),
            "stack": list(t.stack) if t.stack else None, "address": t.address}


def frame_json(f: Frame) -> dict[str, Any]:
    """A frame as ``undebug bt --json`` and summary.json show it (``method``: how the
    unwinder found it: registers, cfi, frame-pointer, exception)."""
    out: dict[str, Any] = {"index": f.index, "pc": f.pc, "cfa": f.cfa, "function": f.function,
                           "offset": f.offset, "file": f.file, "line": f.line,
                           "method": f.method}
    if f.trap is not None:  # only the exception frame has the key
        out["exception"] = {"vector": f.trap.vector, "name": f.trap.name,
                            "error_code": f.trap.error_code, "cr2": f.trap.cr2}
    return out


def vcpu_thread(target: Target, cpu: int) -> GuestThread:
    """vCPU ``cpu`` as a thread (the gdbserver's id for it: VCPU_THREAD_BASE + cpu)."""
    from undebug.gdbserver.threads import VCPU_THREAD_BASE
    from undebug.os.provider import GuestThread

    return GuestThread(id=VCPU_THREAD_BASE + cpu, name=f"vCPU {cpu}", state="running",
                       cpu=cpu, registers=dict(target.registers(cpu)), stack=None)


def backtraces(target: Target, provider: ThreadProvider, threads: list[GuestThread],
               max_frames: int, warnings: list[str]) -> list[dict[str, Any]]:
    """Each thread unwound as ``bt`` does (an exited one has no stack)."""
    from undebug.unwind import unwind

    traces: list[dict[str, Any]] = []
    for thread in threads:
        if thread.state == "exited":
            traces.append({"thread": thread_json(target, thread), "frames": [],
                           "complete": True})
            continue
        trace = unwind(target.elf, target.read, thread.registers, thread.stack,
                       max_frames=max_frames, trap_frames=provider.trap_frame,
                       resumes_after_call=thread.resumes_after_call,
                       load_offset=target.load_offset, programs=target.programs)
        warnings += [f"thread {thread.id}: {w}" for w in trace.warnings]
        frames = [frame_json(f) for f in trace.frames]
        for frame in frames:  # a library with no host ELF: its name and offset
            if frame["function"] is None and (library := target.library_at(frame["pc"])):
                frame["library"] = library
        traces.append({"thread": thread_json(target, thread), "frames": frames,
                       "complete": trace.complete})
    return traces


def all_threads(target: Target, provider: ThreadProvider) -> tuple[list[GuestThread], list[str]]:
    """Every guest thread, then each vCPU that runs none (``bt --all``'s list)."""
    snapshot = provider.threads()
    idle = [cpu for cpu in range(target.cpu_count()) if snapshot.vcpus.get(cpu) is None]
    return snapshot.threads + [vcpu_thread(target, cpu) for cpu in idle], list(snapshot.warnings)


def crash_signature(crash: Crash | None, reason_kind: str,
                    traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The crash kind and the faulting thread's top function names from the crashing
    function down (no addresses, no ids: the same crash in another build or run gives
    the same signature); without a crash, vCPU 0's thread's top frames."""
    chosen = None
    if crash is not None and crash.thread_id is not None:
        chosen = next((t for t in traces if t["thread"]["id"] == crash.thread_id), None)
    if chosen is None:
        chosen = next((t for t in traces if t["thread"]["cpu"] == 0), None)
    names = [f["function"] or "??" for f in (chosen or {"frames": []})["frames"]
             if "exception" not in f]
    if crash is not None and crash.function in names:
        names = names[names.index(crash.function):]
    names = names[:SIGNATURE_FRAMES]
    kind = reason_kind
    if crash is not None:
        kind = "panic" if crash.vector is None else f"vector {crash.vector}"
    text = f"{kind}: " + " < ".join(names)
    return {"text": text, "frames": names, "id": hashlib.sha1(text.encode()).hexdigest()[:16]}


def crash_json(crash: Crash | None) -> dict[str, Any] | None:
    return None if crash is None else asdict(crash)


def flight_tail(raw: bytes, elf: Path, count: int = FLIGHT_TAIL) -> tuple[list[dict[str, Any]],
                                                                          list[str]]:
    """The last ``count`` events of a flight-recorder copy, decoded (``trace show``'s
    events), and what stood in the way."""
    from tracers.decode import decode
    from tracers.metadata import load_tracepoints
    from tracers.model import TraceModel
    from tracers.records import Records
    from tracers.report import EventPrinter

    warnings: list[str] = []
    try:
        tps = load_tracepoints(elf)
    except UndebugError as exc:
        warnings.append(f"flight recorder: no tracepoint names: {exc.message}")
        tps = None
    try:
        decoded = decode(raw, tracepoint_count=tps.count if tps else None)
        whole = TraceModel(decoded, tps)
        # render only the last records in time order (the rings hold ~100,000): twice the
        # count, as trace show leaves out sync records
        chosen = whole.order[-2 * count :]
        r = decoded.records
        last = Records(r.tsc[chosen], r.id[chosen], r.cpu[chosen], r.nslots[chosen],
                       r.seq[chosen], r.tid[chosen], r.session[chosen], r.args[chosen],
                       {j: r.strings[r.start + int(i)] for j, i in enumerate(chosen)
                        if r.start + int(i) in r.strings})
        printer = EventPrinter(tps, None, names=whole.thread_names, wall_clock=False)
        printer.lines(TraceModel(dataclasses.replace(decoded, records=last, damage=[]), tps),
                      collect=True)
    except (UndebugError, ValueError) as exc:
        return [], [*warnings, f"flight recorder undecodable: {escape(str(exc))}"]
    events = printer.events[-count:]
    for event in events:  # the index in the whole copy, as trace show gives it
        event["index"] = r.start + int(chosen[event["index"]])
    return events, warnings
