"""Issue 12's acceptance figures: the ci suite through each executor, a killed job, torchrun.

    .venv/bin/python benchmarks/cluster_acceptance.py [--slurm-partition debug] [--json out.json]

1. `hubbench run ci` locally, then with `--executor submitit-local --cells-per-job 4`
   (several jobs): wall time of each, jobs, the per-job overhead ((submitit - local) / jobs),
   whether the two runs hold the same cells and every row is ok.
2. A killed job: the submitit-local run again, with one job's process SIGKILLed from outside
   once the job has written its first part file (in submitit's local executor the job id is the
   process id). Counts the error rows it leaves (`job_lost`), then `--resume` and counts again.
3. With `--slurm-partition P` (a Slurm must answer, e.g. `.ci/slurm-up`): the same through
   `--executor slurm`, with its jobs, wall time and overhead per job.
4. `hubbench run ci --nproc 1,2 --variant transformer --set attention=sdpa`: world size, tokens/s
   in total and per rank, and the weak-scaling efficiency of each world-size-2 row.
Everything goes to a temporary results directory; the figures print as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HUBBENCH = [sys.executable, "-m", "hubbench"]


def hubbench(args: list[str], results: Path) -> tuple[int, float]:
    """Run one hubbench command to completion; its exit code and wall seconds."""
    start = time.perf_counter()
    out = subprocess.run(
        [*HUBBENCH, *args, "--results-dir", str(results)], cwd=ROOT, capture_output=True
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr.decode(errors="replace")[-2000:])
    return out.returncode, time.perf_counter() - start


def rows_of(results: Path) -> list[dict[str, Any]]:
    from hubbench import store

    path = store.latest_run(results, "ci")
    if path is None:
        raise SystemExit(f"no ci run under {results}")
    return store.read_rows(path)


def cells(rows: list[dict[str, Any]]) -> set[str]:
    return {r["cell_id"] for r in rows}


def summary(name: str, rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    jobs = {r.get("job_id") for r in rows if r.get("job_id")}
    bad = [
        f"{r['variant']} n={r['seq']}: {r['status']} {r.get('message', '')}"
        for r in rows
        if r["status"] != "ok"
    ]
    out = {"name": name, "rows": len(rows), "jobs": len(jobs), "wall_s": round(wall, 1)}
    out["not_ok"] = bad
    out["hosts"] = sorted({str(r.get("host")) for r in rows})
    line = f"{name}: {len(rows)} rows, {len(jobs)} jobs, {len(bad)} not ok, {wall:.1f} s"
    print(line, flush=True)
    return out


def killed_job(results: Path) -> dict[str, Any]:
    """The submitit-local run with one job SIGKILLed after its first part file, then resumed."""
    argv = [*HUBBENCH, "run", "ci", "--executor", "submitit-local", "--cells-per-job", "4"]
    proc = subprocess.Popen(
        [*argv, "--results-dir", str(results)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        for jobs in (results / "ci").glob("*.jobs"):
            parts = sorted(jobs.glob("part-*.parquet"))
            logs = sorted(jobs.glob("*_0_log.out"))
            if parts and logs:
                victim = int(logs[0].name.split("_")[0])
                break
    if victim is None:
        proc.kill()
        raise SystemExit("no job wrote a part file within 300 s")
    try:  # the job id is its launcher's pid; the measuring process is its child: kill both
        children = Path(f"/proc/{victim}/task/{victim}/children").read_text().split()
        for pid in [victim, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        print(f"job {victim} had already ended", flush=True)
    proc.wait()
    rows = rows_of(results)
    lost = [r for r in rows if r.get("job_lost")]
    print(
        f"killed job {victim}: exit {proc.returncode}, {len(rows)} rows, {len(lost)} job_lost "
        f"error rows: {lost[0]['message'][:100] if lost else '-'}",
        flush=True,
    )
    code, wall = hubbench([*argv[3:], "--resume"], results)
    after = rows_of(results)
    ok = sum(r["status"] == "ok" for r in after)
    print(f"--resume: exit {code}, {len(after)} rows, {ok} ok, {wall:.1f} s", flush=True)
    return {
        "victim": victim,
        "rows_after_kill": len(rows),
        "job_lost_rows": len(lost),
        "lost_message": lost[0]["message"] if lost else None,
        "resume_exit": code,
        "rows_after_resume": len(after),
        "ok_after_resume": ok,
    }


def nproc(results: Path) -> list[dict[str, Any]]:
    code, wall = hubbench(
        ["run", "ci", "--nproc", "1,2", "--variant", "transformer", "--set", "attention=sdpa"],
        results,
    )
    if code != 0:
        raise SystemExit(f"hubbench run ci --nproc 1,2 exited {code}")
    out = []
    for r in sorted(rows_of(results), key=lambda r: (r["seq"], r["world_size"])):
        fig = {k: r.get(k) for k in ("seq", "world_size", "status", "tokens_per_s")}
        fig["tokens_per_s_per_rank"] = r.get("tokens_per_s_per_rank")
        fig["weak_scaling_efficiency"] = r.get("weak_scaling_efficiency")
        print(
            f"nproc: n={r['seq']} world {r['world_size']}: {r['status']}, "
            f"{r['tokens_per_s']:,.0f} tok/s total, {fig['tokens_per_s_per_rank']:,.0f} per rank, "
            f"weak-scaling efficiency {fig['weak_scaling_efficiency']}",
            flush=True,
        )
        out.append(fig)
    print(f"nproc run: {wall:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slurm-partition", help="also run through this Slurm partition")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hubbench-cluster-") as tmp:
        base = Path(tmp)
        code, wall = hubbench(["run", "ci"], base / "local")
        local = rows_of(base / "local")
        figures["local"] = summary("local", local, wall)
        runs = [("submitit-local", ["--executor", "submitit-local", "--cells-per-job", "4"])]
        if args.slurm_partition:
            runs.append(("slurm", ["--executor", "slurm", "--partition", args.slurm_partition]))
        for name, extra in runs:
            code, wall = hubbench(["run", "ci", *extra], base / name)
            rows = rows_of(base / name)
            fig = summary(name, rows, wall)
            fig["exit"] = code
            fig["same_cells_as_local"] = cells(rows) == cells(local)
            fig["overhead_per_job_s"] = round((wall - figures["local"]["wall_s"]) / fig["jobs"], 1)
            print(
                f"{name}: same cells as local: {fig['same_cells_as_local']}, overhead per job "
                f"{fig['overhead_per_job_s']} s",
                flush=True,
            )
            figures[name] = fig
        figures["killed"] = killed_job(base / "killed")
        figures["nproc"] = nproc(base / "nproc")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
