"""Talking to QEMU's gdbstub: ``rsp`` is the GDB Remote Serial Protocol client."""
