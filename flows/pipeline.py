"""The SDA pipeline as a Prefect flow: the nine DVC stages in order, one Prefect task each.

DVC owns caching and versioning (each task asks DVC to reproduce one stage, and DVC skips it when
its code, params and inputs are unchanged); Prefect owns the run, logs, retries and artifacts.
At the end the results table is printed and published as a markdown artifact.

    python -m flows.pipeline               # run (or resume) the whole pipeline
    python -m flows.pipeline --force       # re-run every stage
    python -m flows.pipeline --profile imagenet   # switch params.yaml to the ImageNet profile and run
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import yaml

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks import STAGES
from sda.params import ParamsError, parse_params
from sda.shards import atomic_write_bytes
from tasks.common import load_params

ROOT = Path(__file__).resolve().parents[1]


def _env_for_stages() -> None:
    """Stage commands run ``python -m tasks.<stage>`` through the shell: make that the python of
    this interpreter (the project's venv) and keep the repo importable."""
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, root: str, force: bool = False) -> dict:
    """``dvc repro --single-item <stage>`` in-process; returns whether it ran and how long it took."""
    from dvc.repo import Repo

    logger = get_run_logger()
    logging.getLogger("dvc").setLevel(logging.WARNING)  # DVC's own ui lines still show what it does
    t0 = time.perf_counter()
    with contextlib.chdir(root), Repo(root) as repo:  # DVC resolves outputs against the cwd
        repo.scm_context.quiet = True  # no "git add dvc.lock" hint after every stage
        ran = repo.reproduce(stage, single_item=True, force=force)
    seconds = round(time.perf_counter() - t0, 1)
    state = "ran" if ran else "cached (unchanged)"
    logger.info("stage %-18s %s in %.1f s", stage, state, seconds)
    return {"stage": stage, "ran": bool(ran), "seconds": seconds}


def _results_markdown(root: Path, runs: list[dict]) -> str:
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    table = (root / "metrics" / "results.md").read_text()
    stages = "\n".join(f"| {r['stage']} | {'ran' if r['ran'] else 'cached'} | {r['seconds']} |" for r in runs)
    parts = [
        f"# SDA results ({metrics.get('split', 'test')} split, top-1 %)",
        table,
        "Mean over the corruption domains: "
        + ", ".join(f"{k} {v:.1f}" for k, v in metrics["mean"].items()),
        "## Stages\n| stage | state | seconds |\n|---|---|---|\n" + stages,
    ]
    grid = root / "metrics" / "projection_grid.png"
    if grid.is_file() and grid.stat().st_size < 2_000_000:
        b64 = base64.b64encode(grid.read_bytes()).decode()
        parts.append(f"## Originals vs projections\n![projection grid](data:image/png;base64,{b64})")
    return "\n\n".join(parts)


def set_profile(params_file: Path, profile: str) -> bool:
    """Set ``profile:`` in ``params_file`` (comments kept, written atomically); True if it changed.

    The switch is a visible edit of params.yaml, so DVC sees it and re-runs what depends on it.
    """
    text = params_file.read_text()
    pattern = re.compile(r"^profile:[ \t]*([^\s#]+)", re.MULTILINE)
    m = pattern.search(text)
    if m is None:
        raise ParamsError(f"{params_file}: no top-level 'profile:' line to switch")
    if m.group(1) == profile:
        return False
    new = pattern.sub(f"profile: {profile}", text, count=1)
    parse_params(yaml.safe_load(new), source=str(params_file))  # validate before writing
    atomic_write_bytes(params_file, new.encode())
    return True


@flow(name="sda-pipeline", log_prints=True)
def pipeline(root: str = str(ROOT), stages: list[str] | None = None, force: bool = False,
             profile: str | None = None) -> dict:
    """Validate ``params.yaml``, reproduce the DVC stages in order, publish the results table.

    ``profile`` (``embedded`` / ``imagenet``) switches params.yaml's profile first.
    """
    root_p = Path(root).resolve()
    if profile is not None and set_profile(root_p / "params.yaml", profile):
        print(f"params.yaml: profile switched to {profile}")
    params = load_params(root_p / "params.yaml")  # fail before any work on a bad params file
    print(f"profile={params.profile} seed={params.runtime.seed} split={params.target_data.split}")
    _env_for_stages()
    todo = list(stages or STAGES)
    unknown = sorted(set(todo) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    runs = []
    for stage in todo:
        runs.append(run_stage(stage, str(root_p), force))
    metrics_path = root_p / "metrics" / "evaluate.json"
    if "evaluate" in todo and metrics_path.is_file():
        md = _results_markdown(root_p, runs)
        print((root_p / "metrics" / "results.md").read_text())
        create_markdown_artifact(key="sda-results", markdown=md, description="SDA pipeline results")
        return {"stages": runs, "metrics": json.loads(metrics_path.read_text())}
    return {"stages": runs}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (in pipeline order)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when DVC has them cached")
    parser.add_argument("--profile", choices=["embedded", "imagenet"],
                        help="switch params.yaml's profile before running (default: as it is)")
    args = parser.parse_args()
    stages = [s for s in STAGES if s in args.stages] if args.stages else None
    try:
        if args.profile:
            set_profile(Path(args.root) / "params.yaml", args.profile)
        load_params(Path(args.root) / "params.yaml")  # a bad params file fails here, before Prefect starts
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    pipeline(root=args.root, stages=stages, force=args.force)


if __name__ == "__main__":
    main()
