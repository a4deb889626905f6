#!/usr/bin/env bash
# The GPU check, one command, one table (≤ 8 minutes on one H100):
#   pytest -m gpu (beside the benches) · ADM-256 projection fp32 / bf16 / fp16 / compile / CUDA graphs
#   vs the reference-structured loop · fast-mode deviation from fp32 · DiT-XL/2 generation ·
#   ResNet-50 classifier_align / evaluate images/s.
# Without CUDA it runs tiny versions on the CPU and says what it skipped (CI runs that part).
#
#   bench/gpu.sh                      # everything, default budget
#   bench/gpu.sh --budget-s 300       # stop starting new measurements after 300 s
#   bench/gpu.sh --sections adm dit   # a part; see bench/gpu.py --help
#
# The table is printed as rows come and at the end, and written to $OUT/gpu-table.md
# (OUT defaults to bench/out/), with the pytest log and junit.xml beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 SDA_LOG_LEVEL="${SDA_LOG_LEVEL:-WARNING}" TQDM_DISABLE=1
exec "$PYTHON" bench/gpu.py --out "$OUT_DIR/gpu-table.md" "$@"
