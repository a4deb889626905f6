"""The cold start of each stage command: how long importing ``tasks.<stage>`` takes, beside
``import torch`` measured in the same run, and the time to a stage's first line of work (``--help``:
its arguments parsed, nothing computed).

A stage module imports torch, its params and the I/O at the top, and its models and methods
(diffusers, timm, torchvision: ``sda.models``, ``sda.method``) in the functions that use them, so
``--help``, a params error or a missing input answers in about the time of ``import torch``. The aim
(issue 46): every stage module imports in at most 1.5x that. Each figure is the median of
``--repeat`` fresh interpreters, the commands taken in turn (a slow moment hits all of them alike).

    python bench/stage_imports.py                 # this checkout
    python bench/stage_imports.py --root ../old   # another checkout (its own tasks/), same python
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.layout import STAGE_ORDER  # noqa: E402  (the standard library only)


def _seconds(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose stages to time (default: this one)")
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters per command (default: %(default)s)")
    args = ap.parse_args()
    root = args.root.resolve()
    stages = [s for s in STAGE_ORDER if (root / "tasks" / f"{s}.py").is_file()]
    commands = {"torch": [sys.executable, "-c", "import torch"]}
    for s in stages:
        commands[f"import {s}"] = [sys.executable, "-c", f"import tasks.{s}"]
        commands[f"--help {s}"] = [sys.executable, "-m", f"tasks.{s}", "--help"]
    for cmd in commands.values():  # warm the file cache
        _seconds(cmd, root)
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            times[name].append(_seconds(cmd, root))
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_s = med["torch"]
    print(f"{root} (median of {args.repeat}; python {sys.version.split()[0]})")
    print(f"import torch: {torch_s:.2f} s")
    print(f"{'stage':<20} {'import s':>9} {'x torch':>8} {'--help s':>9}")
    worst = 0.0
    for s in stages:
        ratio = med[f"import {s}"] / torch_s
        worst = max(worst, ratio)
        print(f"{s:<20} {med[f'import {s}']:>9.2f} {ratio:>8.2f} {med[f'--help {s}']:>9.2f}")
    print(f"slowest stage import: {worst:.2f}x import torch (aim: <= 1.5x)")


if __name__ == "__main__":
    main()
