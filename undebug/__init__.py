"""undebug: eyes into a unikernel, from outside through QEMU and from inside through a stub.

The layers (see DESIGN.md): ``vm`` builds QEMU command lines, ``session`` holds one
supervisor process per guest that owns every connection to it, and ``commands`` are the
CLI front end. Heavy modules are imported lazily so a command starts fast.
"""

__version__ = "0.1.0"
