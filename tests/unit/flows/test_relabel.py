"""flows/relabel.model_lineage: what a relabel row says produced its models is what that pipeline run
recorded, and only while dvc.lock shows that evaluate ran on those models."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.relabel import model_lineage
from sda.relabel.service import ModelsMissing


def _run_record(root, evaluated_source="s1.dir"):
    stages = {stage: {"outs": [{"path": f"data/{stage}", "md5": md5}]}
              for stage, md5 in [("source_model", "s1.dir"), ("classifier_align", "a1.dir"), ("diffusion_finetune", "d1.dir")]}
    stages["evaluate"] = {"deps": [{"path": "data/source_model", "md5": evaluated_source},
                                   {"path": "data/classifier_align", "md5": "a1.dir"}]}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"protocol": {"params_sha256": "ab" * 32,
                                                                            "code_version": "c0ffee"}}))


def test_the_lineage_is_the_recorded_run(tmp_path):
    _run_record(tmp_path)
    lin = model_lineage(tmp_path)
    assert (lin.source_model_hash, lin.aligned_model_hash, lin.diffusion_model_hash) == ("s1.dir", "a1.dir", "d1.dir")
    assert lin.params_hash == "ab" * 8 and lin.code_version == "c0ffee"


def test_models_newer_than_their_evaluation_are_not_labelled_with_the_old_record(tmp_path):
    _run_record(tmp_path, evaluated_source="s0.dir")  # source_model re-ran, evaluate did not yet
    with pytest.raises(ModelsMissing, match="data/source_model changed since evaluate last ran"):
        model_lineage(tmp_path)
    (tmp_path / "metrics" / "evaluate.json").unlink()
    with pytest.raises(ModelsMissing, match="evaluate.json is missing"):
        model_lineage(tmp_path)
