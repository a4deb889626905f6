#!/usr/bin/env bash
# bench/gpu.sh on a GPU machine whose image has torch but not our other dependencies: the wheels
# of bench/gpu-wheels.sh (carried in .whl/) go to /tmp/site beside the image's packages first.
#   bash bench/gpu-device.sh --budget-s 420 ...      # the options are bench/gpu.sh's
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "bench/gpu-device.sh: no .whl/*.whl (run bench/gpu-wheels.sh here and carry .whl): using the image's packages" >&2
fi
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
PYTHON=python3 exec bash bench/gpu.sh "$@"
