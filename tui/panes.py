"""The tabbed panes of the guest screen, in tab order. A new pane is a widget file that
subclasses :class:`tui.widgets.pane.Pane` plus one line here."""

from __future__ import annotations

from tui.widgets.console import ConsolePane
from tui.widgets.disassembly import DisassemblyPane
from tui.widgets.heap import HeapPane
from tui.widgets.maps import MapsPane
from tui.widgets.memory import MemoryPane
from tui.widgets.net import NetPane
from tui.widgets.output import OutputPane
from tui.widgets.pane import Pane
from tui.widgets.source import SourcePane
from tui.widgets.trace import TracePane
from tui.widgets.watch import WatchPane

PANES: tuple[type[Pane], ...] = (
    ConsolePane,
    DisassemblyPane,
    SourcePane,
    MemoryPane,
    WatchPane,
    TracePane,
    OutputPane,
    MapsPane,
    HeapPane,
    NetPane,
)
