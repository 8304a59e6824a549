"""What ``run`` does between QEMU's start and the guest's first instruction: check that the
debug ELF is the booted image, and set the OS's crash breakpoints, so a crash is kept.

The guest is launched held (``-S``); this runs, then releases it (unless ``--paused``).
OS knowledge stays here, in front of the supervisor, which is OS-agnostic: the provider
says where its OS's crash path starts; the supervisor only sees ``crash`` breakpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from undebug.errors import SessionError, UndebugError, UsageError
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir

if TYPE_CHECKING:
    from undebug.session.launcher import Launched
    from undebug.target import Target

__all__ = ["arm_adopted_guest", "prepare_guest"]

BOOT_WAIT_S = 120.0  # TCG on a loaded host: Nanos takes 1.5-10 s to relocate itself
POLL_S = 0.25


def prepare_guest(launched: Launched, force: bool, paused: bool) -> None:
    """Check the ELF (a mismatch ends the guest: exit 2 unless ``force``), arm the crash
    breakpoints, then let the guest run unless ``paused``."""
    from undebug.target import open_target

    claim = launched.claim
    with SupervisorClient(claim.session) as client:
        if _is_elf(launched.status.elf) and _boots_from_disk(claim.session):
            if paused:
                launched.warnings.append("--paused holds the guest before its firmware loads "
                                         "the kernel from the disk: the ELF is not checked "
                                         "and no crash breakpoint is set")
                return
            launched.status = client.resume()
            try:
                launched.warnings.extend(_when_booted(claim.session.name, client, force))
            except UsageError:
                client.kill()
                claim.remove()
                raise
            return
        if _is_elf(launched.status.elf):
            try:
                with open_target(claim.session.name, force=force) as target:
                    launched.warnings.extend(target.warnings)
                    launched.warnings.extend(_arm_crash_stops(client, target))
            except SessionError:
                return  # it ended already: its outcome tells why
            except UsageError:
                client.kill()
                claim.remove()
                raise
        if not paused:
            launched.status = client.resume()


def arm_adopted_guest(name: str) -> list[str]:
    """``attach``'s part: the crash breakpoints of a guest that runs already, if its ELF
    is the one it runs (a breakpoint set from another build's symbols could land inside
    an instruction); what stood in the way is a warning, the attach goes on."""
    from undebug.target import open_target

    session = SessionDir.named(name)
    try:
        with SupervisorClient(session) as client, open_target(name) as target:
            return target.warnings + _arm_crash_stops(client, target)
    except UndebugError as exc:
        return [f"no crash breakpoints: {exc.message}"]


def _boots_from_disk(session: SessionDir) -> bool:
    from undebug.session.spec import SessionSpec

    return SessionSpec.load(session.path).image_is_disk


def _when_booted(name: str, client: SupervisorClient, force: bool) -> list[str]:
    """A kernel booted from a disk is not in memory at the first instruction: its
    firmware loads it, and it may move itself (KASLR). Look again every POLL_S until its
    provider says it runs where the Target found it, then check the ELF and arm the crash
    stops at their runtime addresses; after BOOT_WAIT_S, the last mismatch is the error."""
    import time

    from undebug.os import provider_class
    from undebug.target import open_target

    deadline = time.monotonic() + BOOT_WAIT_S
    last: UsageError | None = None
    while time.monotonic() < deadline:
        try:
            with open_target(name, force=force) as target:
                provider = provider_class(target.elf)
                if provider is None or provider.booted(target):
                    return target.warnings + _arm_crash_stops(client, target)
        except SessionError:
            return []  # it ended already: its outcome tells why
        except UsageError as exc:
            last = exc  # not loaded yet, or not this ELF: said if it stays so
        time.sleep(POLL_S)
    if last is not None:
        raise last
    return [f"the kernel did not finish booting in {BOOT_WAIT_S:.0f} s: no crash breakpoints"]


def _is_elf(path: str | None) -> bool:
    try:
        with open(path or "", "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False  # a Linux bzImage and no debug ELF: nothing to check against


def _arm_crash_stops(client: SupervisorClient, target: Target) -> list[str]:
    """One ``crash`` breakpoint per crash stop the OS provider names; what could not be set
    is a warning (the crash then ends as the OS makes it: pvpanic, or QEMU exiting). None
    from an ELF that is not the guest's (``--force``): under KVM a breakpoint is an int3
    written into guest memory, and at another build's address it would corrupt code."""
    from undebug.os import provider_class

    if target.elf_mismatch is not None:
        return ["no crash breakpoints: the ELF is not the guest's"]
    provider = provider_class(target.elf)
    warnings = []
    for stop in provider.crash_stops(target.elf) if provider else []:
        address = target.address_of(stop.symbol)
        if address is None:
            warnings.append(f"no symbol {stop.symbol}: a crash through it is not stopped")
            continue
        when = (stop.register, stop.value) if stop.register is not None and \
            stop.value is not None else None
        memory = (stop.offset, stop.values) if stop.offset is not None else None
        try:
            client.insert_breakpoint(address, False, stop.label, owner="crash", when=when,
                                     when_memory=memory)
        except SessionError as exc:
            warnings.append(f"cannot stop crashes at {stop.symbol}: {exc.message}")
    return warnings
