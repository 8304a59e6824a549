"""Errors a user can cause or meet, each carrying the exit code docs/cli.md promises.

Front ends catch :class:`UndebugError` once, print its message (and hint) and exit with
its code; nothing else turns into a traceback for the user.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the guest crashed, hung, or a check failed
EXIT_USAGE = 2  # bad arguments or bad input (images, names, files)
EXIT_ENVIRONMENT = 3  # something the machine lacks (QEMU, gdb, a runtime dir)
EXIT_INTERNAL = 4  # undebug itself failed: never 1, which CI reads as "the guest crashed"


class UndebugError(Exception):
    """An error with a message for the user, an optional hint, and an exit code."""

    exit_code = EXIT_USAGE
    label = "error"  # how the front end introduces it: "undebug: error: ..."

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(UndebugError):
    """Bad arguments or input: an image that is not bootable, a name in use, ..."""

    exit_code = EXIT_USAGE


class EnvironmentMissing(UndebugError):
    """The machine lacks something undebug needs, such as QEMU or gdb."""

    exit_code = EXIT_ENVIRONMENT


class SessionError(UndebugError):
    """A guest session that does not exist, has ended, or stopped answering."""

    exit_code = EXIT_USAGE


class InternalError(UndebugError):
    """undebug itself failed (a bug, or a machine it did not foresee), not the guest."""

    exit_code = EXIT_INTERNAL
    label = "internal error"
