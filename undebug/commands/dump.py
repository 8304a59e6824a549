"""``undebug dump``: a paused moment of a guest as a bundle that opens offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from undebug.commands import command
from undebug.errors import EXIT_CHECK_FAILED
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:
    from undebug.dump.bundle import BundleResult


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NAME", help="a live guest's name (see undebug ps)")
    p.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR",
                   help="write the bundle <NAME>-<UTC time>/ in DIR (default: here)")
    p.add_argument("--sparse", action="store_true",
                   help="leave pages that are all zero out of core.elf (they still read as "
                   "zero); smaller and faster")
    p.add_argument("--include-elf", action="store_true",
                   help="copy the guest's ELF into the bundle, so it opens on another machine")
    p.add_argument("--qemu-core", action="store_true",
                   help="also have QEMU write its own dump-guest-memory ELF (paging off) "
                   "as qemu-core.elf, for tools that want QEMU's format")


def bundle_lines(path: Path, summary: dict[str, object], complete: bool) -> list[str]:
    reason = summary.get("reason")
    text = reason.get("text") if isinstance(reason, dict) else None
    core = summary.get("core") if isinstance(summary.get("core"), dict) else None
    lines = [f"bundle: {escape(str(path))}" + ("" if complete else " (INCOMPLETE)")]
    if text:
        lines.append(f"reason: {escape(str(text))}")
    if isinstance(core, dict):
        lines.append(f"core.elf: {core.get('threads')} threads, {core.get('segments')} "
                     f"segments, {core.get('written_bytes')} of {core.get('mapped_bytes')} "
                     "mapped bytes written")
    qemu = summary.get("qemu_core")
    if isinstance(qemu, dict):
        lines.append(f"qemu-core.elf: {qemu.get('bytes')} bytes" if qemu.get("file") else
                     f"qemu-core.elf: missing ({escape(str(qemu.get('error')))})")
    return lines


@command("dump", "write a dump bundle of a guest (core.elf, summary.json, logs)", _arguments,
         description="Hold the guest still and write a bundle directory: core.elf (guest-"
         "virtual memory and one thread per guest thread, for gdb IMAGE core.elf and drgn), "
         "summary.json (docs/bundle.md), the flight recorder, the console log and the trace "
         "tail. Every inspection command takes the bundle's path in place of a name. The "
         "guest is left as it was. Exit 1 if the dump failed midway (the bundle is then "
         "marked INCOMPLETE).")
def dump(args: argparse.Namespace) -> Report:
    from undebug.dump.bundle import BundleRequest, write_bundle

    return bundle_report(write_bundle(BundleRequest(
        session=args.target, parent=args.output, sparse=args.sparse,
        include_elf=args.include_elf, qemu_core=args.qemu_core)))


def bundle_report(result: BundleResult) -> Report:
    """What a dump says (``undebug dump``, gdbserver's ``monitor dump``): exit 1 when it
    failed midway."""
    warnings = list(result.warnings)
    if not result.complete:
        warnings.insert(0, f"the dump failed midway: {result.summary.get('failure')}")
    return Report(data={"bundle": str(result.path), "complete": result.complete,
                        "core": result.summary.get("core"),
                        "signature": result.summary.get("signature"),
                        "qemu_core": result.summary.get("qemu_core")},
                  warnings=warnings, exit_code=0 if result.complete else EXIT_CHECK_FAILED,
                  render=lambda: bundle_lines(result.path, result.summary, result.complete))
