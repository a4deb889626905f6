"""The README's "Your own data" example, measured: a generated folder set of someone's labelled
images (4 shapes, mixed formats and sizes, a darker blurred labelled target and a flat one) run with
``profile: folder`` and the repository's params, through the Prefect flow over the DVC stages, in a
scratch copy of this checkout. Prints the wall time, the time table and the results table, and
copies ``metrics/projection_grid.png`` next to the copy.

    .venv/bin/python bench/folder_example.py --out /tmp/folder-example
    .venv/bin/python bench/folder_example.py --per-class 75 --image-size 32
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from repo_utils import make_folder_set  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sda-folder-example"), help="scratch folder (created)")
    ap.add_argument("--per-class", type=int, default=75, help="source images per class (4 classes)")
    ap.add_argument("--target-per-class", type=int, default=20, help="labelled target images per class")
    ap.add_argument("--flat", type=int, default=24, help="images of the flat (unlabelled) target")
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    repo = args.out / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    make_folder_set(repo / "images", per_class=args.per_class, target_per_class=args.target_per_class, flat=args.flat)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "folder"
    params["folder"].update({"source_dir": "images/source", "image_size": args.image_size,
                             "target_dirs": {"site_b": "images/site_b", "site_c": "images/site_c"}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    n = sum(1 for p in (repo / "images").rglob("*") if p.is_file())
    print(f"{n} image files under {repo / 'images'}; running the pipeline (profile folder, {args.image_size} px)",
          flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, check=True)
    print(f"\nwall time of the pipeline: {time.perf_counter() - t0:.0f} s")
    print((repo / "metrics" / "results.md").read_text())
    grid = args.out / "projection_grid.png"
    grid.write_bytes((repo / "metrics" / "projection_grid.png").read_bytes())
    print(f"originals vs projections: {grid}")


if __name__ == "__main__":
    main()
