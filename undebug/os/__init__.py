"""OS awareness: one module per guest OS, plus shared walkers such as the x86-64 page
tables. :func:`provider_for` picks the module whose symbols the guest's ELF has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.elf import ElfFile
    from undebug.os.provider import BootDefaults, ThreadProvider
    from undebug.target import Target
    from undebug.vm.image import BootImage

__all__ = ["boot_defaults", "provider_class", "provider_for"]


def _known() -> list[type[ThreadProvider]]:
    from undebug.os.nanos import NanosProvider
    from undebug.os.refguest import RefguestProvider
    from undebug.os.unikraft import UnikraftProvider

    return [RefguestProvider, UnikraftProvider, NanosProvider]


def boot_defaults(image: BootImage) -> BootDefaults | None:
    """How the OS whose disk ``image`` is needs to be booted, if one recognises it."""
    return next((d for p in _known() if (d := p.boot_defaults(image)) is not None), None)


def provider_class(elf: ElfFile) -> type[ThreadProvider] | None:
    """The provider of the OS ``elf`` is, from its symbols alone (no guest needed)."""
    return next((p for p in _known() if p.detect(elf)), None)


def provider_for(target: Target) -> ThreadProvider:
    """The thread provider for ``target``'s OS, detected from its ELF symbols; for an OS
    undebug does not know, or an ELF without what its provider needs, the vCPUs."""
    from undebug.os.vcpus import VcpuProvider

    provider = provider_class(target.elf)
    if provider is not None:
        found: ThreadProvider = provider(target)
        try:
            found.check()
        except UsageError as exc:
            found = VcpuProvider(target, exc.message)
        found.place_programs()
        return found
    known = ", ".join(p.name for p in _known())
    what = "it has no symbols (stripped?)" if not target.elf.has_symbols else \
        "it is none of the OSes undebug knows"
    fallback = VcpuProvider(target, f"no guest threads for {target.elf.path}: {what} "
                                    f"(undebug knows: {known})")
    fallback.place_programs()
    return fallback
