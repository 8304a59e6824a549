"""`undebug demo` (what `make demo` runs), without a terminal: one summary, then the end."""

import re

from tests.conftest import check_planted_counter, undebug


def test_demo_prints_one_summary_read_from_the_live_guest() -> None:
    result = undebug("demo", "--once", "--json", "--name", "demo-test", "--threads", "4")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["status"]["state"] == "running"
    assert [c["cpu"] for c in summary["cpus"]] == [0, 1]
    assert all(c["function"] for c in summary["cpus"])  # every vCPU is inside guest code
    planted = summary["globals"]  # both read while the guest was held still
    check_planted_counter(planted["planted_counter"], planted["requests_handled"], cpus=2)
    names = {t["name"] for t in summary["threads"]}
    assert {"sleeper", "blocked", "worker-3"} <= names
    assert all(c["thread"] in names for c in summary["cpus"])
    assert any("refguest:" in line for line in summary["console_tail"])
    assert "demo-test" not in undebug("ps").stdout  # the guest was ended


def test_demo_human_summary() -> None:
    result = undebug("demo", "--once", "--name", "demo-test2", "--threads", "2")
    assert result.code == 0, result.stderr
    assert re.search(r"^  vCPU 0: thread \S+, rip 0x[0-9a-f]+ in \w+", result.stdout, re.M)
    assert "guest threads: 1 blocked, 1 exited, " in result.stdout
    assert "evil\\x1b]0;owned\\x07" in result.stdout and "\x1b" not in result.stdout
    assert "planted_counter = 0x5eed" in result.stdout
