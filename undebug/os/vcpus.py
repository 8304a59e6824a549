"""The fallback when undebug does not know the guest OS (or its ELF lacks DWARF): each
vCPU shown as a thread, so registers, backtraces and memory still work on any image."""

from __future__ import annotations

from undebug.os.provider import GuestThread, ThreadProvider, ThreadSnapshot
from undebug.target import Target

__all__ = ["VcpuProvider"]


class VcpuProvider(ThreadProvider):
    """One pseudo-thread per vCPU (id = vCPU index + 1), with a warning saying why."""

    name = "vcpus"
    required_symbols = ()

    def __init__(self, target: Target, reason: str) -> None:
        super().__init__(target)
        self.reason = reason

    def check(self) -> None:
        """Registers are all it needs: they come from the gdbstub, not the ELF."""

    def walk(self) -> ThreadSnapshot:
        threads = [GuestThread(id=cpu + 1, name=f"vCPU {cpu}", state="running", cpu=cpu,
                               registers=dict(self.target.registers(cpu)), stack=None)
                   for cpu in range(self.target.cpu_count())]
        return ThreadSnapshot(threads, {t.cpu: t.id for t in threads if t.cpu is not None},
                              [f"{self.reason}: showing the vCPUs as threads"])
