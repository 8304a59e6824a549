"""undebug: eyes into a unikernel, from outside through QEMU and from inside through a stub.

The layers (see DESIGN.md): ``vm`` builds QEMU command lines, ``session`` holds one
supervisor process per guest that owns every connection to it, and ``commands`` are the
CLI front end. Heavy modules are imported lazily so a command starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from undebug.api import Session

__version__ = "0.1.0"
__all__ = ["attach"]


def attach(name: str, elf: str | None = None, *, stop: bool = True, force: bool = False) -> Session:
    """Open a running guest for inspection: see :mod:`undebug.api`."""
    from undebug.api import attach as _attach

    return _attach(name, elf, stop=stop, force=force)
