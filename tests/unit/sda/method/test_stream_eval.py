"""The streams evaluation (sda.method.stream_eval) and its report (sda.method.streams_report), on a tiny real
classifier and a tiny target set: every method on every stream, each entry on its stream's images, a
per-image method the same wherever its images are the same, the summary over the images every stream
saw, and the table that says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sda.config import Streams
from sda.method.stream_eval import TargetSet, compare_streams, subset, summarise_methods
from sda.method.streams_report import streams_markdown
from sda.models.classifiers import Classifier, create_classifier

DOMAINS = {"fog": 24, "snow": 24, "blur": 24}


@pytest.fixture(scope="module")
def target_set() -> TargetSet:
    """Three domains of 24 images of 4 classes (16 px): class k's images are brightest in channel k % 3,
    each domain shifted by its own offset, so predictions and accuracies differ by domain."""
    rng = np.random.default_rng(0)
    n = sum(DOMAINS.values())
    labels = np.tile(np.arange(4), n // 4).astype(np.int64)
    base = rng.integers(40, 90, (n, 16, 16, 3))
    base[np.arange(n), :, :, labels % 3] += 120
    base += np.repeat([0, 30, -30], 24)[:, None, None, None]
    originals = np.clip(base, 0, 255).astype(np.uint8)
    projections = np.clip(originals.astype(int) // 2 + 64, 0, 255).astype(np.uint8)
    keys = [f"{d}/{i:03d}" for d, k in DOMAINS.items() for i in range(k)]
    return TargetSet(dict(DOMAINS), keys, originals, projections, labels)


def _classifier(seed: int) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(create_classifier("sda_cnn3", 4, width=8).eval(),
                      {"num_classes": 4, "mean": [0.5] * 3, "std": [0.25] * 3})


@pytest.fixture(scope="module")
def metrics(target_set):
    cfg = Streams(streams={"iid": {"order": "iid", "batch_size": 8},
                           "class_sorted": {"order": "correlated", "batch_size": 8, "delta": 0.0},
                           "batch4": {"order": "iid", "batch_size": 4, "images_per_domain": 12}},
                  methods=("source", "dda", "sda", "bn", "tent", "lame"), images_per_domain=None, coupling_images=0)
    out = compare_streams(target_set, _classifier(0), _classifier(1), cfg, seed=0, device=torch.device("cpu"),
                          fallback=False, projection_fe=12.0, diffusion=None)
    out["methods"] = summarise_methods(out["streams"])
    out["protocol"] = {"streams": {k: v.model_dump() for k, v in cfg.streams.items()}}
    return out


def test_every_method_on_every_stream_on_that_streams_images(metrics):
    assert list(metrics["streams"]) == ["iid", "class_sorted", "batch4"]
    for stream, row in metrics["streams"].items():
        assert list(row) == ["source", "dda", "sda", "bn", "tent", "lame"]
        want = 12 if stream == "batch4" else 24
        assert all(e["images_per_domain"] == want and set(e["domains"]) == set(DOMAINS) for e in row.values())
    assert metrics["common_images_per_domain"] == 12


def test_a_per_image_method_is_the_same_wherever_its_images_are(metrics):
    iid, sorted_, b4 = (metrics["streams"][s] for s in ("iid", "class_sorted", "batch4"))
    for m in ("source", "dda", "sda"):
        assert iid[m]["domains"] == sorted_[m]["domains"] and iid[m]["mean"] == sorted_[m]["mean"]
        assert iid[m]["mean_common"] == sorted_[m]["mean_common"] == b4[m]["mean_common"] == b4[m]["mean"]
        assert iid[m]["classifier_backwards"] == 0
    assert iid["sda"]["unet_forward_equivalents"] == 12.0 and iid["source"]["unet_forward_equivalents"] == 0
    # Tent takes a step per batch: a backward per image; BN and LAME none
    assert iid["tent"]["classifier_backwards"] == pytest.approx(1.0) and iid["bn"]["classifier_backwards"] == 0


def test_the_summary_is_over_the_images_every_stream_saw(metrics):
    for m, summ in metrics["methods"].items():
        common = {s: row[m]["mean_common"] for s, row in metrics["streams"].items()}
        assert summ["worst"] == min(common.values()) and summ["best"] == max(common.values())
        assert summ["worst_stream"] in common and common[summ["worst_stream"]] == summ["worst"]
        assert summ["spread"] == pytest.approx(summ["best"] - summ["worst"], abs=0.011)
        for k in ("unet_forward_equivalents", "classifier_forwards", "classifier_backwards"):
            assert summ["cost_per_image"][k] == max(row[m][k] for row in metrics["streams"].values())


def test_the_table_has_a_row_per_method_and_marks_the_best_of_each_stream(metrics):
    table = streams_markdown(metrics)
    lines = table.splitlines()
    assert lines[0].startswith("| method | iid (b8, 24/domain) | class_sorted (b8, 24/domain) | batch4 (b4, 12/domain)")
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:] if line.startswith("| ")}
    assert list(rows) == ["source", "dda", "sda", "bn", "tent", "lame"]
    for j, stream in enumerate(["iid", "class_sorted", "batch4"]):
        best = max(e["mean"] for e in metrics["streams"][stream].values())
        cells = {m: line.split(" | ")[1 + j] for m, line in rows.items()}
        assert {m for m, c in cells.items() if c.startswith("**")} == {
            m for m, e in metrics["streams"][stream].items() if e["mean"] == best}
    assert "on the 12 images per domain every stream evaluated" in table


def test_subset_takes_the_first_k_of_each_domain(target_set):
    assert subset(target_set, 2).tolist() == [0, 1, 24, 25, 48, 49]
    assert subset(target_set, None).tolist() == list(range(72))
