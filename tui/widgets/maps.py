"""The memory-map pane: the guest's regions as ``undebug maps`` reads them (vCPU 0's page
tables, named by the ELF, the threads' stacks and guard pages, the OS and QEMU's devices;
:meth:`undebug.api.Session.memory_map`), with what looks wrong highlighted: writable and
executable, a mapped guard or null page, a stack without a guard."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.widgets.pane import Focus
from tui.widgets.per_stop import PerStopPane
from tui.widgets.text import guest
from undebug import api
from undebug.os.memmap import FLAGS, GUARD_MAPPED, NO_GUARD, NULL_MAPPED, RO_WRITABLE, WX, MemoryMap, Region
from undebug.text import human_size

COLUMNS = ("RANGE", "PERM", "SIZE", "PAGES", "PHYSICAL", "WHAT", "FLAGS")
WRONG = frozenset({WX, GUARD_MAPPED, NO_GUARD, NULL_MAPPED, RO_WRITABLE})  # shown in red


def flags_style(flags: Iterable[str]) -> str:
    """Red: a flag that looks wrong; yellow: another (not mapped, no backing)."""
    found = set(flags)
    return "bold red" if found & WRONG else "yellow" if found else ""


def row_style(region: Region) -> str:
    """As its flags say; else dim for an unmapped hole that is meant to be (a guard
    page, the null page)."""
    return flags_style(region.flags) or ("" if region.mapped else "dim")


def region_cells(region: Region, digits: int) -> tuple[Text, ...]:
    """The row of ``region``, its addresses in ``digits`` hex digits (the map's widest:
    a low guest's map fits 80 columns)."""
    style = row_style(region)
    user = "u" if region.user else ("s" if region.mapped else "-")
    plain = (f"0x{region.start:0{digits}x}-0x{region.end:0{digits}x}", region.permissions + user,
             human_size(region.end - region.start),
             ",".join(human_size(p) for p in region.page_sizes) or "-",
             "-" if region.physical is None else f"{region.physical:#x}")
    return (*(Text(cell, style=style) for cell in plain),
            guest(" / ".join(str.__str__(n) for n in region.names) or None, style),
            Text("; ".join(FLAGS.get(f, f) for f in region.flags), style=style))


class MapsPane(PerStopPane[MemoryMap]):
    pane_id = "maps"
    pane_title = "memory map"
    DEFAULT_CSS = """
    MapsPane > DataTable { height: 1fr; border: round $primary-darken-2; }
    MapsPane > Static { height: auto; max-height: 6; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield DataTable[Text](cursor_type="row", id="maps-regions")
        yield Static(id="maps-summary")
        yield Static(id="maps-note")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.query_one(DataTable).border_title = self.pane_title

    def fetch(self, session: api.Session) -> MemoryMap:
        return session.memory_map()

    def paint(self, data: MemoryMap, title: str) -> None:
        table: DataTable[Any] = self.query_one(DataTable)
        table.clear()
        digits = max([len(f"{r.end:x}") for r in data.regions] or [1])
        for region in data.regions:
            table.add_row(*region_cells(region, digits))
        table.border_title = title
        summary = Text(f"{human_size(data.mapped_bytes)} mapped in {data.tables_read} page "
                       f"tables (cr3 {data.cr3:#x}, {5 if data.five_level else 4}-level"
                       f"{'' if data.write_protect else ', CR0.WP clear'})")
        for flag, count in data.flagged().items():
            summary.append(f"; {FLAGS[flag]}: {count}", style=flags_style((flag,)))
        self.query_one("#maps-summary", Static).update(summary)
        self.note([*data.warnings, *(f"page tables: {p}" for p in data.problems)])

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug maps {focus.guest}"]

