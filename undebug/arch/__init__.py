"""The CPU's side of reading a guest: page tables and registers as the architecture defines
them, below :mod:`undebug.target` and independent of any guest OS."""
