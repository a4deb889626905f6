"""The cold start of each stage command: how long importing ``tasks.<stage>`` takes, beside
``import torch`` measured in the same run, the time to a stage's first line of work (``--help``:
its arguments parsed, nothing computed), and the time a mistake takes to be answered.

A stage module imports its params and the I/O at the top, and torch, its models and methods
(diffusers, timm, torchvision: ``sda.models``, ``sda.method``) in the functions that use them, so
``--help``, a params error or a missing folder answers before torch is imported
(tests/unit/test_cold_start.py). The aims: every stage module imports in at most 0.5x ``import torch``
(issue 46 had 1.5x, with torch at the top), and each of the mistakes of issue 56 (a typo'd key through
``sda check`` and a stage, a missing ``folder.source_dir``, ``sda relabel --inbox /nonexistent``)
answers in under 1 s, the ``sda`` console script included. Each figure is the median of ``--repeat``
fresh interpreters, the commands taken in turn (a slow moment hits all of them alike).

    python bench/stage_imports.py                 # this checkout
    python bench/stage_imports.py --root ../old   # another checkout (its own tasks/), same python
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.layout import STAGE_ORDER  # noqa: E402  (the standard library only)


def _seconds(cmd: list[str], cwd: Path, status: int = 0) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != status:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}, expected {status}:\n{r.stderr}")
    return seconds


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
    tmp = Path(tempfile.mkdtemp(prefix="sda-mistakes-"))
    text = (root / "params.yaml").read_text()
    (tmp / "typo.yaml").write_text(text.replace("profile: embedded", "profil: embedded", 1))
    (tmp / "folder.yaml").write_text(text.replace("profile: embedded", "profile: folder", 1).replace(
        "  source_dir: null", f"  source_dir: {tmp / 'no-photos'}", 1))
    sda = [str(Path(sys.executable).parent / "sda")]
    mistakes = {
        "typo'd key: sda check": sda + ["check", "--params", str(tmp / "typo.yaml")],
        "typo'd key: sda stage streams": sda + ["stage", "streams", "--params", str(tmp / "typo.yaml")],
        "no source_dir: sda check": sda + ["check", "--params", str(tmp / "folder.yaml")],
        "no source_dir: stage source_data": sda + ["stage", "source_data", "--params", str(tmp / "folder.yaml")],
        "sda relabel --inbox /nonexistent": sda + ["relabel", "--root", str(root), "--inbox", str(tmp / "nonexistent")],
    }
    commands.update({f"mistake {k}": v for k, v in mistakes.items()})
    for name, cmd in commands.items():  # warm the file cache
        _seconds(cmd, tmp, 2 if name.startswith("mistake") else 0)
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            times[name].append(_seconds(cmd, root if name.startswith(("import", "--help")) else tmp,
                                        2 if name.startswith("mistake") else 0))
    shutil.rmtree(tmp)
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
    print(f"slowest stage import: {worst:.2f}x import torch (aim: <= 0.5x)")
    print(f"{'a mistake answered (exit 2, one line)':<40} {'s':>6}")
    for k in mistakes:
        print(f"{k:<40} {med[f'mistake {k}']:>6.2f}")
    print(f"slowest answer: {max(med[f'mistake {k}'] for k in mistakes):.2f} s (aim: < 1 s)")


if __name__ == "__main__":
    main()
