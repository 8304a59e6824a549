"""What ``run`` boots and with which symbols: the machine an OS's disk image needs, and
which ``--debug-elf`` files are the kernel's and which are programs'.

OS knowledge comes from the providers (:func:`undebug.os.boot_defaults`,
:func:`undebug.os.provider_class`); the launcher below only gets the choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from undebug.errors import UsageError

__all__ = ["BootChoices", "boot_choices", "split_debug_elfs"]


@dataclass(frozen=True)
class BootChoices:
    machine: str
    disk_if: str
    devices: tuple[str, ...]


def boot_choices(image: Path, machine: str | None, disk_if: str | None) -> BootChoices:
    """The user's ``--machine``/``--disk-if``, else the OS's defaults for a disk image it
    recognises (Nanos: q35, virtio-scsi, virtio-rng-pci), else ``pc`` and virtio-blk."""
    from undebug.os import boot_defaults
    from undebug.vm.image import inspect_image

    found = inspect_image(image)  # a bad IMAGE is said now, as it always was
    defaults = boot_defaults(found) if found.is_disk else None
    return BootChoices(
        machine=machine or (defaults.machine if defaults else "pc"),
        disk_if=disk_if or (defaults.disk_if if defaults else "virtio-blk"),
        devices=defaults.devices if defaults else ())


def _path(spec: str) -> tuple[Path, bool]:
    """FILE of ``FILE[@ADDR]`` (a file whose name has an ``@`` is taken whole)."""
    if "@" in spec and not Path(spec).exists():
        return Path(spec.rpartition("@")[0]), True
    return Path(spec), False


def split_debug_elfs(specs: list[str]) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The kernel ELF (one an OS provider recognises; else the first one) and the
    programs' (every other, ``FILE[@ADDR]``)."""
    from undebug.elf import ElfFile
    from undebug.os import provider_class

    kernels: list[Path] = []
    programs: list[str] = []
    for spec in specs:
        path, addressed = _path(spec)
        try:
            is_kernel = not addressed and provider_class(ElfFile(path)) is not None
        except UsageError:
            is_kernel = False  # the launcher says what is wrong with it
        (kernels.append(path) if is_kernel else programs.append(spec))
    if not kernels and programs and not _path(programs[0])[1]:
        kernels.append(Path(programs.pop(0)))
    if len(kernels) > 1:
        raise UsageError("more than one kernel ELF among the --debug-elf files: "
                         + ", ".join(map(str, kernels)),
                         hint="pass one kernel; the others must be programs")
    return tuple(kernels), tuple(programs)
