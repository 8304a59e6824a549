"""Tab completion for the shell: command names, options, subcommands and choices (all
read from the CLI's parser), guest names, thread ids and names, ELF symbols and paths.

Guest facts are cached so a Tab never stalls the prompt: threads per guest and run token
(one supervisor ``status`` call per Tab; the thread list, read without stopping the guest,
is read again only when the token moved: the guest was stopped or resumed since), symbols
per ELF file. Completion runs in
prompt_toolkit's completion thread. Thread names come from guest memory: they are shown
escaped, and what is inserted is the thread's id.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from tui.cmdline import TARGET_METAVARS, Line, command_helps, read_line, split
from undebug.errors import UndebugError
from undebug.text import escape

__all__ = ["GuestFacts", "LineCompleter", "ThreadChoice"]

SHELL_WORDS = ("help", "py", "exit", "quit")
SYMBOL_METAVARS = frozenset({"LOCATION", "ADDR|SYMBOL", "NAME|ADDR", "EXPR"})
PATH_DESTS = frozenset({"elf", "output", "debug_elf", "trace_file", "image"})
THREAD_DESTS = frozenset({"thread"})


@dataclass(frozen=True)
class ThreadChoice:
    id: int
    name: str  # escaped: from guest memory
    state: str  # escaped


class GuestFacts:
    """What completion knows of the guests, cached (see the module docstring)."""

    def __init__(self) -> None:
        self._threads: dict[str, tuple[int, list[ThreadChoice]]] = {}
        self._symbols: dict[str, tuple[tuple[str, float], list[str]]] = {}
        self._lock = threading.Lock()  # one completion thread may overlap the next

    def guests(self) -> list[str]:
        from undebug.session.store import sessions

        with contextlib.suppress(UndebugError, OSError):
            return [session.name for session in sessions()]
        return []

    def threads(self, name: str) -> list[ThreadChoice]:
        """The guest's threads; [] when they cannot be read (an ended guest, no OS
        awareness): completion then offers nothing rather than an error."""
        import undebug
        from undebug.coretarget import is_bundle
        from undebug.session.client import SupervisorClient
        from undebug.session.store import SessionDir

        with self._lock:
            try:
                if is_bundle(name):  # a dump: read once, it never changes
                    if name not in self._threads:
                        with undebug.attach(name) as guest:
                            self._threads[name] = (0, [ThreadChoice(t.id, escape(t.name),
                                                                    escape(t.state))
                                                       for t in guest.threads()])
                    return self._threads[name][1]
                with SupervisorClient(SessionDir.named(name), timeout=2.0) as client:
                    cached = self._threads.get(name)
                    if cached is not None and cached[0] == client.status().run_token:
                        return cached[1]
                    with undebug.attach(name, stop=False) as guest:
                        threads = [ThreadChoice(t.id, escape(t.name), escape(t.state))
                                   for t in guest.threads()]
                    # after the read: reading a running guest's registers pauses it for a
                    # moment, which moves the token
                    self._threads[name] = (client.status().run_token, threads)
            except (UndebugError, OSError):
                return []
            return threads

    def symbols(self, name: str) -> list[str]:
        """Function and object names of the ELF the guest's session remembers, sorted."""
        from undebug.target import guest_elf

        with self._lock:
            try:
                elf = guest_elf(name)
                key = (str(elf.path), Path(elf.path).stat().st_mtime)
                cached = self._symbols.get(name)
                if cached is not None and cached[0] == key:
                    return cached[1]
                names = sorted({symbol.name for symbol in elf.symbols()})
            except (UndebugError, OSError):
                return []
            self._symbols[name] = (key, names)
            return names


def _words_before(text: str) -> tuple[list[str], str]:
    """The finished words before the cursor and the word being typed ('' after a space)."""
    for closing in ("", '"', "'"):  # an open quote: read the line as if it were closed
        try:
            words = split(text + closing)
            break
        except ValueError:
            continue
    else:
        return [], ""
    if not text or text[-1].isspace():
        return words, ""
    return words[:-1], words[-1] if words else ""


class LineCompleter(Completer):
    """Completes a shell line; ``name`` is the shell's guest (None: the line names it)."""

    def __init__(self, name: str | None, facts: GuestFacts | None = None) -> None:
        self.name = name
        self.facts = facts or GuestFacts()
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterator[Completion]:
        words, word = _words_before(document.text_before_cursor)
        if not words:
            yield from _matching(word, [*command_helps(), *SHELL_WORDS])
            return
        if words[0] == "help":
            yield from _matching(word, command_helps()) if len(words) == 1 else ()
            return
        if words[0] == "py":
            yield from _matching(word, self.facts.guests()) if len(words) == 1 else ()
            return
        line = read_line(words)
        if line.parser is None:
            return
        if line.pending is not None:
            yield from self._values(line, line.pending, word)
        elif word.startswith("-"):
            yield from _matching(word, _options(line.parser))
        else:
            yield from self._positional(line, word)

    def _target(self, line: Line) -> str | None:
        """The guest the line is about: one it names in its TARGET slot, else the shell's."""
        if line.takes_target and (self.name is None or len(line.positionals) >= len(line.slots)):
            return line.positionals[0] if line.positionals else None
        return self.name

    def _values(self, line: Line, action: argparse.Action, word: str) -> Iterable[Completion]:
        if action.choices:
            return _matching(word, [str(c) for c in action.choices])
        target = self._target(line)
        if action.dest in THREAD_DESTS and target is not None:
            return _thread_completions(word, self.facts.threads(target))
        if action.dest in PATH_DESTS:
            return self._path(word)
        return ()

    def _positional(self, line: Line, word: str) -> Iterable[Completion]:
        slots = line.slots
        index = len(line.positionals)
        if line.takes_target and self.name is not None:
            index += 1  # the shell's guest fills TARGET
        if index >= len(slots):
            return ()
        slot = slots[index]
        if isinstance(slot, argparse._SubParsersAction):
            return _matching(word, list(slot.choices))
        if slot.metavar in TARGET_METAVARS:
            return _matching(word, self.facts.guests())
        target = self._target(line)
        if slot.metavar in SYMBOL_METAVARS and target is not None:
            return _matching(word, self.facts.symbols(target))
        if slot.dest in PATH_DESTS:
            return self._path(word)
        return ()

    def _path(self, word: str) -> Iterable[Completion]:
        return self._paths.get_completions(Document(word), CompleteEvent(completion_requested=True))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))


def _matching(word: str, candidates: Iterable[str]) -> Iterator[Completion]:
    for candidate in candidates:
        if candidate.startswith(word):
            yield Completion(candidate, start_position=-len(word))


def _thread_completions(word: str, threads: list[ThreadChoice]) -> Iterator[Completion]:
    """Threads whose id or (escaped) name starts with ``word``; the id is inserted."""
    for thread in threads:
        if str(thread.id).startswith(word) or thread.name.startswith(word):
            yield Completion(str(thread.id), start_position=-len(word),
                             display=f"{thread.id} {thread.name}", display_meta=thread.state)
