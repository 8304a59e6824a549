"""``undebug gdbserver``: an RSP *server* that shows any GDB front end the guest's own
threads. Protocol framing comes from :mod:`undebug.gdb`; the guest behind the server is a
backend (a live session now, a dump later)."""
