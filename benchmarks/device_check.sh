#!/usr/bin/env bash
# The device check of issue 34 (benchmarks/device_check.py says what each part does): on a lent
# GPU, from the repository root, under ten minutes, everything under one folder ($OUT if set).
#
#   bash benchmarks/device_check.sh                  # on the GPU machine
#   bash benchmarks/device_check.sh --smoke --out D  # the same parts, tiny, on this CPU
#   bash benchmarks/device_check.sh --dry-run        # the parts and their commands
#
# Installs nothing. The interpreter: $HUBBENCH_PYTHON, else the first of python3 and
# .venv/bin/python whose torch sees a GPU (--smoke / --dry-run: the first that imports torch,
# .venv first); hubbench is imported from this tree (PYTHONPATH), so the device's own python3
# with its CUDA torch does, without the .venv (which is too big to carry there anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

cpu_only=0
for arg in "$@"; do
    case "$arg" in --smoke|--dry-run|-h|--help) cpu_only=1 ;; esac
done

if [ "$cpu_only" = 1 ]; then
    candidates=("${HUBBENCH_PYTHON:-}" .venv/bin/python python3)
    probe='import torch, typer, rich, pandas, pyarrow'
else
    candidates=("${HUBBENCH_PYTHON:-}" python3 .venv/bin/python)
    probe='import torch, typer, rich, pandas, pyarrow; assert torch.cuda.is_available()'
fi
python=""
for py in "${candidates[@]}"; do
    if [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 && "$py" -c "$probe" 2>/dev/null; then
        python="$py"
        break
    fi
done
if [ -z "$python" ]; then
    echo "device_check: no python here imports torch, typer, rich, pandas and pyarrow" \
         "with a CUDA device (set HUBBENCH_PYTHON, or --smoke to run the parts on CPU)" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/device_check.py "$@"
