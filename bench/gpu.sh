#!/usr/bin/env bash
# GPU check of issue 5 (target 6): the paper study and two epochs of CIFAR-10 on one GPU in
# under 5 minutes, printing samples/s, GPU memory and the ratio to a minimal loop (see
# bench/gpu.py's docstring for what is measured). Needs a CUDA GPU and the datasets where lba
# looks for them: Fashion-MNIST (and CIFAR-10, else that part is skipped) under $LBA_DATA,
# ~/.cache/lba or /usr/share/datasets. Record what it prints, and where, in
# docs/performance.md.
#
#   bench/gpu.sh              the real check (refuses to run without a GPU)
#   bench/gpu.sh --dry-run    the same script on the CPU at smoke sizes, to check it runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

if [[ "${1:-}" == "--dry-run" ]]; then
  exec timeout 600 "$PYTHON" bench/gpu.py --quick --device cpu
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "bench/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is False); try --dry-run" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 5 minutes is the target: the timeout makes a miss visible instead of a hang.
timeout 300 "$PYTHON" bench/gpu.py "$@"
