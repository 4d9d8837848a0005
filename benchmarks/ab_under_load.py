"""Does the same-run A/B gate hold on a busy box, and catch a real slowdown? Issue 29's figures.

    .venv/bin/python benchmarks/ab_under_load.py --reps 10 --out /tmp/ab_under_load

Each repetition records three same-run A/B runs (`hubbench run ci --seq 512 --variant
transformer,hub-gpt --set attention=sdpa --rounds 8 --repeats 10 --against REF`: two cells, each
under both code versions, rounds paired; --seq, --rounds, --repeats and --set change that) and
gates each with `hubbench gate --ab`:
  AL  HEAD against HEAD, with LOAD busy processes (`python -c "while True: pass"`) switched on
      for the middle part of the run (from 25% to 65% of the previous run's length): must pass;
  S   a commit that plants a 25% slowdown in hub-gpt against HEAD, quiet: must exit 1 naming
      hub-gpt;
  SL  as S, with the busy processes on for the whole run: must exit 1 naming hub-gpt.
The candidate always runs from a clean clone (never the shared working tree, whose uncommitted
edits would make an A/A an A/B): `head/` at HEAD, and `slow/`, HEAD plus a temporary commit
(never pushed anywhere) whose tests/builders.py plants the slowdown by default
(HUBBENCH_TEST_SLOWDOWN, hub-gpt, 25%) in the worker that loads it. Both sides build their
models with their own tree's tests/builders.py, so only the slowed commit's candidate is slowed.
The baseline worktree cache is the output folder's (HUBBENCH_CACHE), made once and reused.

Beside every run: the 1-minute load average before and after it and its length; the box is
shared, so other people's load is uncontrolled background and shows there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLOWED = "hub-gpt"
SLOWDOWN = 0.25
KINDS = ("AL", "S", "SL")
WHAT = {"AL": "HEAD vs HEAD, load part of the run", "S": "hub-gpt 25% slower, quiet",
        "SL": "hub-gpt 25% slower, loaded"}  # fmt: skip
PLANT = (
    "\n# ab_under_load.py's temporary commit: this tree's workers plant the slowdown\n"
    f"os.environ.setdefault(SLOWDOWN_ENV, {json.dumps([{'variant': SLOWED, 'slowdown': SLOWDOWN}])!r})\n"  # noqa: E501
)


def load1() -> float:
    return os.getloadavg()[0]


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def clones(out: Path) -> tuple[Path, Path, str]:
    """head/ (a clean clone at HEAD) and slow/ (HEAD plus the planting commit), and HEAD."""
    head_sha = git(ROOT, "rev-parse", "HEAD")
    head, slow = out / "head", out / "slow"
    for tree in (head, slow):
        if not tree.exists():
            subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(tree)], check=True)
        git(tree, "checkout", "-q", "--detach", head_sha)
    builders = slow / "tests" / "builders.py"
    text = builders.read_text()
    anchor = 'SLOWDOWN_ENV = "HUBBENCH_TEST_SLOWDOWN"\n'
    builders.write_text(text.replace(anchor, anchor + PLANT, 1))
    git(slow, "-c", "user.name=ab", "-c", "user.email=ab@localhost", "commit", "-q", "-am",
        "temporary: plant a 25% hub-gpt slowdown (benchmarks/ab_under_load.py)")  # fmt: skip
    return head, slow, head_sha


class Busy:
    """`count` busy processes from `start_s` to `stop_s` (None: to the end) of a with-block."""

    def __init__(self, count: int, start_s: float = 0.0, stop_s: float | None = None) -> None:
        self.count, self.start_s, self.stop_s = count, start_s, stop_s
        self.procs: list[subprocess.Popen] = []
        self.lock, self.done = threading.Lock(), threading.Event()
        self.on_s: float = 0.0

    def _run(self) -> None:
        if self.done.wait(self.start_s):
            return
        began = time.perf_counter()
        with self.lock:
            if self.done.is_set():
                return
            cmd = [sys.executable, "-c", "while True: pass"]
            self.procs = [subprocess.Popen(cmd) for _ in range(self.count)]
        self.done.wait(None if self.stop_s is None else max(self.stop_s - self.start_s, 0))
        self._kill()
        self.on_s = time.perf_counter() - began

    def _kill(self) -> None:
        with self.lock:
            for p in self.procs:
                p.kill()
            for p in self.procs:
                p.wait()
            self.procs = []

    def __enter__(self) -> Busy:
        self.thread = threading.Thread(target=self._run, daemon=True)
        if self.count:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.count:
            self.thread.join()
        self._kill()


def record(kind: str, tree: Path, ref: str, out: Path, args: argparse.Namespace,
           last_s: float) -> dict[str, Any]:  # fmt: skip
    """One A/B run from `tree` against `ref`, then its gate."""
    results = out / "results" / kind
    env = {**os.environ, "HUBBENCH_CACHE": str(out / "cache"), "PYTHONPATH": str(tree)}
    env.pop("HUBBENCH_TEST_SLOWDOWN", None)
    builder = f"{tree / 'tests' / 'builders.py'}:build"
    cmd = [sys.executable, "-m", "hubbench", "run", args.suite, "--seq", args.seq,
           "--rounds", str(args.rounds), "--repeats", str(args.repeats), "--builder", builder,
           "--against", ref, "--results-dir", str(results), *args.extra]  # fmt: skip
    busy = {"AL": Busy(args.load, 0.25 * last_s, 0.65 * last_s), "SL": Busy(args.load)}
    before, started = load1(), time.perf_counter()
    with busy.get(kind, Busy(0)) as b:
        run = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = load1()
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    gate = subprocess.run([sys.executable, "-m", "hubbench", "gate", "--ab", "latest",
                           "--results-dir", str(results)], cwd=tree, env=env,
                          capture_output=True, text=True)  # fmt: skip
    failed = ""
    for line in (gate.stdout + gate.stderr).splitlines():
        if "regressed beyond noise" in line:
            failed = line.split("noise:", 1)[1].strip()
    return {"kind": kind, "exit": gate.returncode, "failed": failed,
            "ratios": _ratios(results, tree, env), "load_before": round(before, 2),
            "load_after": round(after, 2), "busy_s": round(b.on_s),
            "seconds": round(seconds)}  # fmt: skip


def _ratios(results: Path, tree: Path, env: dict[str, str]) -> str:
    """Each cell's candidate/baseline [CI], as gate --ab computed it (in the tree's code)."""
    code = (
        "import sys; from hubbench.report.load import load_run; "
        "from hubbench.report.gate_ab import gate_ab; "
        "r = gate_ab(load_run(None, sys.argv[1])); "
        "print('; '.join(f'{c.name} {c.ci.point:.3f} [{c.ci.low:.3f}, {c.ci.high:.3f}]' "
        "if c.ci else f'{c.name} -' for c in r.checks))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(results)], cwd=tree, env=env,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or out.stderr.strip()[-200:]


def summary(rows: list[dict[str, Any]]) -> None:
    print("\n| rep | run | load before→after | busy s | run s | gate exit | failed | "
          "candidate/baseline tok/s [95% CI] |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['kind']} ({WHAT[r['kind']]}) | {r['load_before']}→"
              f"{r['load_after']} | {r['busy_s']} | {r['seconds']} | {r['exit']} | "
              f"{r['failed'] or '-'} | {r['ratios']} |")  # fmt: skip
    print()
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        if kind == "AL":
            good = sum(r["exit"] == 0 for r in mine)
            print(f"{kind} ({WHAT[kind]}): passed {good}/{len(mine)}")
        else:
            good = sum(r["exit"] == 1 and SLOWED in r["failed"] for r in mine)
            print(f"{kind} ({WHAT[kind]}): exit 1 naming {SLOWED} {good}/{len(mine)}")
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    print(f"load average (1 min) beside the runs: {min(loads)}-{max(loads)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--load", type=int, default=3, help="busy processes beside AL and SL")
    parser.add_argument("--suite", default="ci")
    parser.add_argument("--seq", default="512")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--set", dest="extra", action="append",
                        default=["--variant=transformer,hub-gpt", "--set=attention=sdpa"],
                        help="more `hubbench run` options: --set=--variant=hub-gpt")  # fmt: skip
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/ab_under_load"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Busy's cleanup runs on TERM too
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(name, None)
    args.out.mkdir(parents=True, exist_ok=True)
    head, slow, head_sha = clones(args.out)
    trees = {"AL": head, "S": slow, "SL": slow}
    kinds = args.kinds.split(",")
    rows: list[dict[str, Any]] = []
    last_s = 60.0
    for rep in range(args.reps):
        order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
        for kind in order:
            row = {"rep": rep + 1, **record(kind, trees[kind], head_sha, args.out, args, last_s)}
            last_s = row["seconds"] if kind != "SL" else last_s
            rows.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    summary(rows)


if __name__ == "__main__":
    main()
