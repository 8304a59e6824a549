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
    """The thread provider for ``target``'s OS, detected from its ELF symbols."""
    from undebug.os.refguest import RefguestProvider

    providers: list[type[ThreadProvider]] = [RefguestProvider]
    for provider in providers:
        if provider.detect(target.elf):
            return provider(target)
    known = ", ".join(p.name for p in providers)
    what = "has no symbols (stripped?)" if not target.elf.has_symbols else \
        "has none of their symbols"
    raise UsageError(f"no OS awareness for {target.elf.path}: it {what}",
                     hint=f"undebug knows: {known}")
