"""Where a first run's time goes: each heavy stage (diffusion_finetune, streams, target_project,
synth_generate by default) run as DVC runs it, under cProfile, with its time, images/s and the functions
its time is spent in (issue 56: "a profile of each heavy stage ... then the fixes that pay most").

Each stage runs as ``python -m cProfile -o <file> -m tasks.<stage>`` in the checkout, after its
upstream stages (``make run`` first): it rewrites its outputs with the same bytes (a stage's outputs are
content, as ``dvc repro -f -s <stage>`` would; ``dvc status`` stays clean) and its timing record in
``data/.runs``. Printed per stage: the wall time of the command, the work time and images/s the stage
itself reports, cProfile's overhead aside, and the ``--top`` functions by their own time (``tottime``:
torch's kernels appear as the Python call that launched them, ``conv2d``, ``backward``, ``step``), and
for the streams stage the seconds of each method (its DEBUG log). cProfile slows Python-heavy code
(the streams stage's small batches most); compare stages against each other, or the same stage before
and after a change measured one after the other on one machine (``--root`` another checkout).

    python bench/heavy_stages.py                               # the four heavy stages
    python bench/heavy_stages.py --stages streams --top 25
    python bench/heavy_stages.py --root ../before --stages diffusion_finetune
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HEAVY = ("diffusion_finetune", "streams", "target_project", "synth_generate")
ROOT = Path(__file__).resolve().parents[1]
DONE = re.compile(r"stage (\w+) done in ([\d.]+) s(?:, (\d+) images \(([\d.e+]+) img/s\))?")
METHOD = re.compile(r"sda\.streams: (?:(\w+): )?([\w+]+): ([\d.]+) s$")


def profile_stage(root: Path, stage: str, top: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / f"{stage}.prof"
        env = {**os.environ, "SDA_LOG_LEVEL": "DEBUG" if stage == "streams" else "INFO"}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", f"tasks.{stage}"], cwd=root,
                           env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"tasks.{stage} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        log = r.stderr.replace("\r", "\n").splitlines()
        done = next((m for line in log if (m := DONE.search(line))), None)
        print(f"\n== {stage}: {wall:.1f} s wall (under cProfile)"
              + (f", work {float(done.group(2)):.1f} s" if done else "")
              + (f", {done.group(3)} images, {float(done.group(4)):.3g} img/s" if done and done.group(3) else ""))
        stats = pstats.Stats(str(prof)).stats  # (file, line, function) -> (calls, ncalls, own, cumulative, callers)
        print(f"  {'own s':>8} {'cum s':>8} {'calls':>10}  function")
        for (file, line, func), (_, calls, own, cum, _) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]:
            where = f"{Path(file).name}:{line}" if line else file
            print(f"  {own:8.1f} {cum:8.1f} {calls:>10}  {func} ({where})"[:120])
        if stage == "streams":
            per_method: dict[str, float] = defaultdict(float)
            per_stream: dict[str, float] = defaultdict(float)
            for line in log:
                if m := METHOD.search(line):
                    per_method[m.group(2)] += float(m.group(3))
                    per_stream[m.group(1) or "(once, per image)"] += float(m.group(3))
            print("  seconds per method (all streams): " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(per_method.items(), key=lambda kv: -kv[1])))
            print("  seconds per stream: " + ", ".join(f"{k} {v:.1f}" for k, v in per_stream.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=list(HEAVY), help="stages to profile (default: %(default)s)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to run them in (default: this one)")
    ap.add_argument("--top", type=int, default=12, help="functions listed per stage (default: %(default)s)")
    args = ap.parse_args()
    print(f"{args.root.resolve()}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for stage in args.stages:
        profile_stage(args.root.resolve(), stage, args.top)


if __name__ == "__main__":
    main()
