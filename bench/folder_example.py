"""The "Your own data" examples of docs/own-data.md, measured: a generated folder set of someone's labelled
images run with ``profile: folder`` and the repository's params, through the Prefect flow over the
DVC stages, in a scratch clone of this checkout's HEAD (commit first). Prints ``sda check``'s report and
time, the pipeline's wall time, the
results table with the checks of the synthetic domain, the methods x target streams table, and copies ``metrics/projection_grid.png``
next to the clone.

- ``--set shapes``: 4 shapes, mixed formats and sizes; a darker blurred labelled target, a flat one;
- ``--set digits``: digits 0-9 printed in 16 fonts; the labelled target is scikit-learn's
  handwritten digits as 8 px scans (another acquisition: style and resolution), a flat one too.

    .venv/bin/python bench/folder_example.py --out /tmp/folder-example
    .venv/bin/python bench/folder_example.py --set digits --seed 1 --out /tmp/digits-1
    .venv/bin/python bench/folder_example.py -S classifier_align.projected_source=true --out /tmp/shapes-ps
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import make_digits_set, make_folder_set  # noqa: E402

SETS = {"shapes": make_folder_set, "digits": make_digits_set}


def clone_head(repo: Path) -> None:
    """A scratch clone of this checkout's HEAD at ``repo`` (what is committed, not the work tree)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)


def run_pipeline(repo: Path) -> float:
    """``python -m flows.pipeline`` in ``repo`` with what ``make run`` sets; its wall time in seconds."""
    t0 = time.perf_counter()
    # what `make run` sets: a Prefect home in the clone, no telemetry, time for the temporary server to start
    env = {"PREFECT_HOME": str(repo / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_LOGGING_EXTRA_LOGGERS": "sda",
           "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
           **os.environ}
    subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sda-folder-example"), help="scratch folder (created)")
    ap.add_argument("--set", choices=sorted(SETS), default="shapes", help="which data set (default %(default)s)")
    ap.add_argument("--per-class", type=int, default=None,
                    help="source images per class (default: shapes 75 of 4 classes, digits 30 of 10)")
    ap.add_argument("--target-per-class", type=int, default=20, help="labelled target images per class")
    ap.add_argument("--flat", type=int, default=24, help="images of the flat (unlabelled) target")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="runtime.seed (the data set stays the same)")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of the base sections, as `dvc exp run -S` does "
                         "(e.g. classifier_align.projected_source=true); repeatable")
    args = ap.parse_args()
    per_class = args.per_class or {"shapes": 75, "digits": 30}[args.set]
    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    repo = args.out / "repo"
    clone_head(repo)
    folder = SETS[args.set](repo / "images", per_class=per_class, target_per_class=args.target_per_class,
                            flat=args.flat)
    rel = lambda p: str(Path(p).relative_to(repo))  # noqa: E731
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "folder"
    params["runtime"]["seed"] = args.seed
    params["folder"].update({"source_dir": rel(folder["source_dir"]), "image_size": args.image_size,
                             "target_dirs": {k: rel(v) for k, v in folder["target_dirs"].items()}})
    for item in args.set_param:
        key, _, value = item.partition("=")
        *path, leaf = key.split(".")
        section = params
        for k in path:
            section = section[k]
        section[leaf] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    n = sum(1 for p in (repo / "images").rglob("*") if p.is_file())
    print(f"{n} image files under {repo / 'images'} ({args.set}); running the pipeline (profile folder, "
          f"{args.image_size} px, seed {args.seed})",
          flush=True)
    t0 = time.perf_counter()  # what `make check` prints before the run, and how long it takes
    subprocess.run([sys.executable, "-m", "sda.domains.check"], cwd=repo, check=True)
    print(f"sda check: {time.perf_counter() - t0:.1f} s (the process included)\n", flush=True)
    seconds = run_pipeline(repo)
    print(f"\nwall time of the pipeline: {seconds:.0f} s")
    print((repo / "metrics" / "results.md").read_text())
    streams = repo / "metrics" / "streams.md"
    if streams.is_file():  # every method on every target stream (docs/streams.md)
        print("\nmethods x target streams (top-1 %):\n" + streams.read_text())
    grid = args.out / "projection_grid.png"
    grid.write_bytes((repo / "metrics" / "projection_grid.png").read_bytes())
    print(f"originals vs projections: {grid}")


if __name__ == "__main__":
    main()
