"""The heap pane: each allocator of the guest as ``undebug heap`` reads it (the OS
provider's walk of its own structures: :meth:`undebug.api.Session.heaps`): bytes total,
used and free, the largest free block, counts, and its blocks by size as bars."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from tui.widgets.pane import Focus, TextPane
from tui.widgets.per_stop import PerStopPane
from tui.widgets.text import guest
from undebug import api
from undebug.os.heap import HeapReport
from undebug.text import human_size

BAR = 32  # cells of the longest bar of the histogram


def heap_text(report: HeapReport) -> list[Text]:
    """One allocator: its numbers (those it keeps), then free and used blocks by size."""
    head = guest(report.allocator, "bold")
    if report.address is not None:
        head.append(f" at {report.address:#x}")
    lines = [head]
    for label, value in (("total", report.total), ("used", report.used),
                         ("free", report.free), ("largest free", report.largest_free),
                         ("peak used", report.peak)):
        if value is not None:
            lines.append(Text(f"  {label:<14}{human_size(value):>8} ({value})"))
    counts = [f"{label} {count}" for label, count in (
        ("allocations", report.allocations), ("frees", report.frees),
        ("failed", report.failed), ("free blocks", report.free_blocks),
        ("used blocks", report.used_blocks)) if count is not None]
    if counts:
        lines.append(Text("  " + ", ".join(counts)))
    sizes = sorted(set(report.free_sizes) | set(report.used_sizes))
    if sizes:
        most = max([*report.free_sizes.values(), *report.used_sizes.values(), 1])
        lines.append(Text(f"  {'block size':<12}{'free':>8}{'used':>8}", style="bold"))
        for size in sizes:
            free, used = report.free_sizes.get(size, 0), report.used_sizes.get(size, 0)
            line = Text(f"  {human_size(size) + '+':<12}{free:>8}{used:>8}  ")
            line.append("█" * -(-free * BAR // most), style="green")
            line.append("█" * -(-used * BAR // most), style="cyan")
            lines.append(line)
    elif not report.walked:
        lines.append(Text("  (no walk of its blocks was possible)", style="dim"))
    return lines


class HeapPane(PerStopPane[list[HeapReport]]):
    pane_id = "heap"
    pane_title = "heap"
    DEFAULT_CSS = """
    HeapPane > Static { height: auto; max-height: 6; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield TextPane(id="heap-text")
        yield Static(id="heap-note")

    def on_mount(self) -> None:
        self.query_one(TextPane).border_title = self.pane_title

    def fetch(self, session: api.Session) -> list[HeapReport]:
        return session.heaps()

    def paint(self, data: list[HeapReport], title: str) -> None:
        view = self.query_one(TextPane)
        view.border_title = title + "  (bars: green free, cyan used)"
        lines = [line for report in data for line in [*heap_text(report), Text("")]]
        view.show_lines(lines or [Text("undebug knows no allocator of this guest's OS",
                                       style="yellow")])
        self.note([w for report in data for w in report.warnings])

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug heap {focus.guest}"]
