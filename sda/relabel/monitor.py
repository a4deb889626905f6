"""What the relabel service labels, watched without labels: an accuracy estimate, and drift tests against
what the pipeline evaluated.

The *reference* is what the service makes of the data the pipeline evaluated: a seeded draw of
``relabel.monitor.reference_images`` images of its labelled target domains (``target_data``), labelled
by the service's own predictor (each image projected on its own), with their true labels; computed once
per set of models and kept in ``<labels>/_monitor/reference.json``. From it:

- the **accuracy estimate** is ATC, average thresholded confidence (Garg et al., ICLR 2022): the threshold
  ``t`` is the confidence above which the reference holds as many images as SDA labelled correctly there;
  a batch's estimated accuracy is the share of its confidences above ``t``. ATC needs nothing but the
  softmax confidence the service already computes, and on shifted data its error is a few points where
  plain average confidence overestimates by far more (their tables); the threshold is fitted on shifted
  domains (the evaluated corruptions, not the clean source), which is the service's setting;
- the **drift tests** (scipy.stats): the predicted labels against the reference's label shares
  (chi-square test of homogeneity of the two count vectors), the confidences against the reference's
  (two-sample Kolmogorov-Smirnov), and the estimated accuracy's drop from the reference's accuracy. A
  batch drifts when a test's p-value is under ``alpha`` or the drop exceeds ``max_accuracy_drop`` points;
  below ``min_images`` images it says ``too_few`` and flags nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = ["Reference", "atc_threshold", "history", "monitor", "pipeline_reference", "shares"]


def atc_threshold(confidences: np.ndarray, correct: np.ndarray) -> float:
    """ATC's threshold: the share of ``confidences`` (N,) above it equals the share of ``correct`` (N,) bool."""
    accuracy = float(np.mean(correct))
    return float(np.quantile(confidences, 1.0 - accuracy))


@dataclass
class Reference:
    """The pipeline's evaluated targets as the monitor sees them: ``label_counts`` (C,) of SDA's
    predictions, ``confidences`` (N,) (softmax at the label, sorted), the ATC ``threshold``, SDA's
    ``accuracy`` there (%) and the ``domains`` it covers. ``key`` names the models it was computed with."""

    label_counts: list[int]
    confidences: list[float]
    threshold: float
    accuracy: float
    domains: list[str]
    key: str = ""

    @classmethod
    def from_predictions(cls, labels: np.ndarray, confidences: np.ndarray, truth: np.ndarray, num_classes: int,
                         domains: Sequence[str], key: str = "") -> "Reference":
        correct = np.asarray(labels) == np.asarray(truth)
        return cls(np.bincount(labels, minlength=num_classes).tolist(), np.sort(confidences).astype(float).tolist(),
                   atc_threshold(confidences, correct), round(float(correct.mean() * 100), 2), list(domains), key)

    def label_shares(self, class_names: Sequence[str]) -> dict[str, float]:
        """Each predicted class's share of the reference (:func:`shares`)."""
        return shares(np.asarray(self.label_counts), class_names)

    def save(self, path: Path) -> None:
        from sda.io.atomic import atomic_write_json

        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Reference | None":
        """The reference saved at ``path``, or None when there is none (or it is unreadable)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def shares(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """``{class: share}`` of int ``counts`` (C,), classes with none left out, 4 decimals ({} for no count)."""
    n = int(np.sum(counts))
    return {c: round(float(k / n), 4) for c, k in zip(class_names, counts) if k} if n else {}


def monitor(labels: np.ndarray, confidences: np.ndarray, ref: Reference, class_names: Sequence[str], *,
            min_images: int, alpha: float, max_accuracy_drop: float) -> dict[str, Any]:
    """The monitor row of images labelled ``labels`` (N,) int with ``confidences`` (N,): ``{"images",
    "too_few", "drift", "estimated_accuracy" (%), "reference_accuracy" (%), "accuracy_drop" (points),
    "low_confidence" (% at or under the ATC threshold), "mean_confidence", "label_shares" {class: share},
    "tests": {"labels" | "confidence": {"statistic", "p"}}}``."""
    labels, confidences = np.asarray(labels, dtype=np.int64), np.asarray(confidences, dtype=np.float64)
    n = len(labels)
    counts = np.bincount(labels, minlength=len(class_names)) if n else np.zeros(len(class_names), np.int64)
    above = float(np.mean(confidences > ref.threshold) * 100) if n else 0.0
    row: dict[str, Any] = {
        "images": n, "too_few": n < min_images, "drift": False,
        "estimated_accuracy": round(above, 2), "reference_accuracy": ref.accuracy,
        "accuracy_drop": round(ref.accuracy - above, 2), "low_confidence": round(100 - above, 2) if n else 0.0,
        "mean_confidence": round(float(confidences.mean()), 4) if n else 0.0,
        "label_shares": shares(counts, class_names),
        "tests": {},
    }
    if row["too_few"]:
        return row
    table = np.stack([counts, np.asarray(ref.label_counts)])
    table = table[:, table.sum(0) > 0]  # classes neither side predicts carry no information
    if table.shape[1] >= 2:
        chi2, p, _, _ = stats.chi2_contingency(table)
        row["tests"]["labels"] = {"statistic": round(float(chi2), 3), "p": float(p)}
    ks = stats.ks_2samp(confidences, np.asarray(ref.confidences))
    row["tests"]["confidence"] = {"statistic": round(float(ks.statistic), 4), "p": float(ks.pvalue)}
    row["drift"] = bool(any(t["p"] < alpha for t in row["tests"].values()) or row["accuracy_drop"] > max_accuracy_drop)
    return row


def pipeline_reference(target_dir: Path, predictor: Any, *, images: int, seed: int, key: str = "") -> Reference:
    """The :class:`Reference` of a pipeline run: a seeded draw of ``images`` images over the labelled target
    domains of ``target_dir`` (``domains.json``), predicted by ``predictor`` exactly as the service predicts
    (:meth:`sda.relabel.predict.SdaPredictor.predict`: each image projected on its own), so that a batch of
    those domains is compared with what the service itself makes of them (the pipeline's own projections
    used a batch-wide guidance norm: a few labels would differ)."""
    from sda.io.shards import iter_samples
    from sda.runtime import derive_seed

    from sda.io.target_index import TargetIndex

    domains = TargetIndex.read(target_dir).labelled  # clean too: every labelled domain
    pool = [(d, s.key, s.image, s.label) for d in domains for s in iter_samples(target_dir / d) if s.label >= 0]
    if not pool:
        raise ValueError(f"{target_dir}: no labelled target domain to monitor against")
    rng = np.random.default_rng(derive_seed(seed, "monitor reference"))
    pick = np.sort(rng.choice(len(pool), size=min(images, len(pool)), replace=False))
    originals = np.stack([pool[i][2] for i in pick])
    seeds = [derive_seed(seed, "monitor reference", pool[i][0], pool[i][1]) for i in pick]
    pred, _ = predictor.predict(originals, seeds)
    truth = np.asarray([pool[i][3] for i in pick])
    return Reference.from_predictions(pred["label"], pred["confidence"], truth, len(predictor.class_names),
                                      domains, key)


def history(monitor_dir: Path, runs: int) -> list[dict[str, Any]]:
    """The last ``runs`` relabel runs of the monitor dataset ``monitor_dir`` (``<labels>/_monitor``), oldest
    first: ``{"run_id", "finished" (UTC ISO), "batches", "images", "estimated_accuracy" (image-weighted %),
    "mean_confidence" (image-weighted, 0-1), "label_shares" {class: share of the run's images},
    "drifted" (batches), "too_few" (batches)}``."""
    from sda.relabel.store import read_table

    table = read_table(monitor_dir)
    if table is None:
        return []
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(table.to_pylist(), key=lambda r: r["monitored_at"]):
        h = out.setdefault(r["run_id"], {"run_id": r["run_id"], "batches": 0, "images": 0, "correct": 0.0,
                                         "confidence": 0.0, "counts": {}, "drifted": 0, "too_few": 0})
        h["finished"] = r["monitored_at"].isoformat(timespec="seconds")
        h["batches"] += 1
        h["images"] += r["images"]
        h["correct"] += r["estimated_accuracy"] * r["images"]
        h["confidence"] += r["mean_confidence"] * r["images"]
        for c, share in json.loads(r["label_shares"] or "{}").items():
            h["counts"][c] = h["counts"].get(c, 0.0) + share * r["images"]
        h["drifted"] += int(r["drift"])
        h["too_few"] += int(r["too_few"])
    rows = list(out.values())[-runs:]
    for h in rows:
        n = max(h["images"], 1)
        h["estimated_accuracy"] = round(h.pop("correct") / n, 1)
        h["mean_confidence"] = round(h.pop("confidence") / n, 4)
        h["label_shares"] = {c: round(k / n, 4) for c, k in h.pop("counts").items()}
    return rows
