"""Check that a file is a kernel image QEMU can boot with ``-kernel``, before QEMU runs.

QEMU's own errors for a bad image are terse or absent (a non-bootable ELF64 may just
hang in firmware), so undebug says up front what it found. QEMU's x86 ``-kernel`` boots:
an ELF with a PVH entry note (``XEN_ELFNOTE_PHYS32_ENTRY``; QEMU refuses multiboot for
ELF64), a 32-bit multiboot (v1) image such as Unikraft's, or a Linux bzImage. A disk
image (an MBR boot sector, what Nanos' mkfs writes) boots from the firmware instead; its
partitions' first bytes say which file system, hence which OS, it holds.
The file is untrusted: every offset is bounds-checked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from undebug.elf_headers import ElfHeaderError, notes
from undebug.errors import UsageError

__all__ = ["BootImage", "check_debug_elf", "debug_elf_beside", "inspect_disk", "inspect_image"]

XEN_ELFNOTE_PHYS32_ENTRY = 18
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192
_MACHINES = {3: "i386", 62: "x86-64", 183: "aarch64", 243: "riscv"}
SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"  # at 510
MBR_PARTITIONS = 0x1BE  # four 16-byte entries: type at +4, first LBA at +8
# Magic numbers at the start of a partition, and the file system they name.
FILE_SYSTEMS = {b"NVMTFS": "nanos-tfs"}  # Nanos' TFS (src/fs/tlog.c tfs_magic)


@dataclass(frozen=True)
class BootImage:
    """What kind of bootable image a file is."""

    path: Path
    boot: str  # "pvh", "multiboot", "linux", or "disk" (boots from the firmware)
    description: str  # e.g. "ELF64 x86-64 with a PVH entry note"
    is_elf64: bool
    cmdline_max: int | None = None  # the longest command line it takes, where it says
    file_systems: tuple[str, ...] = ()  # a disk's partitions' known file systems

    @property
    def is_disk(self) -> bool:
        return self.boot == "disk"


def _linux_cmdline_max(data: bytes) -> int:
    """The x86 Linux boot protocol's ``cmdline_size`` (at 0x238 from version 2.06; 255
    before): the longest command line the kernel reads, without the NUL."""
    if len(data) >= 0x23C and struct.unpack_from("<H", data, 0x206)[0] >= 0x206:
        return int(struct.unpack_from("<I", data, 0x238)[0])
    return 255


def _has_multiboot_header(data: bytes) -> bool:
    for at in range(0, min(len(data), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, at)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def _file_systems(f: BinaryIO, mbr: bytes) -> tuple[str, ...]:
    """The known file systems at the start of the MBR's partitions (type 0: unused)."""
    found = []
    for entry in range(4):
        at = MBR_PARTITIONS + 16 * entry
        kind, = struct.unpack_from("<B", mbr, at + 4)
        lba, = struct.unpack_from("<I", mbr, at + 8)
        if kind == 0 or lba == 0:
            continue
        f.seek(lba * SECTOR)
        head = f.read(16)
        found += [name for magic, name in FILE_SYSTEMS.items() if head.startswith(magic)]
    return tuple(found)


def inspect_disk(path: Path, option: str = "image") -> BootImage:
    """``path`` as a bootable disk image (an MBR), or :class:`UsageError` saying why not."""
    try:
        with path.open("rb") as f:
            mbr = f.read(SECTOR)
            if len(mbr) < SECTOR or mbr[510:512] != MBR_SIGNATURE:
                raise UsageError(f"{option} {path} is not a disk image: no boot sector "
                                 "(0x55AA at byte 510)")
            systems = _file_systems(f, mbr)
    except FileNotFoundError:
        raise UsageError(f"{option} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path} is a directory, not an image") from None
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror}") from None
    what = f" holding {', '.join(systems)}" if systems else ""
    return BootImage(path, "disk", f"disk image with a boot sector{what}", False,
                     file_systems=systems)


def inspect_image(path: Path) -> BootImage:
    """Return how QEMU would boot ``path``, or raise :class:`UsageError` saying why not."""
    try:
        with path.open("rb") as f:
            data = f.read(64 << 20)
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"image {path} is a directory, not a kernel image") from None
    except OSError as exc:
        raise UsageError(f"cannot read image {path}: {exc.strerror}") from None
    if len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        return BootImage(path, "linux", "Linux bzImage", False, _linux_cmdline_max(data))
    if data[:4] != b"\x7fELF" and data[510:512] == MBR_SIGNATURE:
        return inspect_disk(path)
    if data[:4] != b"\x7fELF":
        found = "an empty file" if not data else f"a file starting with {data[:8]!r}"
        raise UsageError(
            f"image {path} is neither an ELF kernel nor a disk image: found {found} and no "
            "boot sector",
            hint="pass the unikernel's ELF image (for the reference guest: build/refguest.elf) "
            "or its bootable disk image",
        )
    if len(data) < 0x40 or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise UsageError(f"image {path} has a truncated or corrupt ELF header")
    is64, little = data[4] == 2, data[5] == 1
    machine, = struct.unpack_from("<H" if little else ">H", data, 0x12)
    arch = _MACHINES.get(machine, f"machine {machine}")
    kind = f"ELF{64 if is64 else 32} {arch}"
    if machine not in (3, 62):
        raise UsageError(f"image {path} is an {kind} executable; undebug boots x86 guests")
    try:
        elf_notes = notes(data)
    except ElfHeaderError as exc:
        raise UsageError(f"image {path}: {kind} with corrupt program headers ({exc})") from None
    if any(n.name == b"Xen" and n.type == XEN_ELFNOTE_PHYS32_ENTRY for n in elf_notes):
        return BootImage(path, "pvh", f"{kind} with a PVH entry note", is64)
    if _has_multiboot_header(data):
        if is64:
            raise UsageError(
                f"image {path} is an {kind} with a multiboot header: QEMU refuses multiboot "
                "for ELF64",
                hint="add a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or link a 32-bit image",
            )
        return BootImage(path, "multiboot", f"{kind} with a multiboot header", is64)
    raise UsageError(
        f"image {path} is an {kind} executable but not bootable with -kernel: no PVH entry "
        "note (XEN_ELFNOTE_PHYS32_ENTRY) and no multiboot header in its first 8 KiB",
    )


def check_debug_elf(path: Path, option: str) -> Path:
    """``path`` resolved, if it is a readable ELF file (what ``option`` named)."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except IsADirectoryError:
        raise UsageError(f"{option} {path} is a directory, not an ELF file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror}") from None
    if magic != b"\x7fELF":
        raise UsageError(f"{option} {path} is not an ELF file")
    return path.resolve()


def debug_elf_beside(image: Path) -> Path | None:
    """``IMAGE.dbg`` next to the image, where Unikraft's build leaves the symbols of a
    stripped boot image, if it is there."""
    candidate = image.with_name(image.name + ".dbg")
    return candidate if candidate.is_file() else None
