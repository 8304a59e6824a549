"""Looking inside a guest: ``threads``, ``bt``, ``regs``, ``mem``, ``sym``.

Each opens the guest as a :class:`~undebug.target.Target`, which holds it still for the
command (unless ``--no-stop``) and lets it go as it was; a dump bundle's path opens the
dump instead (:mod:`undebug.coretarget`). Guest strings are escaped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from undebug.commands import add_elf_arguments, command
from undebug.errors import EXIT_USAGE, UndebugError, UsageError
from undebug.output import Report
from undebug.text import escape, hexdump

if TYPE_CHECKING:  # the real imports are lazy, for start-up time
    from undebug.elf import ElfFile, Symbol
    from undebug.target import Target


def _target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="a guest's name (see undebug ps) or a dump bundle's path")
    add_elf_arguments(p)
    p.add_argument("--no-stop", action="store_true",
                   help="do not pause a running guest (what is read may be torn)")


def _with_target(body: Callable[[Target, argparse.Namespace], Report]) \
        -> Callable[[argparse.Namespace], Report]:
    def run(args: argparse.Namespace) -> Report:
        from undebug.target import open_target

        with open_target(args.target, args.elf, stop=not args.no_stop,
                         force=args.force) as target:
            try:
                report = body(target, args)
            except UndebugError as exc:
                if not target.problems:
                    raise
                raise UsageError(f"{exc.message} (the dump is damaged: "
                                 f"{'; '.join(target.problems)})") from None
            report.warnings[:0] = target.warnings + target.problems
            if target.problems:  # a damaged dump: what it holds is shown, and exit 2
                report.exit_code = EXIT_USAGE
        return report
    return run


def _where(target: Target, pc: int) -> str:
    return target.symbolize(pc) or f"{pc:#x}"


# ---- threads ------------------------------------------------------------------------

def threads_body(target: Target, args: argparse.Namespace) -> Report:
    from undebug.dump.summary import thread_json
    from undebug.os import provider_for

    snapshot = provider_for(target).threads()
    rows = [thread_json(target, t) for t in snapshot.threads]

    def render() -> list[str]:
        table = [("ID", "NAME", "STATE", "CPU", "WAIT", "WHERE")]
        for r in rows:
            table.append((str(r["id"]), escape(r["name"]), escape(r["state"]),
                          "-" if r["cpu"] is None else str(r["cpu"]),
                          escape(r["wait_reason"] or "-"), escape(r["function"] or hex(r["pc"]))))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in table]

    return Report(data={"threads": rows, "vcpus": {str(k): v for k, v in snapshot.vcpus.items()}},
                  warnings=list(snapshot.warnings), render=render)


command("threads", "list the guest's own threads", _target_arguments,
        description="List the guest OS's threads (not QEMU's vCPUs): id, name, state, the "
        "vCPU running it, what it waits for, and where it is. For an OS undebug does not "
        "know, or an ELF without DWARF, the vCPUs, with a warning saying what is missing."
        )(_with_target(threads_body))


# ---- bt -----------------------------------------------------------------------------

def _frame_limit(text: str) -> int:
    """--max-frames N: at least one frame, refused by argparse (exit 2) before any guest
    is touched, whatever state it is in."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _bt_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--thread", type=int, metavar="ID", help="one guest thread (see threads)")
    which.add_argument("--all", action="store_true", help="every guest thread")
    p.add_argument("--max-frames", type=_frame_limit, default=64, metavar="N", help="depth limit (64)")


def _frame_line(f: dict[str, Any]) -> str:
    trap = f.get("exception")
    if trap is not None:  # gdb's "<signal handler called>", with what the OS saved
        what = "".join(f" {part}" for part in (
            trap["name"], None if trap["cr2"] is None else f"cr2={trap['cr2']:#x}") if part)
        return f"  #{f['index']:<2} <exception{what}>"
    where = escape(f["function"] or "??" + (f" ({f['library']})" if f.get("library") else ""))
    if f["offset"]:
        where += f"+{f['offset']:#x}"
    at = f" at {escape(f['file'])}:{f['line']}" if f["file"] else ""
    return f"  #{f['index']:<2} {f['pc']:#018x} in {where}{at}"


def bt_body(target: Target, args: argparse.Namespace) -> Report:
    from undebug.dump.summary import all_threads, backtraces, vcpu_thread
    from undebug.os import provider_for

    provider = provider_for(target)
    snapshot = provider.threads()
    warnings = list(snapshot.warnings)
    # A vCPU that runs no known guest thread (a crash before the scheduler starts, an
    # interrupt) is unwound from its own registers, as gdb's thread of that vCPU.
    if args.all:
        chosen = all_threads(target, provider)[0]
    elif args.thread is not None:
        chosen = [snapshot.find(args.thread)]
    elif (current := snapshot.vcpus.get(0)) is not None:  # like gdb's current thread
        chosen = [snapshot.find(current)]
    else:
        warnings.append("no guest thread runs on vCPU 0: unwinding the vCPU's registers")
        chosen = [vcpu_thread(target, 0)]
    traces = backtraces(target, provider, chosen, args.max_frames, warnings)

    def render() -> list[str]:
        lines: list[str] = []
        for t in traces:
            th = t["thread"]
            cpu = f", vCPU {th['cpu']}" if th["cpu"] is not None else ""
            lines.append(f"thread {th['id']} {escape(th['name'])} ({escape(th['state'])}{cpu})")
            lines += [_frame_line(f) for f in t["frames"]] or ["  (exited: no stack)"]
            if not t["complete"]:
                lines.append("  (backtrace incomplete: see warnings)")
            lines.append("")
        return lines[:-1]

    return Report(data={"backtraces": traces}, warnings=warnings, render=render)


command("bt", "backtraces of guest threads", _bt_arguments,
        description="Unwind guest threads from their saved context (or their vCPU when "
        "running) with DWARF CFI, frame pointers as fallback, through exception frames "
        "(shown as <exception #PF cr2=0x...>) into the interrupted code.")(_with_target(bt_body))


# ---- regs ---------------------------------------------------------------------------

def _regs_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--thread", type=int, metavar="ID", help="a guest thread's frame 0")
    which.add_argument("--cpu", type=int, metavar="N", help="a vCPU (default 0)")


def regs_body(target: Target, args: argparse.Namespace) -> Report:
    if args.thread is not None:
        from undebug.os import provider_for

        snapshot = provider_for(target).threads()
        thread = snapshot.find(args.thread)
        registers, source = thread.registers, (
            f"vCPU {thread.cpu}" if thread.cpu is not None else "saved context")
        warnings = list(snapshot.warnings)
        subject = {"thread": args.thread, "cpu": thread.cpu, "source": source}
    else:
        cpu = args.cpu or 0
        registers, warnings = target.registers(cpu), []
        subject = {"thread": None, "cpu": cpu, "source": f"vCPU {cpu}"}

    def render() -> list[str]:
        who = f"thread {args.thread}" if args.thread is not None else f"vCPU {subject['cpu']}"
        lines = [f"registers of {who} ({subject['source']})"]
        for name, value in registers.items():
            where = f"  {escape(_where(target, value))}" if name == "rip" else ""
            lines.append(f"  {escape(name):<10} {value:#018x}{where}")
        return lines

    return Report(data={**subject, "registers": registers}, warnings=warnings, render=render)


command("regs", "registers of a vCPU or a guest thread", _regs_arguments)(_with_target(regs_body))


# ---- mem ----------------------------------------------------------------------------

def _mem_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    p.add_argument("address", metavar="ADDR|SYMBOL", help="an address (0x...) or a symbol")
    p.add_argument("length", metavar="LEN", help="bytes to read (decimal or 0x...)")
    p.add_argument("--format", choices=("hex", "raw"), default="hex",
                   help="hex dump (default) or the raw bytes (to a file or pipe only)")
    p.add_argument("--phys", action="store_true", help="ADDR is guest-physical")


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}", hint="write a number such as 4096 or 0x1000") \
            from None


def mem_body(target: Target, args: argparse.Namespace) -> Report:
    length = _number(args.length, "length")
    if not 0 < length <= 1 << 30:
        raise UsageError(f"length {length} is out of range (1 .. 1 GiB)")
    warnings: list[str] = []
    if args.address[:1].isdigit():
        address = _number(args.address, "address")
    else:  # the kernel's, else a program's or library's where the OS awareness finds it
        from undebug.os.locate import ambiguity, locate

        found = locate(target, args.address)
        address, warnings = found.address, ambiguity(found)
    if args.format == "raw" and not args.json and sys.stdout.isatty():
        raise UsageError("refusing to write raw guest bytes to a terminal",
                         hint="redirect to a file (> out.bin) or use --format hex")
    data = target.read_physical(address, length) if args.phys else target.read(address, length)
    if args.format == "raw" and not args.json:
        sys.stdout.buffer.write(data)
        return Report()
    return Report(data={"address": address, "size": length, "physical": args.phys,
                        "hex": data.hex()}, warnings=warnings,
                  render=lambda: hexdump(address, data))


command("mem", "read guest memory", _mem_arguments)(_with_target(mem_body))


# ---- sym ----------------------------------------------------------------------------

def _sym_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="a guest's name (see undebug ps) or a dump bundle's path")
    add_elf_arguments(p, force=False)
    p.add_argument("what", metavar="NAME|ADDR", help="a symbol name, or an address to look up")


@command("sym", "look up a symbol or an address (in the ELF; a program's or library's symbol "
         "at its load bias, read from the guest)",
         _sym_arguments)
def sym(args: argparse.Namespace) -> Report:
    from undebug.os import provider_class
    from undebug.target import guest_elf

    elf = guest_elf(args.target, args.elf)
    data: dict[str, Any]
    if args.what[:1].isdigit():
        address = _number(args.what, "address")
        symbol = elf.function_at(address)
        line = elf.line_at(address)
        data = {"address": address, "symbol": symbol.name if symbol else None,
                "offset": address - symbol.address if symbol else None,
                "file": line[0] if line else None, "line": line[1] if line else None}
    elif (kernel_symbol := elf.symbol(args.what)) is None:
        found = _program_symbol(args)
        if found is None:
            raise UsageError(f"no symbol {args.what!r} in {elf.path} or the guest's programs")
        return Report(data=found[0], warnings=found[1], render=lambda: _sym_line(found[0]))
    else:
        data = _symbol_json(elf, kernel_symbol, 0)

    warnings: list[str] = []
    provider = provider_class(elf)
    if provider is not None and provider.relocates:
        warnings.append(f"{provider.name} runs its kernel slid from its link addresses "
                        "(KASLR): these are the ELF's link addresses; the running guest's "
                        "are these plus its load offset (mem, bt and break apply it)")

    return Report(data=data, warnings=warnings, render=lambda: _sym_line(data))


def _sym_line(data: dict[str, Any]) -> list[str]:
    if data["symbol"] is None:
        return [f"{data['address']:#x}: no symbol"]
    where = f" at {escape(data['file'])}:{data['line']}" if data["file"] else ""
    offset = f"+{data['offset']:#x}" if data["offset"] else ""
    module = f" in {escape(data['module'])}" if "module" in data else ""
    return [f"{data['address']:#x}  {escape(data['symbol'])}{offset}{module}{where}"]


def _symbol_json(elf: ElfFile, symbol: Symbol, offset: int) -> dict[str, Any]:
    line = elf.line_at(symbol.address)
    return {"address": (symbol.address + offset) & (1 << 64) - 1, "symbol": symbol.name,
            "offset": 0, "size": symbol.size, "kind": symbol.kind,
            "file": line[0] if line else None, "line": line[1] if line else None}


def _program_symbol(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]] | None:
    """A symbol of one of the guest's programs or libraries, at its runtime address: their
    load biases are in the guest's memory (a PIE's, a library's), so it is read, paused
    for the look-up (:func:`undebug.os.locate.locate`). None: FILE:LINE, or no guest to
    read (it has ended)."""
    from undebug.os.locate import ambiguity, locate
    from undebug.target import open_target

    try:
        target = open_target(args.target, args.elf)
    except UndebugError:
        return None
    with target:  # not found: the error names every ELF searched
        found = locate(target, args.what)
        if found.symbol is None or found.elf is None:
            return None
        data = _symbol_json(found.elf, found.symbol, found.offset)
        data.update(module=found.elf.code_path.name, load_offset=found.offset)
        return data, [*target.warnings, *ambiguity(found)]

