"""A params change against the defaults, seed by seed: Source / DDA / DDA ensemble / SDA on the val
split (where a change is chosen) and on the test split (what the README reports), both recipes on the
same seeds. One scratch clone of this checkout's HEAD per ``runtime.seed`` (commit first), with the
embedded profile; each (recipe, split) is ``dvc repro evaluate`` there, so DVC reruns only what the
change touches (the source data, source model and the target images of a split are made once a seed).

    .venv/bin/python bench/recipe_ab.py --set diffusion_finetune.train_steps=1500 \\
        --set diffusion_finetune.lr_schedule=cosine --out /tmp/sda-ab     # ~13 min a seed on 2 cores

Prints a row per seed, recipe and split, the means over the seeds and the change's difference
(candidate - default) on each split, and writes them to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from folder_example import clone_head  # noqa: E402

METHODS = ("source", "dda", "dda_ens", "sda")


def parse_set(text: str) -> tuple[list[str], object]:
    """``section.key=value`` (value read as YAML) -> (["section", "key"], value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: write section.key=value")
    return key.split("."), yaml.safe_load(value)


def write_params(repo: Path, seed: int, split: str, changes: list[tuple[list[str], object]]) -> None:
    """params.yaml of the clone: its committed values with ``runtime.seed``, ``target_data.split`` and ``changes``."""
    params = yaml.safe_load(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo, check=True,
                                           capture_output=True, text=True).stdout)
    params["runtime"]["seed"] = seed
    params["target_data"]["split"] = split
    for path, value in changes:
        node = params
        for k in path[:-1]:
            node = node[k]
        if path[-1] not in node:
            raise SystemExit(f"--set {'.'.join(path)}: params.yaml has no such key")
        node[path[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def evaluate(repo: Path) -> tuple[dict, float]:
    """``dvc repro evaluate`` in ``repo``: the mean corruption accuracies and the wall seconds."""
    t0 = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "--quiet", "evaluate"], cwd=repo, check=True, env=env)
    m = json.loads((repo / "metrics" / "evaluate.json").read_text())
    return m["mean"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="changes", type=parse_set, action="append", required=True,
                    help="section.key=value: the candidate's change (repeat for several)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="runtime.seed values (default 0 1 2)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sda-ab"), help="scratch folder (created)")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    args.out.mkdir(parents=True)
    # the order reuses DVC's run cache: the default's test run makes everything once, its val run only the
    # target side, the candidate's val run the recipe's side, its test run the target projection again
    plan = [("default", "test"), ("default", "val"), ("candidate", "val"), ("candidate", "test")]
    rows = []
    for seed in args.seeds:
        repo = args.out / f"seed-{seed}"
        clone_head(repo)
        for recipe, split in plan:
            write_params(repo, seed, split, args.changes if recipe == "candidate" else [])
            mean, seconds = evaluate(repo)
            rows.append({"seed": seed, "recipe": recipe, "split": split, "seconds": round(seconds),
                         **{k: mean[k] for k in METHODS}})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    print("\n| split | recipe | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for split in ("val", "test"):
        for recipe in ("default", "candidate"):
            sel = [r for r in rows if r["split"] == split and r["recipe"] == recipe]
            summary[f"{split}/{recipe}"] = {k: statistics.mean(r[k] for r in sel) for k in METHODS}
            sd = {k: statistics.stdev(r[k] for r in sel) if len(sel) > 1 else 0.0 for k in METHODS}
            print(f"| {split} | {recipe} | " + " | ".join(
                f"{summary[f'{split}/{recipe}'][k]:.2f} ± {sd[k]:.2f}" for k in METHODS) + " |")
        diff = {k: summary[f"{split}/candidate"][k] - summary[f"{split}/default"][k] for k in METHODS}
        summary[f"{split}/difference"] = diff
        print(f"| {split} | candidate - default | " + " | ".join(f"{diff[k]:+.2f}" for k in METHODS) + " |")
    (args.out / "results.json").write_text(json.dumps({"changes": [".".join(p) + f"={v}" for p, v in args.changes],
                                                       "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
