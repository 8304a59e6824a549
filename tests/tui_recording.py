"""What the TUI's guest screen reads at a stop, recorded from a real guest into a JSON file
(tests/data/tui-recording.json) and read back, so the snapshot tests draw real data with
nothing live: the guest's status, its threads view, the vCPU-0 thread's backtrace and
the console's tail. Fields that change from run to run (uptime, start time, pids, paths
of this checkout) are set to fixed values when recorded.

Record again (a guest named NAME booted with ``--append threads=8``, paused)::

    .venv/bin/python -m tests.tui_recording NAME > tests/data/tui-recording.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from undebug import api
from undebug.session.replies import GuestStatus, Reply, parse_status
from undebug.trapframe import Trap
from undebug.unwind import Frame

PATH = Path(__file__).parent / "data" / "tui-recording.json"
FIXED = {"uptime_s": 42.0, "started": 0.0, "supervisor_pid": 1, "qemu_pid": 2, "cost": None,
         "image": "build/refguest.elf", "elf": "build/refguest.elf", "console": "console.log"}


@dataclass(frozen=True)
class Recording:
    status: GuestStatus
    view: api.ThreadsView
    backtrace: tuple[int, api.Backtrace]
    console: list[str]


def record(name: str) -> dict[str, Any]:
    status = api.status(name)
    with api.attach(name) as session:
        view = session.view()
        thread = view.on_cpu(0) or view.threads[0]
        backtrace = session.backtrace(thread.id)
    console = api.Console(name, tail=30).poll()
    doc = status.to_json()
    doc.update(FIXED)
    return {"status": doc,
            "view": {"run_token": view.run_token, "live": False, "warnings": view.warnings,
                     "threads": [dataclasses.asdict(t) for t in view.threads],
                     "where": {str(k): str.__str__(v) for k, v in view.where.items()},
                     "vcpus": {str(k): v for k, v in view.vcpus.items()}},
            "backtrace": {"thread": thread.id, "warnings": backtrace.warnings,
                          "complete": backtrace.complete,
                          "frames": [dataclasses.asdict(f) for f in backtrace.frames]},
            "console": [str.__str__(line) for line in console]}


def load(path: Path = PATH) -> Recording:
    doc = json.loads(path.read_text())
    status = parse_status(Reply(doc["status"], str(path)))
    v = doc["view"]
    threads = [api.GuestThread(**{**t, "stack": tuple(t["stack"]) if t["stack"] else None})
               for t in v["threads"]]
    view = api.ThreadsView(v["run_token"], v["live"], threads,
                           {int(k): api.GuestText(w) for k, w in v["where"].items()},
                           {int(k): c for k, c in v["vcpus"].items()}, v["warnings"])
    b = doc["backtrace"]
    frames = [Frame(**{**f, "trap": Trap(**f["trap"]) if f["trap"] else None})
              for f in b["frames"]]
    backtrace = api.Backtrace(frames, b["warnings"], b["complete"])
    return Recording(status, view, (b["thread"], backtrace), doc["console"])


if __name__ == "__main__":
    json.dump(record(sys.argv[1]), sys.stdout, indent=1)
    sys.stdout.write("\n")
