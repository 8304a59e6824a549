"""One supervisor process per guest owns QEMU, its gdbstub and QMP; front ends are clients."""
