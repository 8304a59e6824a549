"""The registers pane: the selected thread's registers (its vCPU's when it runs on one,
else the context its OS saved when it was switched out); those that changed since the
stop before are highlighted."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from undebug.api import GuestThread, ThreadsView

# The order gdb's `info registers` uses; any others (segment bases, ...) follow.
_ORDER = ("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10",
          "r11", "r12", "r13", "r14", "r15", "eflags", "cs", "ss", "ds", "es", "fs", "gs")

_CELL = 27  # "   rip 0x0000000000103c8f  "
CHANGED = "bold reverse"


class RegistersPane(Static):
    DEFAULT_CSS = """
    RegistersPane { height: auto; max-height: 50%; overflow-y: auto; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.stop = -1  # run token of the last stop noted
        self.now: dict[int, dict[str, int]] = {}  # thread id -> registers, at that stop
        self.before: dict[int, dict[str, int]] = {}  # ... at the stop before it
        self.changed: set[str] = set()  # of the thread shown

    def note_stop(self, view: ThreadsView) -> None:
        """A new stopped view: its registers become the ones later stops compare with.
        Live views are no stop and are not noted."""
        if view.live or view.run_token == self.stop:
            return
        self.stop = view.run_token
        self.before = self.now
        self.now = {t.id: dict(t.registers) for t in view.threads}

    def show(self, thread: GuestThread) -> None:
        source = f"vCPU {thread.cpu}" if thread.cpu is not None else "saved context"
        self.border_title = f"registers of thread {thread.id} ({source})"
        names = [n for n in _ORDER if n in thread.registers]
        names += sorted(n for n in thread.registers if n not in _ORDER)
        earlier = self.before.get(thread.id, {})
        self.changed = {n for n in names if n in earlier and earlier[n] != thread.registers[n]}
        per_line = max(1, (self.size.width - 2) // _CELL)
        text = Text()
        for i, name in enumerate(names):
            text.append(f"{name:>6} ", style="bold")
            text.append(f"{thread.registers[name]:#018x}",
                        style=CHANGED if name in self.changed else "")
            text.append("  ")
            if i % per_line == per_line - 1:
                text.append("\n")
        text.rstrip()
        self.update(text if names else Text("no registers", style="dim"))
