"""The relabel monitor: ATC's threshold, the drift tests and their too-few rule, its row, the history of runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest

from sda.relabel.monitor import Reference, atc_threshold, history, monitor
from sda.relabel.store import MONITOR_SCHEMA, MonitorRow, commit_batch, read_table

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
    row = MonitorRow(batch_id=batch, run_id=run, flow_run_id=None, images=images, too_few=False, drift=drift,
                     estimated_accuracy=acc, reference_accuracy=50.0, accuracy_drop=50.0 - acc, low_confidence=100 - acc,
                     mean_confidence=conf, p_labels=0.5, p_confidence=0.5, p_inputs=0.001 if drift else 0.5,
                     fired="inputs" if drift else "", label_shares=json.dumps(shares),
                     monitored_at=dt.datetime(2026, 12, 6, 12, minute, tzinfo=dt.timezone.utc))
    commit_batch(root, row.table(), batch)


def test_a_monitor_result_is_one_row_whose_columns_are_its_fields(tmp_path):
    """MonitorRow declares the monitor store's columns once: the schema is its fields, a monitor() result
    becomes a row, and the row reads back as written."""
    ref = _reference(np.random.default_rng(4))
    result = monitor(np.zeros(120, int), np.asarray(ref.confidences)[:120], ref, CLASSES, min_images=30, alpha=1e-3,
                     max_accuracy_drop=10)
    at = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.timezone.utc)
    row = MonitorRow.of(result, batch_id="b1", run_id="r1", flow_run_id=None, at=at)
    assert MONITOR_SCHEMA.names == [f.name for f in dataclasses.fields(MonitorRow)]
    assert row.fired == ",".join(result["fired"]) and "labels" in row.fired and row.drift
    assert row.p_labels == result["tests"]["labels"]["p"] and row.p_inputs is None
    commit_batch(tmp_path, row.table(), "b1")
    (back,) = read_table(tmp_path).to_pylist()
    back.pop("date", None)  # the partition column
    assert back["label_shares"] == json.dumps(result["label_shares"]) and back["monitored_at"] == at
    assert back["estimated_accuracy"] == pytest.approx(row.estimated_accuracy)
    assert {k: v for k, v in back.items() if not isinstance(v, float)} == {
        k: v for k, v in dataclasses.asdict(row).items() if not isinstance(v, float)}


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
    assert r2["fired"] == ["inputs"] and runs[0]["fired"] == []
    assert [r["run_id"] for r in history(tmp_path, 1)] == ["r2"]


def _domains(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Features of five 'evaluated domains': clusters of 16-d points around their own centres."""
    centres = rng.normal(0, 3, (5, 16))
    return {f"d{i}": c + rng.normal(0, 1, (600, 16)) for i, c in enumerate(centres)}


def _input_reference(doms: dict[str, np.ndarray]):
    from sda.relabel.monitor import InputReference

    allf = np.concatenate([f[:300] for f in doms.values()])
    mean = allf.mean(0)
    u, s, vt = np.linalg.svd(allf - mean, full_matrices=False)
    ref = InputReference(mean, vt[:8], s[:8] / np.sqrt(len(allf)), 1.0, list(doms), [])
    ref.pools = [ref.project(f[:300]) for f in doms.values()]
    pts = np.concatenate(ref.pools)[:800]
    d2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    ref.bandwidth = float(np.median(d2[np.triu_indices(len(pts), 1)]))
    return ref


def test_the_input_test_takes_one_domain_or_all_mixed_and_flags_a_new_one(tmp_path):
    from sda.relabel.monitor import InputReference

    rng = np.random.default_rng(0)
    doms = _domains(rng)
    ref = _input_reference(doms)
    ref.save(tmp_path / "inputs.npz")
    ref = InputReference.load(tmp_path / "inputs.npz")  # as the service keeps it
    held_out = {d: f[300:] for d, f in doms.items()}
    for d, f in held_out.items():  # one evaluated domain alone: at home
        t = ref.test(f[rng.choice(300, 120, replace=False)], permutations=199, seed=1)
        assert t["p"] > 0.01 and t["nearest"] == d, (d, t)
    mixed = np.concatenate(list(held_out.values()))[rng.choice(1500, 120, replace=False)]
    assert ref.test(mixed, permutations=199, seed=2)["p"] > 0.01
    new = doms["d0"][300:420] + np.r_[np.full(4, 1.5), np.zeros(12)]  # d0, shifted: a new kind of input
    assert ref.test(new, permutations=199, seed=3)["p"] <= 0.005
    rows = {name: monitor(np.repeat(np.arange(4), 30), np.full(120, 0.8), _reference(rng), CLASSES, min_images=30,
                          alpha=1e-3, max_accuracy_drop=100, features=feats, inputs=ref, input_alpha=0.01,
                          permutations=199, seed=4)
            for name, feats in (("home", held_out["d2"][:120]), ("new", new))}
    assert "inputs" not in rows["home"]["fired"] and "inputs" in rows["new"]["fired"] and rows["new"]["drift"]
