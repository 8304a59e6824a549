"""What crosses the supervisor client's edge, typed: the guest status, stops, breakpoints,
outcomes, register sets and events of docs/protocol.md, parsed once from the JSON.

The supervisor is ours, but a front end must not crash on a bad reply (another version,
a corrupt session.json): a value of the wrong shape is a :class:`SessionError` naming
where it came from and the field, never a KeyError deep inside a command. Fields this
version does not know are kept in ``extra`` and written back by ``to_json``, so ``--json``
passes a newer supervisor's fields on unchanged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

from undebug.errors import SessionError
from undebug.session.breakpoints import OWNERS, WATCHES, Breakpoint, Owner, Watch
from undebug.session.outcome import Outcome
from undebug.session.store import SessionDir

__all__ = ["CpuRegisters", "GuestStatus", "MalformedReply", "ProcessRam", "Reply", "Stop",
           "SupervisorEvent", "parse_breakpoint", "parse_event", "parse_outcome",
           "parse_process_ram", "parse_ram_layout", "parse_registers", "parse_status",
           "parse_stop", "recorded_status"]

_T = TypeVar("_T")
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class MalformedReply(SessionError):
    """A reply (or record) of the wrong shape: the supervisor answered, but not sense."""


class Reply:
    """Typed reads of one JSON object. ``where`` says what it is ("guest 'x': status
    reply"), ``path`` where inside it, for the error message."""

    def __init__(self, data: object, where: str, path: str = "") -> None:
        self.where, self.path = where, path
        if not isinstance(data, dict):
            raise self.error(f"{path or 'the reply'} must be an object (got {_kind(data)})")
        self.data: dict[str, Any] = data

    def error(self, text: str) -> MalformedReply:
        return MalformedReply(f"{self.where} is malformed: {text}",
                            hint="the supervisor and this undebug may be different versions")

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, types: tuple[type, ...], what: str, optional: bool) -> Any:
        if key not in self.data:
            raise self.error(f"field {self._name(key)!r} is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise self.error(f"field {self._name(key)!r} must be {what}"
                              f"{' or null' if optional else ''} (got {_kind(value)})")
        return value

    def integer(self, key: str) -> int:
        return cast(int, self._get(key, (int,), "an integer", False))

    def opt_integer(self, key: str) -> int | None:
        return cast("int | None", self._get(key, (int,), "an integer", True))

    def number(self, key: str) -> float:
        return cast(float, self._get(key, (int, float), "a number", False))

    def boolean(self, key: str) -> bool:
        return cast(bool, self._get(key, (bool,), "true or false", False))

    def string(self, key: str) -> str:
        return cast(str, self._get(key, (str,), "a string", False))

    def opt_string(self, key: str) -> str | None:
        return cast("str | None", self._get(key, (str,), "a string", True))

    def choice(self, key: str, choices: tuple[_T, ...]) -> _T:
        value = self.string(key)
        if value not in choices:
            raise self.error(f"field {self._name(key)!r} must be one of {', '.join(map(str, choices))}")
        return cast(_T, value)

    def array(self, key: str) -> list[Any]:
        return cast("list[Any]", self._get(key, (list,), "a list", False))

    def strings(self, key: str) -> list[str]:
        values = self.array(key)
        if not all(isinstance(v, str) for v in values):
            raise self.error(f"field {self._name(key)!r} must be a list of strings")
        return values

    def object(self, key: str) -> Reply:
        return Reply(self._get(key, (dict,), "an object", False), self.where, self._name(key))

    def opt_object(self, key: str) -> Reply | None:
        value = self._get(key, (dict,), "an object", True)
        return None if value is None else Reply(value, self.where, self._name(key))

    def item(self, key: str, index: int) -> Reply:
        return Reply(self.array(key)[index], self.where, f"{self._name(key)}[{index}]")

    def items(self, key: str) -> list[Reply]:
        return [self.item(key, i) for i in range(len(self.array(key)))]

    def text_map(self, key: str) -> dict[str, str]:
        """An object of strings (names to text)."""
        inner = self.object(key)
        return {k: inner.string(k) for k in inner.data}

    def int_map(self, key: str) -> dict[str, int]:
        """An object of integers (register names to values)."""
        inner = self.object(key)
        return {k: inner.integer(k) for k in inner.data}

    def base64_bytes(self, key: str) -> bytes:
        try:
            return base64.b64decode(self.string(key), validate=True)
        except binascii.Error:
            raise self.error(f"field {self._name(key)!r} is not base64") from None

    def extra(self, known: tuple[str, ...]) -> Mapping[str, Any]:
        """The fields this version does not know, to pass on."""
        rest = {k: v for k, v in self.data.items() if k not in known}
        return MappingProxyType(rest) if rest else _NO_EXTRA

    def keys(self) -> tuple[str, ...]:
        return tuple(self.data)


def _write_back(known: dict[str, Any], extra: Mapping[str, Any],
                keys: tuple[str, ...]) -> dict[str, Any]:
    """The JSON of a parsed object: its ``keys`` in their order (a field the reply did not
    have stays absent), the values now held; one built in code (no keys): every field."""
    if not keys:
        return {**known, **extra}
    return {k: known[k] if k in known else extra[k] for k in keys if k in known or k in extra}


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "?")


# ---- outcome and breakpoint (their dataclasses live with the supervisor's code) ---------

def parse_outcome(reply: Reply) -> Outcome:
    return Outcome(reply.string("kind"), reply.string("reason"), reply.boolean("ok"),
                   reply.opt_integer("exit_code"), reply.opt_string("run_state"))


def parse_breakpoint(reply: Reply) -> Breakpoint:
    owner: Owner = reply.choice("owner", OWNERS)
    watch: Watch | None = reply.choice("watch", WATCHES) \
        if reply.data.get("watch") is not None else None
    return Breakpoint(reply.integer("id"), reply.integer("address"), reply.boolean("hardware"),
                      reply.string("location"), owner, reply.opt_string("when_register"),
                      reply.opt_integer("when_value"), watch,
                      reply.integer("length") if "length" in reply.data else 1,
                      reply.opt_integer("when_offset") if "when_offset" in reply.data else None,
                      tuple(v for v in reply.data.get("when_values") or []
                            if isinstance(v, int)))


# ---- stops ------------------------------------------------------------------------------

_STOP_FIELDS = ("cpu", "pc", "signal", "reason", "breakpoint", "watch", "data_address")


@dataclass(frozen=True)
class Stop:
    """Why the guest stopped by itself (a breakpoint, a step, QEMU pausing it)."""

    cpu: int | None  # the vCPU that stopped (None: the stub named none we know)
    pc: int | None
    signal: int | None
    reason: str  # "breakpoint", "watchpoint", "step", "signal N"
    breakpoint: int | None  # the breakpoint's (or watchpoint's) id, when one was hit
    watch: Watch | None = None  # a watchpoint hit: the access ("write", "read", "access")
    data_address: int | None = None  # ... and the watched address QEMU named
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA, compare=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)  # as parsed

    def to_json(self) -> dict[str, Any]:
        known: dict[str, Any] = {"cpu": self.cpu, "pc": self.pc, "signal": self.signal,
                                 "reason": self.reason, "breakpoint": self.breakpoint}
        if self.watch is not None:
            known |= {"watch": self.watch, "data_address": self.data_address}
        return _write_back(known, self.extra, self.keys)


def parse_stop(reply: Reply) -> Stop:
    watch: Watch | None = reply.choice("watch", WATCHES) \
        if reply.data.get("watch") is not None else None
    return Stop(reply.opt_integer("cpu"), reply.opt_integer("pc"), reply.opt_integer("signal"),
                reply.string("reason"), reply.opt_integer("breakpoint"), watch,
                reply.opt_integer("data_address") if "data_address" in reply.data else None,
                reply.extra(_STOP_FIELDS), reply.keys())


# ---- the guest's status -----------------------------------------------------------------

Mode = Literal["launch", "attach"]
MODES: tuple[Mode, ...] = ("launch", "attach")
_STATUS_FIELDS = (
    "name", "state", "user_paused", "mode", "image", "elf", "accel", "accel_reason", "smp",
    "memory_mb", "append", "forwards", "supervisor_pid", "qemu_pid", "started", "uptime_s",
    "outcome", "console", "run_token", "last_stop", "breakpoints", "frozen", "shared_ram",
    "warnings", "qemu_state", "cost", "ram_read", "paused_cpu")


@dataclass(frozen=True)
class GuestCost:
    """What a guest costs its host, as its supervisor last measured it (/proc)."""

    supervisor_cpu_s: float
    supervisor_rss_bytes: int | None
    qemu_cpu_s: float | None  # None: a QEMU undebug did not start
    qemu_rss_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_cost(reply: Reply) -> GuestCost:
    qemu_cpu = reply.data.get("qemu_cpu_s")
    return GuestCost(reply.number("supervisor_cpu_s"), reply.opt_integer("supervisor_rss_bytes"),
                     None if qemu_cpu is None else reply.number("qemu_cpu_s"),
                     reply.opt_integer("qemu_rss_bytes"))


@dataclass(frozen=True)
class GuestStatus:
    """One guest as its supervisor sees it (``status``, ``pause``, ``resume``), or as it
    last recorded it in session.json. ``undebug ps --json`` shows it as ``to_json()``."""

    name: str
    state: str  # running, paused, ended, or QEMU's run state after a crash
    user_paused: bool
    mode: Mode
    image: str | None
    elf: str | None
    accel: str | None  # None: an attached QEMU without QMP
    accel_reason: str | None
    smp: int | None
    memory_mb: int | None
    append: str | None
    forwards: tuple[str, ...]
    supervisor_pid: int | None
    qemu_pid: int | None  # None: a QEMU undebug did not start
    started: float  # time.time() of the start
    uptime_s: float
    outcome: Outcome | None  # set once the guest crashed or ended
    console: str  # the console log's path
    run_token: int  # changes whenever the guest has run
    last_stop: Stop | None
    breakpoints: tuple[Breakpoint, ...]
    frozen: bool
    shared_ram: bool
    warnings: tuple[str, ...] = ()  # what looks wrong (a trace recording the disk refused)
    qemu_state: str | None = None  # QMP's run state; only the live ``status`` asks QEMU
    cost: GuestCost | None = None  # None: a record from before undebug measured it
    # how clients read guest RAM in bulk: shared-file, qemu-process or supervisor (None:
    # a record from before undebug said)
    ram_read: str | None = None
    paused_cpu: int | None = None  # the vCPU QEMU named when a pause (undebug stop) stopped it
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA, compare=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)  # as parsed

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    @property
    def runs(self) -> bool:
        """Running as the user left it: running now, or paused only for a moment while a
        reader holds it still (a freeze), to run again when the reader lets go."""
        return self.running or (self.state == "paused" and self.frozen and not self.user_paused)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "state": self.state, "user_paused": self.user_paused,
            "mode": self.mode, "image": self.image, "elf": self.elf, "accel": self.accel,
            "accel_reason": self.accel_reason, "smp": self.smp, "memory_mb": self.memory_mb,
            "append": self.append, "forwards": list(self.forwards),
            "supervisor_pid": self.supervisor_pid, "qemu_pid": self.qemu_pid,
            "started": self.started, "uptime_s": self.uptime_s,
            "outcome": self.outcome.to_json() if self.outcome else None,
            "console": self.console, "run_token": self.run_token,
            "last_stop": self.last_stop.to_json() if self.last_stop else None,
            "breakpoints": [bp.to_json() for bp in self.breakpoints],
            "frozen": self.frozen, "shared_ram": self.shared_ram,
            "warnings": list(self.warnings), "qemu_state": self.qemu_state,
            "cost": self.cost.to_json() if self.cost else None, "ram_read": self.ram_read,
            "paused_cpu": self.paused_cpu}
        return _write_back(data, self.extra, self.keys)


def parse_status(reply: Reply) -> GuestStatus:
    outcome, last_stop = reply.opt_object("outcome"), reply.opt_object("last_stop")
    return GuestStatus(
        name=reply.string("name"), state=reply.string("state"), user_paused=reply.boolean("user_paused"),
        mode=reply.choice("mode", MODES), image=reply.opt_string("image"),
        elf=reply.opt_string("elf"), accel=reply.opt_string("accel"),
        accel_reason=reply.opt_string("accel_reason"), smp=reply.opt_integer("smp"),
        memory_mb=reply.opt_integer("memory_mb"), append=reply.opt_string("append"),
        forwards=tuple(reply.strings("forwards")),
        supervisor_pid=reply.opt_integer("supervisor_pid"), qemu_pid=reply.opt_integer("qemu_pid"),
        started=reply.number("started"), uptime_s=reply.number("uptime_s"),
        outcome=parse_outcome(outcome) if outcome else None, console=reply.string("console"),
        run_token=reply.integer("run_token"), last_stop=parse_stop(last_stop) if last_stop else None,
        breakpoints=tuple(parse_breakpoint(bp) for bp in reply.items("breakpoints")),
        frozen=reply.boolean("frozen"), shared_ram=reply.boolean("shared_ram"),
        warnings=tuple(reply.strings("warnings")) if "warnings" in reply.data else (),
        qemu_state=reply.opt_string("qemu_state") if "qemu_state" in reply.data else None,
        cost=parse_cost(cost) if (cost := reply.opt_object("cost") if "cost" in reply.data
                                  else None) else None,
        ram_read=reply.opt_string("ram_read") if "ram_read" in reply.data else None,
        paused_cpu=reply.opt_integer("paused_cpu") if "paused_cpu" in reply.data else None,
        extra=reply.extra(_STATUS_FIELDS), keys=reply.keys())


# ---- registers --------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuRegisters:
    """One vCPU's registers (``read_registers``), named as QEMU's target description."""

    cpu: int
    stub_thread: str  # the gdbstub's thread id of this vCPU
    registers: Mapping[str, int]


def parse_registers(reply: Reply) -> list[CpuRegisters]:
    return [CpuRegisters(cpu.integer("cpu"), cpu.string("stub_thread"), cpu.int_map("registers"))
            for cpu in reply.items("cpus")]


# ---- events -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SupervisorEvent:
    """One event after ``subscribe``: ``stop`` is set for ``stopped``, ``outcome`` for
    ``crashed`` and ``ended``; the QMP events (``stop``, ``resume``, ...) carry neither."""

    type: str
    time: float
    stop: Stop | None = None
    outcome: Outcome | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA, compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"time": self.time, "type": self.type}
        if self.stop is not None:
            data.update(self.stop.to_json())
        if self.outcome is not None:
            data["outcome"] = self.outcome.to_json()
        return {**data, **self.extra}


def parse_event(reply: Reply) -> SupervisorEvent:
    kind, when = reply.string("type"), reply.number("time")
    if kind == "stopped":
        return SupervisorEvent(kind, when, stop=parse_stop(reply),
                               extra=reply.extra(("time", "type", *_STOP_FIELDS)))
    if kind in ("crashed", "ended"):
        return SupervisorEvent(kind, when, outcome=parse_outcome(reply.object("outcome")),
                               extra=reply.extra(("time", "type", "outcome")))
    return SupervisorEvent(kind, when, extra=reply.extra(("time", "type")))


def parse_ram_layout(reply: Reply) -> list[tuple[int, int, int]]:
    """``memory_fd``'s ``layout``: [guest-physical address, file offset, size] regions."""
    regions = []
    for index, region in enumerate(reply.array("layout")):
        if not (isinstance(region, list) and len(region) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in region)):
            raise reply.error(f"field 'layout[{index}]' must be 3 non-negative integers")
        regions.append((region[0], region[1], region[2]))
    return regions


@dataclass(frozen=True)
class ProcessRam:
    """``process_ram``: QEMU ``pid`` (started at ``start_time``, /proc's clock ticks) holds
    guest-physical RAM at host-virtual addresses: ``layout`` [physical, host address, size]."""

    pid: int
    start_time: int
    layout: list[tuple[int, int, int]]


def parse_process_ram(reply: Reply) -> ProcessRam:
    return ProcessRam(reply.integer("pid"), reply.integer("start_time"), parse_ram_layout(reply))


def recorded_status(session: SessionDir) -> GuestStatus:
    """The status the guest's supervisor last wrote to session.json (all that is left of
    a guest whose supervisor has gone); "no guest named ..." when there is none."""
    return parse_status(Reply(session.read_record(), f"the session record of {session.name!r}"))
