"""Where a pipeline run keeps what it makes, relative to the checkout: declared once, here, for the
stages (``tasks/``), the relabel service, ``make clean`` and the tests; ``tests`` check that
``dvc.yaml``'s outs and metrics are these.

- ``OUTS[stage]``: each stage's DVC out, ``data/<stage>/``;
- ``MODELS[role]``: the folders relabelling loads (the source and aligned classifiers, the diffusion
  model, ``synth_align``'s projector record / distilled student) and the class list, with
  ``MODEL_STAGES[role]``, the stage that writes each model out;
- ``METRIC_FILES``: what the stages write under ``metrics/`` (DVC metrics, plots and pictures), with
  ``TRAINING_STAGES`` and their ``TRAINING_SUMMARY`` (JSON) and ``TRAINING_CURVE`` (CSV) files;
- ``RUNS`` (run records: timings, resumed shards) and ``WORK`` (resumable work in progress): beside
  the outs, never inside one, and not versioned.

    python -m sda.layout clean [--root DIR]     # remove the outputs (not the DVC cache, not .venv)
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CLASSES", "DATA", "METRICS", "METRIC_FILES", "MODELS", "MODEL_STAGES", "OUTS", "PROJECTION_COMPUTE", "RUNS",
           "STAGE_ORDER", "SourceClasses", "StageRun", "TRAINING_CURVE", "TRAINING_STAGES", "TRAINING_SUMMARY", "WORK",
           "clean", "projector_dir"]

DATA = Path("data")
METRICS = Path("metrics")
RUNS = DATA / ".runs"
WORK = DATA / ".work"

# the pipeline's stages in the order they run (tasks.STAGES is this tuple)
STAGE_ORDER: tuple[str, ...] = (
    "source_data",
    "source_model",
    "diffusion_finetune",
    "synth_generate",
    "synth_align",
    "classifier_align",
    "target_data",
    "target_project",
    "evaluate",
    "streams",
    "monitor_reference",
)
# evaluate's and streams' outputs are metrics files, not a data folder
OUTS: dict[str, Path] = {stage: DATA / stage for stage in STAGE_ORDER if stage not in ("evaluate", "streams")}

# source_data's class list (SourceClasses), in its out; every stage that names the classes reads it
CLASSES = "classes.json"


@dataclass(frozen=True)
class SourceClasses:
    """The source domain's classes, ``<source_data out>/classes.json``: ``names`` (a label is an index
    into it) and, for a domain whose classes are drawn from a pretrained model's class table (ImageNet's
    DiT), ``selected``: their indices in that table. Written by each domain's ``write_source``, read by
    the stages and relabelling."""

    names: list[str]
    selected: list[int] | None = None

    @staticmethod
    def path(folder: Path) -> Path:
        return folder / CLASSES

    @classmethod
    def read(cls, file: Path) -> "SourceClasses":
        """The record in ``file`` (a missing file raises ``FileNotFoundError`` naming it)."""
        return cls(**json.loads(Path(file).read_text()))

    @classmethod
    def in_folder(cls, folder: Path) -> "SourceClasses":
        """The record of the source data folder ``folder``."""
        return cls.read(cls.path(folder))

    def as_dict(self) -> dict[str, list]:
        """The file's JSON object (``selected`` only where there is one)."""
        return {"names": list(self.names), **({"selected": list(self.selected)} if self.selected is not None else {})}


# target_project's count of the projection's work (UNet forward-equivalents per image; evaluate and streams
# read it): a file in its out
PROJECTION_COMPUTE = "compute.json"


@dataclass(frozen=True)
class StageRun:
    """A stage command's record of its last run, ``data/.runs/<stage>.run.json`` (outside every out: it
    holds time). ``process_start``: when its process started (``time.time()``); ``exit_status``: 0, 2 for
    a user error (its message names what to fix: bad params, a missing or unreadable input, a full disk),
    1 for any other error; ``work_start`` / ``work_seconds``: when its work began and how long it took
    (s), once it finished. ``tasks.common.stage_main`` writes it as the command ends (a killed process
    writes none); the flow reads from it whether the stage ran in its call, how it exited (a user error is
    not retried) and how its time splits, instead of reading DVC's output."""

    process_start: float
    exit_status: int
    work_start: float | None = None
    work_seconds: float | None = None

    @staticmethod
    def path(stage: str, root: Path = Path(".")) -> Path:
        return root / RUNS / f"{stage}.run.json"

    @classmethod
    def read(cls, stage: str, root: Path = Path("."), since: float | None = None) -> "StageRun | None":
        """The record of ``stage`` in the checkout at ``root``; None when there is none, it is unreadable,
        or its process started before ``since`` (``time.time()``: an earlier run's)."""
        try:
            run = cls(**json.loads(cls.path(stage, root).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return None if since is not None and run.process_start < since else run

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


MODEL_STAGES: dict[str, str] = {"source": "source_model", "aligned": "classifier_align",
                                "diffusion": "diffusion_finetune"}
MODELS: dict[str, Path] = {**{role: OUTS[stage] for role, stage in MODEL_STAGES.items()},
                           "classes": SourceClasses.path(OUTS["source_data"]),
                           # what projects: a record of the method, and the student of projection.method: distilled
                           "projector": OUTS["synth_align"] / "projector"}

# the stages that train a model: a summary each (DVC metrics; `dvc exp show` columns) and a curve per
# epoch or logged step (DVC plots; the flow's table artifacts)
TRAINING_STAGES: tuple[str, ...] = ("source_model", "diffusion_finetune", "classifier_align")
TRAINING_SUMMARY: dict[str, Path] = {stage: METRICS / f"{stage}.json" for stage in TRAINING_STAGES}
TRAINING_CURVE: dict[str, Path] = {stage: METRICS / "training" / f"{stage}.csv" for stage in TRAINING_STAGES}

METRIC_FILES: dict[str, Path] = {
    "alignment": METRICS / "alignment.json",   # classifier_align: the checks of the synthetic domain
    "evaluate": METRICS / "evaluate.json",     # evaluate: every method per domain, the protocol
    "per_domain": METRICS / "per_domain.csv",  # the plot of `dvc plots show`
    "results": METRICS / "results.md",
    "grid": METRICS / "projection_grid.png",
    "predictions": METRICS / "predictions.csv",  # the SDA labels of the unlabelled target folders
    **{f"{stage}_summary": path for stage, path in TRAINING_SUMMARY.items()},
    **{f"{stage}_curve": path for stage, path in TRAINING_CURVE.items()},
    # pictures: the synthetic images per class (classifier_align), confusion per domain (evaluate)
    "synthetic_grid": METRICS / "synthetic_grid.png",
    "confusion": METRICS / "confusion.png",
    "confusion_rows": METRICS / "confusion",  # <method>/<domain>.csv: actual, predicted per image (DVC's confusion plots)
    # streams: every method on every target stream (the JSON, its table, the heatmap)
    "streams": METRICS / "streams.json",
    "streams_table": METRICS / "streams.md",
    "streams_heatmap": METRICS / "streams.png",
}


def projector_dir(method: str) -> Path:
    """The folder whose UNet projects with ``projection.method``: ``synth_align``'s distilled student for
    ``distilled`` (``MODELS["projector"]``), else the diffusion model (``data/diffusion_finetune``)."""
    return MODELS["projector"] if method == "distilled" else OUTS["diffusion_finetune"]


def clean(root: Path) -> list[Path]:
    """Remove every output of a run under ``root`` (outs, metric files, run records, work in
    progress); the DVC cache, params and code stay. Returns what was removed."""
    removed = []
    for rel in [*OUTS.values(), RUNS, WORK, *METRIC_FILES.values()]:
        path = root / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(rel)
    return removed


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m sda.layout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["clean"], help="clean: remove the pipeline's outputs")
    ap.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: here)")
    args = ap.parse_args()
    for rel in clean(args.root):
        print(f"removed {rel}")


if __name__ == "__main__":
    main()
