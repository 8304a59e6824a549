"""OS awareness: one module per guest OS, plus shared walkers such as the x86-64 page
tables. :func:`provider_for` picks the module whose symbols the guest's ELF has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.os.provider import ThreadProvider
    from undebug.target import Target

__all__ = ["provider_for"]


def provider_for(target: Target) -> ThreadProvider:
    """The thread provider for ``target``'s OS, detected from its ELF symbols; for an OS
    undebug does not know, or an ELF without what its provider needs, the vCPUs."""
    from undebug.os.refguest import RefguestProvider
    from undebug.os.unikraft import UnikraftProvider
    from undebug.os.vcpus import VcpuProvider

    providers: list[type[ThreadProvider]] = [RefguestProvider, UnikraftProvider]
    for provider in providers:
        if provider.detect(target.elf):
            found = provider(target)
            try:
                found.check()
            except UsageError as exc:
                return VcpuProvider(target, exc.message)
            return found
    known = ", ".join(p.name for p in providers)
    what = "it has no symbols (stripped?)" if not target.elf.has_symbols else \
        "it is none of the OSes undebug knows"
    return VcpuProvider(target, f"no guest threads for {target.elf.path}: {what} "
                                f"(undebug knows: {known})")
