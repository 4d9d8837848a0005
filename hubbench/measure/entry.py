"""The measuring worker process: `python -m hubbench.measure.entry BUILDER`.

It imports torch once and then measures cell rounds sent to it as JSON lines on stdin, answering
one JSON line each ({"outcome": ..., "round": ...}, hubbench.measure.cell.execute_cell) on a
private copy of stdout; stray prints go to its stderr, which the parent keeps in a temp file for
error messages. The parent's handle on it is hubbench.run.worker.Worker.

BUILDER is 'package.module:function' or 'path/to/file.py:function', called as
`build(variant, config)` with the cell's validated config; tests plant faults and slowdowns
through it, so nothing test-only sits in the measured code.

PROTOCOL is what the parent and this worker must agree on (the messages, Cell.to_json, the
answer): a same-run A/B (hubbench.run.against) reads it from the other commit's copy of this file
before starting its worker, and the worker says it again in its hello, with the file it was
imported from and that tree's commit, so the parent can check it runs the code it meant. Raise
it whenever a change here or in those formats would make an older worker misread a message.
"""

from __future__ import annotations

import gc
import json
import os
import sys

from hubbench.measure.process import die_with_parent, load_builder
from hubbench.plan.cell import Cell

PROTOCOL = 1


def worker_main(builder: str) -> None:
    die_with_parent()
    # Protocol on a private copy of stdout; anything else printed lands in the stderr log.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from hubbench.measure.cell import execute_cell
    from hubbench.measure.env import git_info, torch_env
    from hubbench.measure.flops import prime

    build = load_builder(builder)
    prime()
    # Everything alive now lives as long as the worker; freezing it keeps the per-cell
    # gc.collect() (which frees the previous cell's autograd cycles) at milliseconds.
    gc.collect()
    gc.freeze()
    hello = {"ready": True, "env": torch_env(), "protocol": PROTOCOL, "module": __file__,
             "commit": git_info()[0]}  # fmt: skip
    proto.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("op") == "exit":
            break
        cell = Cell.from_json(message["cell"])
        answer = execute_cell(cell, build, count_flops=message["count_flops"], builder=builder)
        proto.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 2:
        worker_main(sys.argv[1])
    else:
        sys.exit("usage: python -m hubbench.measure.entry MODULE:FUNCTION")
