"""The folder profile end to end: the whole pipeline (DVC through the Prefect flow) on a generated
folder set of someone's labelled images, then the relabel CLI on its flat folder."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from sda.config import load_params
from sda.domains import domain_for
from sda.io.shards import load_shards, read_manifest
from tasks import STAGES
from tests.support import SHAPES, copy_repo, make_folder_set, sh


@pytest.mark.slow
def test_folder_profile_end_to_end_through_the_prefect_flow(tmp_path, prefect_server):
    """DVC through the Prefect flow on a generated folder set (nested, PNG / JPEG / greyscale / RGBA, a
    truncated file), a labelled and a flat target; then the relabel CLI labels the flat folder."""
    from flows.pipeline import pipeline

    repo = tmp_path / "repo"
    repo.mkdir()
    make_folder_set(repo / "images", per_class=12, target_per_class=3, flat=5)
    rel = {"source_dir": "images/source", "target_dirs": {"site_b": "images/site_b", "site_c": "images/site_c"}}
    # the tiny budgets of TINY, not params.yaml's profiles.folder (minutes of CPU)
    copy_repo(repo, {"profile": "folder", "folder": rel, "profiles": {"folder": {
        "synth_generate": {"per_class": 2}, "classifier_align": {"projected_source": True},
        "evaluate": {"source_collapse_share": 0.5, "source_collapse_min_images": 5}}}})
    result = pipeline(root=str(repo))
    assert [r["stage"] for r in result["stages"]] == list(STAGES) and all(r["ran"] for r in result["stages"])
    metrics = result["metrics"]
    assert set(metrics["domains"]) == {"site_b", "clean", "gaussian_noise", "pixelate"}
    aligned = json.loads((repo / "data" / "classifier_align" / "config.json").read_text())
    train = read_manifest(repo / "data" / "source_data" / "train")["count"]
    assert aligned["trained_images"] == (2 * 4 + train) * aligned["hyperparameters"]["epochs"]  # synthetic + projected source
    assert metrics["more"]["corruptions_in_mean"] == ["site_b", "gaussian_noise", "pixelate"]
    # SDA against Source and DDA on the same images: the paired difference is the accuracies' difference
    paired = metrics["paired"]
    assert paired["corruptions"] == ["gaussian_noise", "pixelate"] and set(paired["domains"]) == set(metrics["domains"])
    acc, site_b = metrics["domains"]["site_b"], paired["domains"]["site_b"]
    for other in ("source", "dda"):
        c = site_b[f"sda_vs_{other}"]
        assert c["difference"] == pytest.approx(acc["sda"] - acc[other], abs=0.02) and c["low"] <= c["difference"] <= c["high"]
        assert 0 < c["p"] <= 1 and c["gained"] + c["lost"] <= 12
    assert "| site_b | " in (repo / "metrics" / "results.md").read_text()
    # SDA without the source term exactly where the source model called half or more of a domain one class
    term = metrics["sda_source_term"]
    assert term["collapse_share"] == 0.5 and set(term["domains"]) == set(metrics["domains"]) | {"site_c"}
    for d, t in term["domains"].items():
        assert t["dropped"] == (t["top_class_share"] >= 0.5)  # 4 classes: 2 / 4 = 0.5; every domain has >= 5 images
        if t["dropped"] and d in metrics["domains"]:
            assert metrics["domains"][d]["sda"] == metrics["more"]["domains"][d]["aligned_proj"]
    assert metrics["unlabelled"]["site_c"]["images"] == 5
    rows = list(csv.DictReader((repo / "metrics" / "predictions.csv").open()))
    assert len(rows) == 5 and {r["domain"] for r in rows} == {"site_c"} and all(r["class_name"] in SHAPES for r in rows)
    assert sorted(r["file"] for r in rows) == [f"c_{i:03d}.{'png' if i % 4 != 1 else 'jpg'}" for i in range(5)]
    params = load_params(repo / "params.yaml")
    assert domain_for(params).image_size(params) == 32 and load_shards(repo / "data" / "synth_generate").images.shape[1] == 32
    # the relabel flow's CLI labels the flat folder with the models of this profile
    r = sh(repo, sys.executable, "-m", "flows.relabel", "--inbox", "images/site_c")
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["labelled"] == 5 and summary["quarantined"] == 0
