"""Post-mortem: a paused guest written down as a dump bundle (docs/bundle.md).

``core`` writes ``core.elf`` (an ELF core with guest threads), ``summary`` what the dump
says in words, ``bundle`` the directory around them. Reading a bundle back is
:mod:`undebug.coretarget`, at the Target layer, so every inspection command reads it.
"""
