#!/usr/bin/env bash
# The Python packages that the GPU machines' image lacks, as wheels in .whl/ (git-ignored), to travel
# with the working tree. That image holds torch (2.11, not our pin), timm, pyarrow, psutil, rich,
# tqdm, pytest(-xdist) and more, and reaches no package index; run this where pip reaches one:
#
#   bench/gpu-wheels.sh                 # ~36 MB into .whl/
#   then on the GPU machine, with .whl carried:  bash bench/gpu-device.sh [bench/gpu.sh options]
#
# Versions are those of our lock, except dask / distributed, which dask-cuda 26.10 pins to 2026.7.1.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 typing-extensions==4.16.0 annotated-types==0.8.0
  typing-inspection==0.4.5 webdataset==1.0.2 braceexpand==0.1.7 resize-right==0.0.2 corrupt-tta==0.1.7
  imagenet-w==1.0.0 dask==2026.7.1 distributed==2026.7.1 tblib==3.2.2 zict==3.0.0 tornado==6.6.1 locket==1.0.0
  partd==1.4.2 dask-cuda==26.10.0 cuda-core==1.0.1 cuda-pathfinder==1.9.1
)
PLATFORMS=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls .whl/*.whl | wc -l | xargs echo "wheels in .whl/:"
du -sh .whl
