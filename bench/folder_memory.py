"""Peak memory of ``source_data`` (folder profile) on a tiny folder, and on the same folder with one large
16-bit greyscale scan (``--side`` px square, default 6000: a flatbed scan at 600 dpi) in one class: does a
big image cost more than the image itself? Each stage runs as ``python -m tasks.source_data`` in a scratch
copy of the repository; its peak resident set size is the kernel's (``ru_maxrss`` of the child), exact,
not sampled. Prints both figures and their ratio.

    .venv/bin/python bench/folder_memory.py               # 6000x6000 16-bit scan
    .venv/bin/python bench/folder_memory.py --side 4000 --out /tmp/fm
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import copy_repo, make_folder_set, subprocess_env  # noqa: E402


def make_scan(path: Path, side: int) -> None:
    """A smooth 16-bit greyscale page with fine noise (compresses like a real scan), saved as PNG."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, side, dtype=np.float32)[:, None]
    page = np.empty((side, side), np.uint16)
    for r0 in range(0, side, 500):  # rows in blocks: the generator itself stays small
        rows = y[r0: r0 + 500]
        block = 20000 + 30000 * rows * np.linspace(0, 1, side, dtype=np.float32)[None, :]
        block += rng.normal(0, 40, block.shape).astype(np.float32)
        page[r0: r0 + 500] = block.astype(np.uint16)
    Image.fromarray(page).save(path, compress_level=1)


def peak_rss_mib(repo: Path) -> float:
    """Run ``tasks.source_data`` in ``repo`` in a child of a fresh interpreter; its peak RSS in MiB."""
    probe = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'tasks.source_data'], "
             "check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, env=subprocess_env(), check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=6000, help="side of the 16-bit scan in pixels (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="sda-folder-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    sets = work / "sets"
    shutil.rmtree(sets, ignore_errors=True)
    make_folder_set(sets, per_class=12, target_per_class=2, flat=2)
    big = work / "big"
    shutil.rmtree(big, ignore_errors=True)
    shutil.copytree(sets / "source", big)
    make_scan(next(p for p in sorted(big.iterdir()) if p.is_dir()) / "scan.png", args.side)
    rows = []
    for name, source in (("tiny folder", sets / "source"), (f"+ one {args.side}x{args.side} 16-bit scan", big)):
        repo = work / f"repo-{len(rows)}"
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir()
        copy_repo(repo, {"profile": "folder", "folder": {"source_dir": str(source), "target_dirs": {}},
                         "relabel": {"max_pixels": max(40_000_000, args.side ** 2 + 1)}}, git=False)
        rows.append((name, peak_rss_mib(repo)))
    for name, mib in rows:
        print(f"{name:<40} source_data peak RSS {mib:8.0f} MiB")
    print(f"ratio {rows[1][1] / rows[0][1]:.2f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()
