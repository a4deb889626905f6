"""The relabel monitor: ATC's threshold, the drift tests and their too-few rule, the history of runs."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from sda.relabel.monitor import Reference, atc_threshold, history, monitor
from sda.relabel.store import MONITOR_SCHEMA, commit_batch

CLASSES = ["a", "b", "c", "d"]


def _reference(rng: np.random.Generator, n: int = 400) -> Reference:
    truth = rng.integers(0, 4, n)
    labels = np.where(rng.random(n) < 0.7, truth, rng.integers(0, 4, n))
    conf = np.where(labels == truth, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 0.8, n))
    return Reference.from_predictions(labels, conf, truth, 4, ["clean"])


def test_atc_threshold_leaves_as_many_confidences_above_as_were_correct():
    rng = np.random.default_rng(0)
    conf, correct = rng.random(1000), rng.random(1000) < 0.62
    t = atc_threshold(conf, correct)
    assert np.mean(conf > t) == pytest.approx(np.mean(correct), abs=0.002)


def test_a_batch_like_the_reference_is_not_flagged_a_one_class_one_is():
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    like = _reference(rng, 120)
    row = monitor(np.repeat(np.arange(4), 30), np.asarray(like.confidences), ref, CLASSES,
                  min_images=30, alpha=1e-3, max_accuracy_drop=10)
    assert not row["drift"] and not row["too_few"] and set(row["tests"]) == {"labels", "confidence"}
    assert abs(row["estimated_accuracy"] - ref.accuracy) < 10
    skewed = monitor(np.zeros(120, int), np.asarray(like.confidences), ref, CLASSES,
                     min_images=30, alpha=1e-3, max_accuracy_drop=10)
    assert skewed["drift"] and skewed["tests"]["labels"]["p"] < 1e-3 and skewed["label_shares"] == {"a": 1.0}


def test_unsure_labels_drop_the_estimate_and_flag_drift():
    ref = _reference(np.random.default_rng(2))
    row = monitor(np.repeat(np.arange(4), 30), np.full(120, 0.21), ref, CLASSES,
                  min_images=30, alpha=1e-3, max_accuracy_drop=10)
    assert row["estimated_accuracy"] == 0 and row["accuracy_drop"] == ref.accuracy and row["drift"]


def test_too_few_images_flag_nothing_and_test_nothing():
    ref = _reference(np.random.default_rng(3))
    row = monitor(np.zeros(3, int), np.full(3, 0.21), ref, CLASSES, min_images=30, alpha=1e-3, max_accuracy_drop=10)
    assert row["too_few"] and not row["drift"] and row["tests"] == {}


def _commit(root, run: str, batch: str, images: int, acc: float, conf: float, shares: dict, drift: bool, minute: int):
    commit_batch(root, pa.table({
        "batch_id": [batch], "run_id": [run], "flow_run_id": [None], "images": [images], "too_few": [False],
        "drift": [drift], "estimated_accuracy": [acc], "reference_accuracy": [50.0], "accuracy_drop": [50.0 - acc],
        "low_confidence": [100 - acc], "mean_confidence": [conf], "p_labels": [0.5], "p_confidence": [0.5],
        "label_shares": [json.dumps(shares)],
        "monitored_at": [dt.datetime(2026, 12, 6, 12, minute, tzinfo=dt.timezone.utc)]}, schema=MONITOR_SCHEMA), batch)


def test_history_weighs_each_batch_by_its_images_and_keeps_the_last_runs(tmp_path):
    _commit(tmp_path, "r1", "b1", 100, 60.0, 0.8, {"a": 1.0}, False, 1)
    _commit(tmp_path, "r2", "b2", 30, 40.0, 0.5, {"a": 1.0}, False, 2)
    _commit(tmp_path, "r2", "b3", 10, 80.0, 0.9, {"b": 1.0}, True, 3)
    assert history(tmp_path / "nothing", 5) == []
    runs = history(tmp_path, 5)
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    r2 = runs[1]
    assert (r2["batches"], r2["images"], r2["drifted"]) == (2, 40, 1)
    assert r2["estimated_accuracy"] == pytest.approx(50.0) and r2["mean_confidence"] == pytest.approx(0.6)
    assert r2["label_shares"] == {"a": 0.75, "b": 0.25}
    assert [r["run_id"] for r in history(tmp_path, 1)] == ["r2"]
