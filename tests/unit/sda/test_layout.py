"""The pipeline's layout (sda/layout.py) is the one declaration of its artifact paths: dvc.yaml,
the stages, relabelling and `make clean` agree with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from sda.layout import METRIC_FILES, MODELS, OUTS, RUNS, STAGE_ORDER, WORK
from tasks import STAGES

ROOT = Path(__file__).resolve().parents[3]


def _paths(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def test_dvc_yaml_outs_and_metrics_are_the_layout():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGE_ORDER == STAGES
    metric_files = {str(p) for p in METRIC_FILES.values()}
    for name, stage in stages.items():
        data_outs = {p for p in _paths(stage.get("outs")) if not p.startswith("metrics/")}
        assert data_outs == ({str(OUTS[name])} if name in OUTS else set()), name
        written = _paths(stage.get("outs")) | _paths(stage.get("metrics")) | _paths(stage.get("plots"))
        assert {p for p in written if p.startswith("metrics/")} <= metric_files, name
    # every model relabelling loads is an out, or a file / folder inside one
    assert all(any(p == out or out in p.parents for out in OUTS.values()) for p in MODELS.values())


def test_clean_removes_the_outputs_and_nothing_else(tmp_path):
    keep = [tmp_path / "params.yaml", tmp_path / "data" / "inbox" / "new.png", tmp_path / ".dvc" / "cache" / "x"]
    made = [tmp_path / OUTS["synth_align"] / "manifest.json", tmp_path / RUNS / "evaluate.json",
            tmp_path / WORK / "synth_generate-ab" / "progress.json", tmp_path / METRIC_FILES["evaluate"]]
    for f in keep + made:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    out = subprocess.run([sys.executable, "-m", "sda.layout", "clean", "--root", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert all(f.exists() for f in keep) and not any(f.exists() for f in made)
    assert f"removed {OUTS['synth_align']}" in out and not (tmp_path / OUTS["synth_align"]).exists()
