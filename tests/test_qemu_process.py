"""QEMU's sockets count as ready when they listen, not when their file appears: bind()
makes the file a moment before listen(), and a connect in between is refused (seen with
8 guests starting at once)."""

from __future__ import annotations

import socket
from pathlib import Path

from undebug.session.qemu_process import _listening


def test_a_bound_socket_is_not_ready_until_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    other = tmp_path / "gdb.sock"
    with socket.socket(socket.AF_UNIX) as bound, socket.socket(socket.AF_UNIX) as second:
        bound.bind(str(path))
        assert path.exists() and not _listening((path,))
        bound.listen(1)
        assert _listening((path,))
        assert not _listening((path, other))  # every one of them
        second.bind(str(other))
        second.listen(1)
        assert _listening((path, other))
