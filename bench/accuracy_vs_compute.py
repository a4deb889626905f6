"""Accuracy against projection compute: Source / DDA / SDA mean corruption accuracy of the embedded
pipeline for each projection setting, against the UNet forward-equivalents per target image that
target_project counted (a forward 1, an input-gradient backward 2: sda.method.dda.ProjectionCost).

One scratch clone of this checkout's HEAD (commit first) per seed; each setting is a `dvc repro` there
with `projection.*` changed, so only the stages that read the projection re-run (synth_align, then
classifier_align, target_project, evaluate: Mix of Diffusion uses the projection the targets get),
and DVC's run cache makes a setting seen before free. `--cache DIR` shares an existing DVC cache (this
checkout's `.dvc/cache`): the default setting of a seed whose run it holds costs nothing.

    .venv/bin/python bench/accuracy_vs_compute.py --seeds 0 --cache .dvc/cache --out /tmp/avc
    .venv/bin/python bench/accuracy_vs_compute.py --settings dda:4 ilvr:4 ilvr:1 dda:2:10 --seeds 0 1 2
    .venv/bin/python bench/accuracy_vs_compute.py --settings distilled+ilvr:4 distilled+dda:4 --repo /tmp/avc/seed-0
    .venv/bin/python bench/accuracy_vs_compute.py --rows /tmp/a.log /tmp/b.log --settings dda:4 ilvr:4 --out /tmp/ab

`distilled` settings (one evaluation of a student that synth_align trains) also report the one-off work
of the distillation (the teacher's projections and the student's training), which the per-image figure
leaves out.

Prints a table per setting (mean over the seeds), writes `accuracy_vs_compute.csv` (a DVC plot:
`dvc plots show accuracy_vs_compute.csv -x unet_fe_per_image -y sda`) and `accuracy_vs_compute.png`
(matplotlib, when installed) to --out, and what each setting would cost on ImageNet-C severity 5 on
one H200, scaled from the measured fast-mode DDA (1.40 images/s at 150 forward-equivalents per image,
docs/gpu.md): an extrapolation by forward-equivalents, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
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

METHODS = ("source", "dda", "sda")
DEFAULT = ["dda:4", "dda:2", "dda:1", "ilvr:4", "ilvr:2", "ilvr:1"]
IMAGENET_C_SEV5 = 15 * 50_000      # images: 15 corruptions of the 50,000 val images
H200_DDA_IMAGES_PER_S, H200_DDA_FE = 1.40, 150.0   # measured: fast mode, respacing 100, N 50


def run(repo: Path, *cmd: str) -> str:
    # the stage commands (`python -m tasks.<stage>`) run with this interpreter: a clone has no .venv of its own
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {repo}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def setting(spec: str) -> dict:
    """``method:N[:respacing]`` -> the projection params that change (``dda:2:10``: 2 guided steps of a
    10-step respacing, from about the noise level of the default's 4 of 20; ``distilled+ilvr:4``: one
    evaluation of a student of ``ilvr:4``, ``distilled+dda:4`` of ``dda:4``, ``distilled:4`` of the committed
    params' ``projection.teacher``; ``+plain``: the student's x0 as it is,
    without the low frequencies of the reference, ``projection.distill_lowpass: false``)."""
    method, n, *respacing = spec.split(":")
    method, *extra = method.split("+")
    teacher = [e for e in extra if e != "plain"]
    return {"method": method, "N": int(n), **({"teacher": teacher[0]} if teacher else {}),
            **({"distill_lowpass": False} if "plain" in extra else {}),
            **({"respacing": int(respacing[0])} if respacing else {})}


def distillation_fe(repo: Path) -> float:
    """The one-off work of a distilled projector (its teacher's projections and the student's training, in
    UNet forward-equivalents) from ``data/synth_align/projector/projector.json``; 0 for the other methods."""
    path = repo / "data" / "synth_align" / "projector" / "projector.json"
    record = json.loads(path.read_text()) if path.is_file() else {"method": None}
    if record["method"] != "distilled":
        return 0.0
    t = record["teacher_cost"]
    return t["forwards"] + 2 * t["backwards"] + record["student_forward_equivalents"]


def plot(table: list[dict], path: Path) -> None:
    """SDA (and DDA) against forward-equivalents per image, a line per projection method, each point named by
    its setting; nothing without matplotlib (not a dependency of the project)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for method in ("ilvr", "dda", "distilled"):
        pts = sorted((float(t["unet_fe_per_image"]), float(t["sda"]), float(t["dda"]), t["setting"]) for t in table
                     if setting(t["setting"])["method"] == method)
        if not pts:
            continue
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"SDA, {method} projection")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "s", color=line.get_color(), mfc="none",
                label=f"DDA, {method} projection")
        for fe, sda, _, name in pts:
            ax.annotate(name, (fe, sda), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.axhline(float(table[0]["source"]), color="gray", lw=1, label="source model")
    ax.set_xscale("log")
    ax.set_xlabel("UNet forward-equivalents per target image")
    ax.set_ylabel("mean corruption top-1 %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=DEFAULT, help="method:N[:respacing] (default: %(default)s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cache", type=Path, default=None, help="a DVC cache to share (e.g. .dvc/cache)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sda-accuracy-vs-compute"), help="scratch folder (created)")
    ap.add_argument("--repo", type=Path, action="append", default=[],
                    help="use this checkout (one per seed, in --seeds order) instead of a new clone: a finished "
                         "run of that seed whose upstream stages need not run again")
    ap.add_argument("--rows", type=Path, nargs="+", default=None, metavar="LOG",
                    help="run nothing: summarise the rows (JSON lines) that earlier runs printed, e.g. a sweep split "
                         "over several invocations, into --out (table, CSV, plot); --settings picks and orders them")
    args = ap.parse_args()
    if args.rows:
        rows, seen = [], {}
        for line in (line for log in args.rows for line in log.read_text().splitlines() if line.startswith("{")):
            r = json.loads(line)
            key = (r["seed"], r["setting"])
            if key in seen and any(seen[key][k] != r[k] for k in METHODS):
                sys.exit(f"seed {key[0]}, {key[1]}: two runs disagree ({seen[key]} and {r})")
            if key not in seen:  # a setting run again (same code, same seed) counts once
                seen[key] = r
                rows.append(r)
        settings = [s for s in args.settings if any(r["setting"] == s for r in rows)]
        if not settings:
            sys.exit(f"no rows of {args.settings} in {[str(p) for p in args.rows]}")
        summarize(rows, settings, args.out)
        return
    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    if args.repo and len(args.repo) != len(args.seeds):
        sys.exit("--repo: one checkout per seed")
    dvc = [sys.executable, "-m", "dvc"]
    rows = []
    for i, seed in enumerate(args.seeds):
        repo = args.repo[i].resolve() if args.repo else args.out / f"seed-{seed}"
        if not args.repo:
            clone_head(repo)
        if args.cache:
            run(repo, *dvc, "cache", "dir", "--local", str(args.cache.resolve()))
            # a clone has no outs: without them `dvc repro` re-runs every stage whose run is not in the run
            # cache, so the committed run's outs are checked out first (what the cache lacks stays absent)
            run(repo, *dvc, "checkout", "--allow-missing")
        # the committed params, not what the last setting left in the work tree (a --repo checkout's
        # uncommitted params are dropped too: commit them, or its upstream stages run again)
        base = yaml.safe_load(run(repo, "git", "show", "HEAD:params.yaml"))
        base["runtime"]["seed"] = seed
        for spec in args.settings:
            params = json.loads(json.dumps(base))
            params["projection"].update(setting(spec))
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            t0 = time.perf_counter()
            out = run(repo, *dvc, "repro")
            ran = [s for s in ("synth_align", "classifier_align", "target_project", "evaluate")
                   if f"Running stage '{s}'" in out]
            m = json.loads((repo / "metrics" / "evaluate.json").read_text())
            c = m["compute"]["projection"]
            rows.append({"seed": seed, "setting": spec, **{k: m["mean"][k] for k in METHODS},
                         "unet_fe_per_image": c["forward_equivalents_per_image"], "one_off_fe": distillation_fe(repo),
                         "fallback": bool((m.get("alignment") or {}).get("fallback")),
                         "seconds": round(time.perf_counter() - t0), "ran": ",".join(ran)})
            print(json.dumps(rows[-1]), flush=True)
    summarize(rows, args.settings, args.out)


def summarize(rows: list[dict], settings: list[str], out: Path) -> None:
    """The mean (and sd) over seeds of each setting's rows: ``out/accuracy_vs_compute.csv``, a table on stdout,
    ``out/accuracy_vs_compute.png``."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r["seed"] for r in rows if r["setting"] in settings})
    table = []
    for spec in settings:
        rs = [r for r in rows if r["setting"] == spec]
        mean = {k: statistics.mean(r[k] for r in rs) for k in METHODS}
        sd = {k: statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0 for k in METHODS}
        fe = rs[0]["unet_fe_per_image"]
        hours = IMAGENET_C_SEV5 / (H200_DDA_IMAGES_PER_S * H200_DDA_FE / fe) / 3600 if fe else 0.0
        table.append({"setting": spec, "seeds": len(rs), "unet_fe_per_image": fe, "one_off_fe": rs[0]["one_off_fe"], **mean, **{f"{k}_sd": sd[k] for k in METHODS},
                      "imagenet_c_h200_hours": round(hours, 1), "fallbacks": sum(r["fallback"] for r in rs)})
    with (out / "accuracy_vs_compute.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    print(f"\nseeds {seeds}; mean corruption top-1 % (test split); UNet forward-equivalents per image")
    print("| setting | seeds | FE / image | one-off FE (distillation) | source | DDA | SDA | ImageNet-C sev. 5 on one "
          "H200 (h, scaled) |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['setting']} | {t['seeds']} | {t['unet_fe_per_image']:g} | {t['one_off_fe']:.3g} | " + " | ".join(
            f"{t[k]:.2f}" + (f" ± {t[k + '_sd']:.2f}" if t["seeds"] > 1 else "") for k in METHODS)
            + f" | {t['imagenet_c_h200_hours']:g} |")
    plot(table, out / "accuracy_vs_compute.png")


if __name__ == "__main__":
    main()
