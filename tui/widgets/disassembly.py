"""The disassembly pane: the instructions around the selected frame's pc (capstone, through
:meth:`undebug.api.Session.disassemble`), each run of instructions under the source line
it was compiled from when the file is on this machine."""

from __future__ import annotations

from pathlib import PurePath

from rich.text import Text
from textual import work

from tui.widgets.pane import Focus, Pane, TextPane
from tui.widgets.source import source_lines
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError

BEFORE, AFTER = 12, 24  # instructions shown before the pc and from it


class DisassemblyPane(Pane, TextPane):
    pane_id = "disassembly"
    pane_title = "disassembly"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.shown: tuple[int, int] | None = None  # (run token, pc) on screen
        self.border_title = "disassembly"

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        pc = focus.pc
        if pc is None:
            self.show_lines([Text("no thread selected", style="dim")])
        elif self.shown != (focus.run_token, pc) or not focus.stopped:
            self.read(focus.guest, pc, focus.run_token, focus.stopped)

    @work(exclusive=True, thread=True, group="disassembly")
    def read(self, name: str, pc: int, token: int, stopped: bool) -> None:
        """The code at ``pc``: read without stopping the guest (code does not change as
        it runs; a stopped guest is read at its stop)."""
        try:
            with api.attach(name, stop=False) as session:
                found = session.disassemble(pc, BEFORE, AFTER)
                paths = {f: api.source_path(name, f) for f in {i.file for i in found if i.file}}
        except UndebugError as exc:
            self.app.call_from_thread(self._failed, pc, exc.message)
            return
        sources = {file: source_lines(path) for file, path in paths.items() if path is not None}
        self.app.call_from_thread(self._show, pc, token, found, sources)

    def _failed(self, pc: int, why: str) -> None:
        self.shown = None
        self.show_lines([guest(f"no code at {pc:#x}: {why}", "yellow")])

    def _show(self, pc: int, token: int, found: list[api.Instruction],
              sources: dict[str, tuple[str, ...]]) -> None:
        self.shown = (token, pc)
        self.border_title = f"disassembly at {pc:#x}"
        lines: list[Text] = []
        mark = None
        last: tuple[str | None, int | None] | None = None
        for insn in found:
            if (insn.file, insn.line) != last and insn.file and insn.line:
                text = sources.get(insn.file, ())
                source = text[insn.line - 1] if 0 < insn.line <= len(text) else ""
                head = guest(f"{PurePath(insn.file).name}:{insn.line}", "cyan")
                if source:
                    head.append("  ")
                    head.append_text(guest(source.strip().expandtabs(8), "cyan"))
                lines.append(head)
            last = (insn.file, insn.line)
            if insn.address == pc:
                mark = len(lines)
            line = Text("=> " if insn.address == pc else "   ", style="bold")
            line.append(f"{insn.address:#018x}  ")
            line.append_text(guest(f"<{insn.where}>" if insn.where else "", "dim"))
            line.append("  ")
            line.append_text(guest(insn.text, "bold" if insn.address == pc else ""))
            lines.append(line)
        self.show_lines(lines, mark=mark)

    def equivalent(self, focus: Focus) -> list[str]:
        pc = focus.pc
        if pc is None:
            return []
        return [f"undebug mem {focus.guest} {pc:#x} {AFTER * 15}"]
