#!/usr/bin/env bash
# GPU readiness in one command (under 10 minutes): installs flash-attn where a binary wheel exists for the
# installed torch, then runs benchmarks/gpu_check.py (parity, varlen flash vs SDPA, bf16 training, FSDP2 on
# nccl, speed.py against transformers) and prints one table. Without CUDA the CUDA rows are SKIP and the CPU
# rows still run. PYTHON=path/to/python to choose the interpreter; extra arguments go to gpu_check.py.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check.sh: $PY cannot import torch; set PYTHON to the interpreter of mmbert's environment" >&2
  exit 2
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if ! "$PY" -c "import flash_attn" 2>/dev/null; then
    # binary wheels only: building flash-attn from source takes far longer than this script may run
    timeout 180 "$PY" -m pip install -q --only-binary=:all: flash-attn \
      || echo "flash-attn: no wheel for this torch / CUDA here (or no network): the flash rows will be SKIP"
  fi
else
  echo "no CUDA device: the CUDA checks are skipped, the CPU rows still run"
fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout 570 "$PY" benchmarks/gpu_check.py "$@"
