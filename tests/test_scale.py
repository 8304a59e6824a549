"""Scale: the reference guest with 10,000 workers, listed in full by ``undebug threads``.
(bench/threads.py times ``bt --all`` at this size; this checks that it works at all.)"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import undebug, wait_for_console

WORKERS = 10_000
SMP = 2
# guest-stubs/refguest/README.md: the threads before the workers, in creation order.
SYSTEM = ["main", *(f"idle{i}" for i in range(SMP)), "sleeper", "blocked", "short-lived",
          "evil\x1b]0;owned\x07"]


def test_threads_lists_ten_thousand_workers(guest_image: Path) -> None:
    name = "scale"
    # ~200 MiB of thread stacks: more than the default 128 MiB (refguest README)
    result = undebug("run", "-d", "--name", name, "--smp", str(SMP), "--memory", "512",
                     "--append", f"threads={WORKERS}", str(guest_image))
    assert result.code == 0, result.stderr
    try:
        console = wait_for_console(name, "refguest: ready", timeout=300)
        assert "too large" not in console
        listed = undebug("threads", name, "--json")
        assert listed.code == 0, listed.stderr
        report = listed.json()
        threads = report["threads"]
        assert [t["name"] for t in threads] == SYSTEM + [f"worker-{i}" for i in range(WORKERS)]
        assert [t["id"] for t in threads] == list(range(1, len(SYSTEM) + WORKERS + 1))
        assert report["warnings"] == []
    finally:
        undebug("kill", name)
