"""Sharing artifacts instead of regenerating them: push a pipeline's outputs to a DVC remote, clone
the repository elsewhere, pull, and find every stage up to date (the flow re-runs nothing)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.support import sh
from tasks import STAGES

pytestmark = pytest.mark.slow

GIT = ("git", "-c", "user.email=t@t", "-c", "user.name=t")


def test_push_clone_pull_runs_no_stage(tiny_repo, tmp_path, prefect_server):
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    sh(tiny_repo, "dvc", "repro")  # up to date, whatever earlier tests changed
    origin = tmp_path / "origin"  # a copy: the session's repository stays as it is
    shutil.copytree(tiny_repo, origin)
    sh(origin, "dvc", "remote", "add", "--force", "--default", "shared", str(remote))
    sh(origin, *GIT, "add", "dvc.lock", "metrics", "params.yaml", ".dvc/config")
    sh(origin, *GIT, "commit", "-qm", "results")
    sh(origin, "dvc", "push")
    assert any(p.is_file() for p in remote.rglob("*"))

    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "data" / "classifier_align").exists()  # code and lock only, no data
    sh(clone, "dvc", "pull")
    assert "up to date" in sh(clone, "dvc", "status").stdout.lower()
    outs = [o["path"] for st in yaml.safe_load((clone / "dvc.lock").read_text())["stages"].values()
            for o in st.get("outs", [])]
    assert len(outs) >= len(STAGES) and all((clone / p).exists() for p in outs)
    assert json.loads((clone / "metrics" / "evaluate.json").read_text()) == \
        json.loads((origin / "metrics" / "evaluate.json").read_text())

    from flows.pipeline import pipeline

    result = pipeline(root=str(clone))
    assert [r["stage"] for r in result["stages"]] == list(STAGES)
    assert not any(r["ran"] for r in result["stages"]), result["stages"]
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert lock == yaml.safe_load((origin / "dvc.lock").read_text())  # nothing re-recorded
