"""The QEMU command line for one guest, and finding the QEMU binary.

Every choice here exists so that a crash can be inspected afterwards:
``-no-reboot -action reboot=shutdown,shutdown=pause,panic=pause`` keeps a panicked or
triple-faulted guest paused with its RAM (QEMU's defaults exit 0 and lose it), ``-S``
lets the supervisor connect the gdbstub and QMP before the first guest instruction, and
every socket is a unix socket inside the session's 0700 directory, so no other local
user can reach the debug stub (a loopback TCP port would be open to all of them).
"""

from __future__ import annotations

import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from undebug.errors import EnvironmentMissing, UsageError
from undebug.vm.accel import Accel

__all__ = ["DISK_INTERFACES", "ISA_DEBUG_EXIT_PORT", "MACHINES", "Forward", "QemuConfig",
           "QemuFiles", "RamRegion", "check_machine", "find_qemu", "guest_exit_code",
           "ram_layout"]

QEMU_BINARY = "qemu-system-x86_64"
ISA_DEBUG_EXIT_PORT = 0x501  # QEMU's default, where Unikraft and Nanos write their exit
MACHINES = ("pc", "q35", "microvm")
DISK_INTERFACES = ("virtio-blk", "virtio-scsi", "ide")
_FORWARD = re.compile(r"^(tcp|udp):(\d{0,5}):(\d{1,5})$")


def find_qemu() -> str:
    """Path of ``qemu-system-x86_64`` or an :class:`EnvironmentMissing` saying how to get it."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise EnvironmentMissing(
            f"{QEMU_BINARY} is not installed",
            hint="install it with: sudo apt-get install qemu-system-x86 (or run make setup)",
        )
    return path


@dataclass(frozen=True)
class RamRegion:
    """Guest-physical ``[physical, physical + size)`` is ``[offset, offset + size)`` of the
    RAM backing file."""

    physical: int
    offset: int
    size: int


def ram_layout(memory_mb: int, machine: str = "pc") -> tuple[RamRegion, ...]:
    """Where the machine puts its RAM in guest-physical space.

    ``pc``: below 3.5 GiB one block at 0; from 3.5 GiB up, the i440fx machine keeps 3 GiB
    below the 4 GiB PCI hole and maps the rest at 4 GiB (``gigabyte_align``). ``q35``:
    below 2.75 GiB one block, else 2 GiB below the hole (hw/i386/pc_q35.c). ``microvm``:
    below 3 GiB one block, else 3 GiB below 4 GiB (hw/i386/microvm.c).
    """
    size = memory_mb << 20
    limit, low = {"q35": (0xB000_0000, 0x8000_0000),
                  "microvm": (0xC000_0000, 0xC000_0000)}.get(machine, (0xE000_0000, 0xC000_0000))
    if size < limit:
        return (RamRegion(0, 0, size),)
    return (RamRegion(0, 0, low), RamRegion(1 << 32, low, size - low))


def guest_exit_code(status: int) -> int | None:
    """The code the guest wrote to isa-debug-exit, from QEMU's exit status.

    QEMU exits with ``(code << 1) | 1``; an even status is QEMU's own exit (0 = quit).
    """
    return status >> 1 if status & 1 else None


@dataclass(frozen=True)
class Forward:
    """A host port forwarded to the guest, bound to 127.0.0.1 only."""

    proto: str
    host_port: int
    guest_port: int

    @classmethod
    def parse(cls, spec: str) -> Forward:
        """``PROTO:HOSTPORT:GUESTPORT``; HOSTPORT 0 or empty: any free port (:meth:`bound`)."""
        match = _FORWARD.match(spec)
        host = int(match.group(2) or 0) if match else -1
        if not match or not 0 <= host < 65536 or not 0 < int(match.group(3)) < 65536:
            raise UsageError(
                f"bad --forward {spec!r}", hint="write it as tcp:HOSTPORT:GUESTPORT or "
                "udp:HOSTPORT:GUESTPORT, e.g. tcp:8080:80 (HOSTPORT 0 or empty: a free port)"
            )
        return cls(match.group(1), host, int(match.group(3)))

    def bound(self) -> Forward:
        """This forward with a free loopback port of its protocol in place of port 0 (the
        kernel's choice, released just before QEMU binds it: another process could take
        it in between, and QEMU then fails to start, saying so)."""
        if self.host_port:
            return self
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        return Forward(self.proto, port, self.guest_port)

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_port}:{self.guest_port}"

    def hostfwd(self) -> str:
        return f"hostfwd={self.proto}:127.0.0.1:{self.host_port}-:{self.guest_port}"


def check_machine(memory_mb: int, smp: int, machine: str = "pc",
                  disk_if: str = "virtio-blk") -> None:
    """Refuse a machine QEMU's ``-m``/``-smp``/``-M`` would not take, before anything starts."""
    if machine not in MACHINES:
        raise UsageError(f"--machine {machine!r} is not one of {', '.join(MACHINES)}")
    if disk_if not in DISK_INTERFACES:
        raise UsageError(f"--disk-if {disk_if!r} is not one of {', '.join(DISK_INTERFACES)}")
    if machine == "microvm" and disk_if != "virtio-blk":
        raise UsageError(f"--disk-if {disk_if} needs PCI or an IDE bus: microvm has "
                         "neither", hint="use --disk-if virtio-blk (virtio-mmio) on microvm")
    if not 16 <= memory_mb <= 1 << 20:
        raise UsageError(f"--memory {memory_mb} MiB is out of range (16 .. 1048576)")
    if not 1 <= smp <= 255:
        raise UsageError(f"--smp {smp} is out of range (1 .. 255)")


@dataclass(frozen=True)
class QemuFiles:
    """Where QEMU puts its sockets and console: paths the caller chose (a session
    directory's layout is session/store.py's; this module only uses them)."""

    qmp_socket: Path
    gdb_socket: Path
    trace_socket: Path
    console_log: Path


@dataclass(frozen=True)
class QemuConfig:
    """Everything that decides one guest's QEMU command line."""

    image: Path
    accel: Accel
    files: QemuFiles
    memory_mb: int = 128
    smp: int = 1
    append: str = ""
    forwards: tuple[Forward, ...] = field(default_factory=tuple)
    ram_fd: int | None = None  # guest RAM in this memfd (passed to QEMU), for direct reads
    trace: bool = True  # a virtio-serial port for the guest tracing stub
    machine: str = "pc"
    image_is_disk: bool = False  # IMAGE is the boot disk, not a -kernel image
    kernel: Path | None = None  # -kernel with a disk IMAGE
    disks: tuple[Path, ...] = ()  # more disks, after IMAGE's
    disk_if: str = "virtio-blk"
    devices: tuple[str, ...] = ()  # more -device arguments (an OS's virtio-rng-pci)

    def _disk_args(self) -> list[str]:
        """Every disk on ``disk_if``, IMAGE first when it is one. ``snapshot=on``: the
        guest's writes go to a temporary overlay, never into the user's image (nor can
        two guests of one image fight over QEMU's write lock)."""
        disks = [self.image] * self.image_is_disk + list(self.disks)
        args: list[str] = []
        if disks and self.disk_if == "virtio-scsi":
            args += ["-device", "virtio-scsi-pci,id=scsi0"]
        for index, disk in enumerate(disks):
            args += ["-drive", f"if=none,id=hd{index},format=raw,snapshot=on,"
                     f"file={_escape_option(str(disk))}"]
            device = {"virtio-scsi": f"scsi-hd,bus=scsi0.0,drive=hd{index}",
                      "ide": f"ide-hd,bus=ide.{index},drive=hd{index}"}.get(
                self.disk_if, f"{self._virtio('blk')},drive=hd{index}")
            args += ["-device", device]
        return args

    def _virtio(self, kind: str) -> str:
        """A virtio device's name: PCI, or virtio-mmio on microvm (it has no PCI)."""
        return f"virtio-{kind}-device" if self.machine == "microvm" else f"virtio-{kind}-pci"

    def command_line(self, qemu: str) -> list[str]:
        files = self.files
        kernel = None if self.image_is_disk else self.image
        args = [
            qemu, "-M", self.machine, *self.accel.qemu_args,
            "-m", str(self.memory_mb), "-smp", str(self.smp),
            "-display", "none", "-vga", "none", "-nodefaults", "-no-user-config",
            "-no-reboot", "-action", "reboot=shutdown,shutdown=pause,panic=pause",
            "-S",
            "-chardev", f"socket,id=gdb0,path={files.gdb_socket},server=on,wait=off",
            "-gdb", "chardev:gdb0",
            "-chardev", f"socket,id=qmp0,path={files.qmp_socket},server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
            "-chardev", f"file,id=con0,path={files.console_log}",
            "-serial", "chardev:con0",
            "-device", "pvpanic",
            "-device", f"isa-debug-exit,iobase={ISA_DEBUG_EXIT_PORT:#x},iosize=0x04",
        ]
        if (kernel or self.kernel) is not None:
            args += ["-kernel", str(kernel or self.kernel)]
        args += self._disk_args()
        for device in self.devices:
            args += ["-device", device]
        if self.append:
            args += ["-append", self.append]
        if self.trace:  # tracers/FORMAT.md section 7: port 1, named undebug.trace
            args += ["-device", f"{self._virtio('serial')},id=vser0",
                     "-chardev", f"socket,id=trace0,path={files.trace_socket},server=on,wait=off",
                     "-device", "virtserialport,bus=vser0.0,chardev=trace0,name=undebug.trace,nr=1"]
        if self.ram_fd is not None:
            args += ["-object", f"memory-backend-file,id=pc.ram,size={self.memory_mb}M,"
                     f"mem-path=/proc/self/fd/{self.ram_fd},share=on",
                     "-machine", "memory-backend=pc.ram"]
        if self.forwards:
            netdev = ",".join(["user", "id=net0", *(f.hostfwd() for f in self.forwards)])
            args += ["-netdev", netdev, "-device", f"{self._virtio('net')},netdev=net0"]
        return args


def _escape_option(value: str) -> str:
    """A value inside a QEMU ``-drive`` option list: commas doubled (QEMU's quoting)."""
    return value.replace(",", ",,")
