"""The registers pane: the selected thread's registers (its vCPU's when it runs on one,
else the context its OS saved when it was switched out)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from undebug.api import GuestThread

# The order gdb's `info registers` uses; any others (segment bases, ...) follow.
_ORDER = ("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10",
          "r11", "r12", "r13", "r14", "r15", "eflags", "cs", "ss", "ds", "es", "fs", "gs")

_CELL = 27  # "   rip 0x0000000000103c8f  "


class RegistersPane(Static):
    DEFAULT_CSS = """
    RegistersPane { height: auto; max-height: 50%; overflow-y: auto; }
    """

    def show(self, thread: GuestThread) -> None:
        source = f"vCPU {thread.cpu}" if thread.cpu is not None else "saved context"
        self.border_title = f"registers of thread {thread.id} ({source})"
        names = [n for n in _ORDER if n in thread.registers]
        names += sorted(n for n in thread.registers if n not in _ORDER)
        per_line = max(1, (self.size.width - 2) // _CELL)
        text = Text()
        for i, name in enumerate(names):
            text.append(f"{name:>6} ", style="bold")
            text.append(f"{thread.registers[name]:#018x}  ")
            if i % per_line == per_line - 1:
                text.append("\n")
        text.rstrip()
        self.update(text if names else Text("no registers", style="dim"))
