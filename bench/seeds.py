"""Source / DDA / SDA over several seeds: the embedded pipeline with the repository's params, one
scratch clone of this checkout's HEAD per ``runtime.seed`` (commit first), run one after the other
through the Prefect flow. Prints each seed's means, what classifier_align's checks decided (the
aligned model against the source model on the projected source val split, fallback or not), and the
mean and standard deviation over the seeds.

    .venv/bin/python bench/seeds.py --seeds 1 2 --out /tmp/sda-seeds      # ~16 min a seed on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from folder_example import clone_head, run_pipeline  # noqa: E402

METHODS = ("source", "dda", "dda_ens", "sda")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="runtime.seed values (default 0 1 2)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sda-seeds"), help="scratch folder (created)")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    rows = []
    for seed in args.seeds:
        repo = args.out / f"seed-{seed}"
        clone_head(repo)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["runtime"]["seed"] = seed
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        print(f"seed {seed}: running the pipeline in {repo}", flush=True)
        seconds = run_pipeline(repo)
        m = json.loads((repo / "metrics" / "evaluate.json").read_text())
        pv = (m.get("alignment") or {}).get("projected_val") or {}
        rows.append({"seed": seed, "seconds": round(seconds), **m["mean"],
                     "aligned_val": pv.get("aligned"), "source_val": pv.get("source"),
                     "fallback": (m.get("alignment") or {}).get("fallback")})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| seed | " + " | ".join(METHODS) + " | aligned / source on projected val | fallback | wall s |")
    print("|---|" + "---|" * (len(METHODS) + 3))
    for r in rows:
        print(f"| {r['seed']} | " + " | ".join(f"{r[k]:.2f}" for k in METHODS)
              + f" | {r['aligned_val']} / {r['source_val']} | {r['fallback']} | {r['seconds']} |")
    if len(rows) > 1:
        print("| mean ± sd | " + " | ".join(
            f"{statistics.mean(r[k] for r in rows):.2f} ± {statistics.stdev(r[k] for r in rows):.2f}" for k in METHODS)
            + " | | | |")


if __name__ == "__main__":
    main()
