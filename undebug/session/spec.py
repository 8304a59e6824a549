"""What a supervisor is asked to hold: a guest to launch, or a running QEMU to adopt.

The CLI writes it as ``spec.json`` in the session directory; the supervisor reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from undebug.session.store import SessionDir
from undebug.vm.accel import Accel
from undebug.vm.qemu import Forward, QemuConfig

__all__ = ["SessionSpec", "socket_address"]


@dataclass(frozen=True)
class SessionSpec:
    mode: str  # "launch": start QEMU; "attach": adopt a running one
    image: str | None = None  # the kernel QEMU boots (launch)
    elf: str | None = None  # the ELF with symbols, when it is not the image
    accel: str = "tcg"
    accel_reason: str = ""
    memory_mb: int = 128
    smp: int = 1
    append: str = ""
    forwards: list[str] = field(default_factory=list)
    start_paused: bool = False
    trace: bool = True  # offer the guest a virtio-serial trace port and record its stream
    trace_file: str | None = None  # also write the stream here (run --trace-file)
    trace_max_size: int = 256 << 20  # bytes kept per recording, in chunks (0: no limit)
    gdb: str | None = None  # attach: HOST:PORT or a unix socket path
    qmp: str | None = None  # attach: QMP unix socket path (or HOST:PORT), optional
    machine: str = "pc"
    image_is_disk: bool = False  # image is the boot disk (run DISK)
    kernel: str | None = None  # -kernel with a disk image (run --kernel)
    disks: list[str] = field(default_factory=list)  # run --disk, after the image's
    disk_if: str = "virtio-blk"
    devices: list[str] = field(default_factory=list)  # more -device arguments
    programs: list[str] = field(default_factory=list)  # program ELFs, "PATH" or "PATH@ADDR"
    sysroot: str | None = None  # where the programs' libraries are on the host (run --sysroot)

    def save(self, session_path: Path) -> None:
        fd = os.open(session_path / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, session_path: Path) -> SessionSpec:
        data: dict[str, Any] = json.loads((session_path / "spec.json").read_text())
        return cls(**data)

    def qemu_config(self, session: SessionDir) -> QemuConfig:
        assert self.image is not None
        return QemuConfig(
            image=Path(self.image), accel=Accel(self.accel, self.accel_reason),
            files=session.qemu_files, memory_mb=self.memory_mb, smp=self.smp,
            append=self.append, forwards=tuple(Forward.parse(f) for f in self.forwards),
            trace=self.trace, machine=self.machine, image_is_disk=self.image_is_disk,
            kernel=Path(self.kernel) if self.kernel else None,
            disks=tuple(Path(d) for d in self.disks), disk_if=self.disk_if,
            devices=tuple(self.devices))

    def gdb_address(self, session: SessionDir) -> str | tuple[str, int]:
        if self.mode == "launch":
            return str(session.qemu_files.gdb_socket)
        assert self.gdb is not None
        return socket_address(self.gdb)

    def qmp_address(self, session: SessionDir) -> str | tuple[str, int] | None:
        if self.mode == "launch":
            return str(session.qemu_files.qmp_socket)
        return None if self.qmp is None else socket_address(self.qmp)


def socket_address(text: str) -> str | tuple[str, int]:
    """``HOST:PORT`` as a TCP address, anything else as a unix socket path."""
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else text
