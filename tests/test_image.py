"""Boot-image checks on real ELF files built here with gcc and ld."""

import subprocess
from pathlib import Path

import pytest

from undebug.errors import UsageError
from undebug.vm.image import inspect_image

PVH_NOTE = """
    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
"""
MULTIBOOT = """
    .section .multiboot, "a"
    .p2align 2
    .long 0x1BADB002, 0, -0x1BADB002
"""
ENTRY = """
    .text
    .globl _start
_start:
    hlt
"""


def build(tmp_path: Path, name: str, source: str, bits: int) -> Path:
    asm, obj, elf = tmp_path / f"{name}.S", tmp_path / f"{name}.o", tmp_path / f"{name}.elf"
    asm.write_text(source)
    subprocess.run(["gcc", f"-m{bits}", "-c", str(asm), "-o", str(obj)], check=True)
    script = tmp_path / f"{name}.ld"
    script.write_text("ENTRY(_start) SECTIONS { . = 1M; .multiboot : { *(.multiboot) } "
                      ".text : { *(.text) } .note.Xen : { *(.note.Xen) } }")
    emulation = "elf_i386" if bits == 32 else "elf_x86_64"
    subprocess.run(["ld", "-m", emulation, "-T", str(script), str(obj), "-o", str(elf)],
                   check=True)
    return elf


def test_reference_guest_boots_through_pvh(guest_image: Path) -> None:
    image = inspect_image(guest_image)
    assert image.boot == "pvh" and image.is_elf64


def test_pvh_note_in_elf32(tmp_path: Path) -> None:
    assert inspect_image(build(tmp_path, "pvh32", PVH_NOTE + ENTRY, 32)).boot == "pvh"


def test_multiboot_elf32_like_unikraft(tmp_path: Path) -> None:
    assert inspect_image(build(tmp_path, "mb", MULTIBOOT + ENTRY, 32)).boot == "multiboot"


def test_multiboot_elf64_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="refuses multiboot for ELF64"):
        inspect_image(build(tmp_path, "mb64", MULTIBOOT + ENTRY, 64))


def test_elf64_without_boot_protocol(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not bootable with -kernel"):
        inspect_image(build(tmp_path, "plain", ENTRY, 64))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "found an empty file"),
    (b"#!/bin/sh\necho hi\n", "neither an ELF kernel nor a disk image"),
    (b"\x7fELF\x02\x01", "truncated or corrupt ELF header"),
])
def test_not_an_elf(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "image"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        inspect_image(path)


def test_corrupt_program_headers_do_not_crash(tmp_path: Path) -> None:
    elf = build(tmp_path, "pvhc", PVH_NOTE + ENTRY, 64).read_bytes()
    corrupt = bytearray(elf)
    corrupt[0x20:0x28] = (len(elf) - 8).to_bytes(8, "little")  # e_phoff near the end
    path = tmp_path / "corrupt.elf"
    path.write_bytes(bytes(corrupt))
    with pytest.raises(UsageError):
        inspect_image(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        inspect_image(tmp_path / "nope.elf")
    with pytest.raises(UsageError, match="is a directory"):
        inspect_image(tmp_path)


def linux_header(tmp_path: Path, version: int, cmdline_size: int) -> Path:
    """The setup header of an x86 Linux bzImage (Documentation/arch/x86/boot.rst) and
    nothing behind it: enough for QEMU to load it and for undebug to read the limits."""
    import struct

    data = bytearray(0x4000)
    data[0x1F1] = 4  # setup_sects
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, version)
    data[0x211] = 1  # loadflags: LOADED_HIGH
    struct.pack_into("<I", data, 0x238, cmdline_size)
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(data))
    return path


def test_linux_command_line_limit_from_the_boot_protocol(tmp_path: Path) -> None:
    assert inspect_image(linux_header(tmp_path, 0x20F, 64)).cmdline_max == 64
    assert inspect_image(linux_header(tmp_path, 0x205, 64)).cmdline_max == 255  # before 2.06
    assert inspect_image(build(tmp_path, "pvh", PVH_NOTE + ENTRY, 64)).cmdline_max is None


def test_an_append_longer_than_the_image_takes_is_warned_about(tmp_path: Path) -> None:
    from tests.conftest import undebug

    image = linux_header(tmp_path, 0x20F, 64)
    result = undebug("run", "--ci", "--timeout", "2", "--append", "a" * 65, str(image))
    assert ("warning: --append is 65 bytes but this Linux bzImage takes at most 64: the rest "
            "is dropped\n") in result.stderr
    fits = undebug("run", "--ci", "--timeout", "2", "--append", "a" * 64, str(image))
    assert "warning" not in fits.stderr


def test_an_image_qemu_refuses_says_what_qemu_said(tmp_path: Path) -> None:
    """QEMU makes its sockets, then refuses the kernel and exits: the error is QEMU's
    reason, not the QMP connection that was refused after it."""
    from tests.conftest import undebug

    image = tmp_path / "bzImage"  # a setup header of protocol 1.00 and nothing else
    image.write_bytes(bytes(0x202) + b"HdrS" + (0x100).to_bytes(2, "little") + bytes(0x1F8))
    result = undebug("run", "--ci", "--timeout", "5", str(image))
    assert result.code == 2
    assert result.stderr.startswith("undebug: error: QEMU failed to start: qemu: invalid "
                                    "kernel header\n"), result.stderr


def _mbr_disk(path: Path, partition_head: bytes) -> Path:
    """A raw disk with an MBR: one partition at LBA 4 whose first bytes are
    ``partition_head`` (Nanos' mkfs writes TFS there: its magic is ``NVMTFS``)."""
    mbr = bytearray(512)
    mbr[0x1BE:0x1CE] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + (4).to_bytes(4, "little") + \
        (64).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(mbr) + bytes(3 * 512) + partition_head + bytes(64 * 512))
    return path


def test_a_disk_image_with_nanos_tfs_is_recognised(tmp_path: Path) -> None:
    from undebug.os import boot_defaults

    image = inspect_image(_mbr_disk(tmp_path / "disk.raw", b"NVMTFS\x05\x01"))
    assert image.is_disk and image.file_systems == ("nanos-tfs",)
    defaults = boot_defaults(image)
    assert defaults is not None
    assert (defaults.machine, defaults.disk_if, defaults.devices) == \
        ("q35", "virtio-scsi", ("virtio-rng-pci",))


def test_a_disk_image_of_an_unknown_os_has_no_defaults(tmp_path: Path) -> None:
    from undebug.os import boot_defaults

    image = inspect_image(_mbr_disk(tmp_path / "disk.raw", b"\xeb\x3c\x90mkfs.fat"))
    assert image.is_disk and image.file_systems == () and boot_defaults(image) is None
