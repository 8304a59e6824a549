"""Beside: a dump's CPU-bound step in a forked child (a real fork of this test process)."""

from __future__ import annotations

import os
import threading

import pytest

from undebug.dump.beside import Beside


def test_the_value_is_computed_in_a_child_process() -> None:
    assert Beside(os.getpid).result() != os.getpid()
    assert Beside(sorted, [3, 1, 2]).result() == [1, 2, 3]


def test_with_other_threads_alive_it_runs_inline() -> None:
    """Forking beside another thread could leave the child a lock that thread holds."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert Beside(os.getpid).result() == os.getpid()
    finally:
        stop.set()
        other.join()


def test_a_child_that_fails_is_answered_here_with_the_same_error() -> None:
    def fails() -> None:
        raise ValueError(f"in {os.getpid()}")

    with pytest.raises(ValueError, match=f"in {os.getpid()}$"):
        Beside(fails).result()


def test_closing_ends_a_child_whose_value_is_not_wanted() -> None:
    import time

    step = Beside(time.sleep, 60)
    pid = step._pid
    assert pid is not None
    step.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left
