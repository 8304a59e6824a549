"""What ``run --ci`` tells a CI system about a failure: one screen for the log, JUnit XML for
test-report tools, and GitHub Actions annotations and step summary.

Everything comes from the bundle's summary (:mod:`undebug.dump.summary`), so the screen,
the XML and the bundle cannot disagree. Guest text is escaped for the terminal, and XML-
escaped (control characters removed, which XML 1.0 cannot carry) for the report.
"""

from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path
from typing import Any

from undebug.text import escape

__all__ = ["Failure", "crash_screen", "github_annotations", "junit_xml", "step_summary"]

SCREEN_FRAMES = 12
SCREEN_EVENTS = 8
SCREEN_CONSOLE = 10
MAX_ANNOTATIONS = 10  # GitHub shows at most 10 errors per step and drops the rest
STEP_SUMMARY_MAX = 1 << 20  # GitHub refuses a step summary over 1 MiB
MAX_SCAN = 50_000  # entries looked at to place a bare source file name in the checkout
SKIP_DIRS = frozenset({"node_modules", "venv", "build", "undebug-dumps", "__pycache__"})
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class Failure:
    """A failed CI run: the outcome, and the bundle's summary when one was written."""

    def __init__(self, name: str, image: Path, outcome: dict[str, Any],
                 summary: dict[str, Any] | None, bundle: Path | None, seconds: float,
                 console_tail: list[str]) -> None:
        self.name = name
        self.image = image
        self.outcome = outcome
        self.summary = summary or {}
        self.bundle = bundle
        self.seconds = seconds
        self.console_tail = console_tail

    @property
    def ok(self) -> bool:
        return bool(self.outcome.get("ok"))

    @property
    def reason(self) -> str:
        return str(self.outcome.get("reason", ""))

    def faulting_trace(self) -> dict[str, Any] | None:
        """The backtrace of the thread that crashed (else vCPU 0's), from the summary."""
        traces = self.summary.get("threads") or []
        crash = self.summary.get("crash") or {}
        wanted = crash.get("thread_id")
        found = next((t for t in traces if wanted is not None and t["thread"]["id"] == wanted),
                     None)
        return found or next((t for t in traces if t["thread"].get("cpu") == 0), None)

    def locations(self) -> list[tuple[str, int, str]]:
        """(file, line, function) of the faulting thread's frames that have line info,
        crash-first, each place once (a stack overflow repeats one line many times)."""
        trace = self.faulting_trace()
        seen: set[tuple[str, int]] = set()
        out = []
        crash_function = (self.summary.get("crash") or {}).get("function")
        frames = trace["frames"] if trace else []
        names = [f.get("function") for f in frames]
        if crash_function in names:
            frames = frames[names.index(crash_function):]
        for f in frames:
            if f.get("file") and f.get("line") and (f["file"], f["line"]) not in seen:
                seen.add((f["file"], f["line"]))
                out.append((f["file"], f["line"], f.get("function") or "??"))
        return out


def _relative(path: str) -> str:
    """A repository-relative path when the file is under the working directory (CI runs
    from the checkout); a bare name (DWARF 5 leaves the compilation directory's files
    without one) when exactly one file of that name is under it; else as given."""
    here = Path.cwd().resolve()
    if not Path(path).is_absolute() and not (here / path).exists():
        found = _unique_under(here, Path(path).name) if "/" not in path else None
        return path if found is None else str(found.relative_to(here))
    try:
        return str(Path(path).resolve().relative_to(here))
    except (ValueError, OSError):
        return path


@functools.cache
def _unique_under(root: Path, name: str) -> Path | None:
    """The one file called ``name`` under ``root`` (hidden directories, virtualenvs and
    build outputs skipped; at most MAX_SCAN entries looked at), or None."""
    found: list[Path] = []
    seen = 0
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in SKIP_DIRS]
        seen += len(files) + len(subdirs)
        if name in files:
            found.append(Path(directory) / name)
        if len(found) > 1 or seen > MAX_SCAN:
            return None
    return found[0] if found else None


def crash_screen(f: Failure) -> list[str]:
    """The one screen before ``undebug: FAIL:``: what, where, the last events, the console."""
    lines = [f"==== undebug: {escape(f.name)} failed ({escape(str(f.outcome.get('kind')))})",
             f"reason:  {escape(f.reason)}"]
    crash = f.summary.get("crash") or {}
    if crash.get("thread_name") is not None:
        lines.append(f"thread:  {crash.get('thread_id')} {escape(crash['thread_name'])}"
                     + (f" on vCPU {crash['cpu']}" if crash.get("cpu") is not None else ""))
    if crash.get("fault_address") is not None:
        lines.append(f"address: {crash['fault_address']:#x} ({crash.get('access') or 'access'})")
    signature = f.summary.get("signature")
    if signature:
        lines.append(f"signature: {escape(signature['text'])} [{signature['id']}]")
    trace = f.faulting_trace()
    if trace:
        lines.append("backtrace:")
        for frame in trace["frames"][:SCREEN_FRAMES]:
            at = f" at {escape(_relative(frame['file']))}:{frame['line']}" \
                if frame.get("file") else ""
            name = "<exception>" if "exception" in frame else escape(frame["function"] or "??")
            lines.append(f"  #{frame['index']:<2} {name}{at}")
        if len(trace["frames"]) > SCREEN_FRAMES:
            lines.append(f"  ... {len(trace['frames']) - SCREEN_FRAMES} more frames")
    events = ((f.summary.get("flight_recorder") or {}).get("tail") or [])[-SCREEN_EVENTS:]
    if events:
        lines.append("last trace events:")
        lines += [f"  {escape(_event_text(e))}" for e in events]
    if f.console_tail:
        lines.append("console tail:")
        lines += [f"  {line}" for line in f.console_tail[-SCREEN_CONSOLE:]]
    if f.bundle is not None:
        lines.append(f"bundle:  {escape(str(f.bundle))}"
                     + ("" if f.summary.get("complete", True) else " (INCOMPLETE)"))
    return lines


def _event_text(event: dict[str, Any]) -> str:
    """``+12.345678 ms cpu0 tid 9 end handle_request req_id=35250`` (trace show's fields)."""
    when = f"{event['time_ns'] / 1e6:.3f} ms" if isinstance(event.get("time_ns"), int) else "?"
    who = event.get("thread") or f"tid {event.get('tid')}"
    args = event.get("args") or {}
    text = " ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else ""
    return f"{when} cpu{event.get('cpu')} {who} {event.get('tracepoint')} {text}".rstrip()


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape as xml_escape

    return xml_escape(_XML_BAD.sub("?", text))


def junit_xml(f: Failure) -> str:
    """One testsuite with one testcase: the guest's run (GitLab and the GitHub test-report
    actions read ``testsuites/testsuite/testcase``, ``failure`` and ``system-out``)."""
    from xml.sax.saxutils import quoteattr

    where = f.locations()
    file, line = (_relative(where[0][0]), where[0][1]) if where else (str(f.image), 0)
    name = f"run {f.image.name}"
    case = (f"  <testcase classname={quoteattr('undebug.' + f.name)} name={quoteattr(name)} "
            f"file={quoteattr(_XML_BAD.sub('?', file))} line=\"{line}\" "
            f"time=\"{f.seconds:.3f}\">\n")
    if not f.ok:
        case += (f"    <failure message={quoteattr(_XML_BAD.sub('?', f.reason))} "
                 f"type={quoteattr(str(f.outcome.get('kind')))}>"
                 f"{_xml(chr(10).join(crash_screen(f)))}</failure>\n")
    case += f"    <system-out>{_xml(chr(10).join(f.console_tail))}</system-out>\n  </testcase>\n"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    failures = 0 if f.ok else 1
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuites name="undebug" tests="1" failures="{failures}" '
            f'time="{f.seconds:.3f}">\n'
            f' <testsuite name={quoteattr("undebug " + f.image.name)} tests="1" '
            f'failures="{failures}" errors="0" skipped="0" time="{f.seconds:.3f}" '
            f'timestamp="{stamp}">\n{case} </testsuite>\n</testsuites>\n')


def _command_value(text: str) -> str:
    """A workflow command's message (GitHub's escaping: %, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _command_value(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(f: Failure) -> list[str]:
    """``::error`` lines: the crash at its source line, then its callers' lines; GitHub
    shows 10 per step and drops the rest silently, so the 10th says how many more."""
    if f.ok:
        return []
    places = f.locations()
    lines = []
    for at, (file, line, function) in enumerate(places):
        what = escape(f.reason) if at == 0 else f"called from here ({escape(function)})"
        lines.append(f"::error file={_property(_relative(file))},line={line},"
                     f"title={_property('undebug: ' + f.name)}::{_command_value(what)}")
    if not lines:
        lines.append(f"::error title={_property('undebug: ' + f.name)}::"
                     f"{_command_value(escape(f.reason))}")
    if len(lines) > MAX_ANNOTATIONS:
        more = len(lines) - (MAX_ANNOTATIONS - 1)
        rest = f"... and {more} more frames of this crash (see the bundle)"
        lines = [*lines[: MAX_ANNOTATIONS - 1],
                 f"::error title={_property('undebug: ' + f.name)}::{_command_value(rest)}"]
    return lines


def step_summary(f: Failure, path: Path) -> None:
    """Append the screen to ``$GITHUB_STEP_SUMMARY`` as Markdown, keeping the file under
    GitHub's 1 MiB limit (what does not fit is cut, and says so)."""
    verdict = "PASS" if f.ok else "FAIL"
    body = f"### undebug {verdict}: {escape(f.reason)}\n\n"
    if not f.ok:
        body += "```\n" + "\n".join(crash_screen(f)).replace("```", "'''") + "\n```\n"
    try:
        used = path.stat().st_size
    except OSError:
        used = 0
    room = STEP_SUMMARY_MAX - used
    data = body.encode()
    if len(data) > room:
        note = b"\n... (cut: GitHub's step summary holds 1 MiB)\n"
        data = data[: max(0, room - len(note))] + note if room > len(note) else b""
    if data:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(data)
