"""Unikraft's own tracepoints (lib/ukdebug, ``CONFIG_LIBUKDEBUG_TRACEPOINTS``), read with
no change to the guest: the definitions from the debug ELF (:mod:`.metadata`), the sample
buffer from guest memory (:mod:`.buffer`), decoded into undebug's event model
(:mod:`.samples`). Formats as in Unikraft RELEASE-0.17.0 (tracers/FORMAT.md section 11).
"""
