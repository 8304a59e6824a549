"""`undebug threads NAME` on a running guest: command start to output.

Guest: the reference guest under ``undebug run -d``, ``threads=8``, ``-smp 2`` (15 guest
threads). Timed as subprocesses, interleaved, medians of ROUNDS: ``python -c pass`` (the
floor of any Python command), ``python -c "import undebug.cli"``, ``python -m undebug.cli
threads NAME`` (start to exit, output to a pipe), each in this machine's environment and in
a "clean" one (no PYTHONUNBUFFERED / PYTHONDONTWRITEBYTECODE, bytecode cached in a private
PYTHONPYCACHEPREFIX: what an installed undebug sees), plus ``undebug threads NAME``
through whatever ``undebug`` is on PATH (here a pyenv shim) and through the console script
next to this Python (what ``pip install`` makes: no runpy). A child process times the
phases of one command in-process (imports, parser, attach, thread walk, output, release),
and ``python -X importtime`` lists the slowest imports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.threads import UndebugGuest, clean_env, ensure_guest, median, undebug

ROUNDS = 21
APPEND = "threads=8"
GOAL_S = 0.100  # end to end, this machine's env and the clean one

PHASES = r"""
import io, json, sys, time
t0 = time.perf_counter()
import undebug.cli
from undebug.output import emit
t1 = time.perf_counter()
argv = ["threads", sys.argv[1]]
parser = undebug.cli.build_parser(argv)
args = parser.parse_args(argv)
t2 = time.perf_counter()
from undebug.commands.inspect import threads_body
from undebug.target import open_target
t3 = time.perf_counter()
target = open_target(args.target, args.elf, stop=True, force=False)
t4 = time.perf_counter()
report = threads_body(target, args)
t5 = time.perf_counter()
real, sys.stdout = sys.stdout, io.StringIO()
emit(report, as_json=False)
sys.stdout = real
t6 = time.perf_counter()
target.close()
t7 = time.perf_counter()
print(json.dumps({"import_cli_s": t1 - t0, "build_parser_s": t2 - t1,
                  "import_inspect_s": t3 - t2, "attach_s": t4 - t3, "walk_threads_s": t5 - t4,
                  "render_s": t6 - t5, "release_s": t7 - t6, "total_s": t7 - t0}))
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def slowest_imports(stderr: str, n: int = 10) -> list[dict[str, Any]]:
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = (x.strip() for x in line[len("import time:"):].split("|"))
        rows.append({"module": name.strip(), "self_ms": int(self_us) / 1000,
                     "cumulative_ms": int(cumulative_us) / 1000})
    return sorted(rows, key=lambda r: r["self_ms"], reverse=True)[:n]


def importtime(env: dict[str, str]) -> dict[str, Any]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-m", "undebug.cli", "threads",
                          "lat"], env=env, check=True, capture_output=True, text=True).stderr
    top = slowest_imports(err, n=10_000)
    return {"total_self_ms": round(sum(r["self_ms"] for r in top), 1), "modules": len(top),
            "slowest_by_self": top[:10],
            "slowest_by_cumulative": sorted(top, key=lambda r: r["cumulative_ms"],
                                            reverse=True)[:10],
            "slowest_undebug_by_cumulative": sorted(
                (r for r in top if r["module"].lstrip().startswith("undebug")),
                key=lambda r: r["cumulative_ms"], reverse=True)[:10]}


def run() -> dict[str, Any]:
    guest = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    samples: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    imports: dict[str, Any] = {}
    shim = shutil.which("undebug")
    ud = None
    try:
        ud = UndebugGuest(tmp / "run", "lat", APPEND)
        envs = {"env": ud.env, "clean_env": clean_env(ud.env, tmp)}
        undebug("threads", "lat", env=envs["clean_env"], stdout=subprocess.DEVNULL)  # warm pycache
        commands = {
            "python_pass": [sys.executable, "-c", "pass"],
            "import_undebug_cli": [sys.executable, "-c", "import undebug.cli"],
            "undebug_threads": [sys.executable, "-m", "undebug.cli", "threads", "lat"],
        }
        script = Path(sys.executable).parent / "undebug"
        if script.exists():
            commands["undebug_threads_console_script"] = [str(script), "threads", "lat"]
        for _ in range(ROUNDS):
            for env_name, env in envs.items():
                for cmd_name, argv in commands.items():
                    samples.setdefault(f"{cmd_name}_{env_name}_s", []).append(timed(argv, env))
            if shim:
                samples.setdefault("undebug_threads_on_path_s", []).append(
                    timed([shim, "threads", "lat"], envs["env"]))
            out = subprocess.run([sys.executable, "-c", PHASES, "lat"], env=envs["clean_env"],
                                 check=True, capture_output=True, text=True).stdout
            for key, value in json.loads(out).items():
                phases.setdefault(key, []).append(value)
        imports = {name: importtime(env) for name, env in envs.items()}
    finally:
        if ud is not None:
            ud.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: median(v) for k, v in samples.items()}
    ph = {k: round(median(v) * 1000, 1) for k, v in phases.items()}

    def ms(key: str) -> float:
        return round(med[key] * 1000, 1)

    breakdown = {
        env: {"python_start_ms": ms(f"python_pass_{env}_s"),
              "import_undebug_cli_ms": round(ms(f"import_undebug_cli_{env}_s")
                                             - ms(f"python_pass_{env}_s"), 1),
              "rest_of_command_ms": round(ms(f"undebug_threads_{env}_s")
                                          - ms(f"import_undebug_cli_{env}_s"), 1),
              "undebug_threads_total_ms": ms(f"undebug_threads_{env}_s")}
        for env in ("env", "clean_env")}
    return {
        "samples": {**samples, **{f"phase_{k}": v for k, v in phases.items()}},
        "summary": {
            "median_ms": {k.removesuffix("_s"): ms(k) for k in med},
            "guest": guest,
            "breakdown_ms": breakdown,
            "in_process_phases_ms_clean_env": ph,
            "on_path": shim,
            "goal_ms": GOAL_S * 1000,
            "goal_met": {env: med[f"undebug_threads_{env}_s"] < GOAL_S for env in envs},
            "ratio_to_python_start": {env: round(med[f"undebug_threads_{env}_s"]
                                                 / med[f"python_pass_{env}_s"], 2) for env in envs},
            "imports": imports,
            "rounds": ROUNDS,
        },
    }
