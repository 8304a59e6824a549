"""Choose QEMU's accelerator: real KVM when the host has it, TCG otherwise.

``/dev/kvm`` alone proves nothing: under nested virtualisation it can be the ``kvm_pvm``
module, which emulates guest code about 100x slower than TCG and aborts with
``-cpu host``. Only a hardware KVM module (``kvm_intel`` or ``kvm_amd``) counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from undebug.errors import EnvironmentMissing, UsageError

__all__ = ["Accel", "choose_accel"]

HARDWARE_KVM_MODULES = ("kvm_intel", "kvm_amd")
EMULATING_KVM_MODULES = ("kvm_pvm",)


@dataclass(frozen=True)
class Accel:
    """The accelerator QEMU gets, with the reason for a person to read."""

    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg"]


def _loaded(sys_root: Path, module: str) -> bool:
    return (sys_root / "sys" / "module" / module).is_dir()


def _kvm_usable(sys_root: Path) -> tuple[bool, str]:
    dev = sys_root / "dev" / "kvm"
    if not dev.exists():
        return False, "no /dev/kvm"
    emulating = [m for m in EMULATING_KVM_MODULES if _loaded(sys_root, m)]
    if emulating:
        return False, f"/dev/kvm is {emulating[0]} (emulated, slower than TCG)"
    hardware = [m for m in HARDWARE_KVM_MODULES if _loaded(sys_root, m)]
    if not hardware:
        return False, "no kvm_intel or kvm_amd module loaded"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"/dev/kvm is not read-writable for this user ({hardware[0]} loaded)"
    return True, f"{hardware[0]} loaded and /dev/kvm usable"


def choose_accel(requested: str = "auto", sys_root: Path = Path("/")) -> Accel:
    """Resolve ``auto``/``kvm``/``tcg`` against the host rooted at ``sys_root``.

    ``sys_root`` exists so tests can hand in fixture ``/sys/module`` trees.
    """
    if requested not in ("auto", "kvm", "tcg"):
        raise UsageError(f"unknown accelerator {requested!r}", hint="use auto, kvm or tcg")
    if requested == "tcg":
        return Accel("tcg", "requested")
    usable, why = _kvm_usable(sys_root)
    if requested == "kvm":
        if not usable:
            raise EnvironmentMissing(
                f"KVM was requested but is not usable: {why}", hint="use --accel tcg or auto"
            )
        return Accel("kvm", why)
    return Accel("kvm", why) if usable else Accel("tcg", f"TCG because {why}")
