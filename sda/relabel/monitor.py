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
  below ``min_images`` images it says ``too_few`` and flags nothing;
- the **input test** (:class:`InputReference`): a new kind of input whose labels and confidences look like
  the reference's is seen in the inputs themselves. The source model's penultimate features of each
  evaluated domain's images (up to ``input_images`` a domain; no projection needed), whitened to 32
  principal components, are the reference. A batch is compared, by a kernel two-sample test (MMD with an
  RBF kernel of the reference's median distance, ``permutations`` seeded permutations), with the pooled
  domains and with each of the three evaluated domains nearest to it; its p-value is the largest: a batch
  of one evaluated domain, or of all of them mixed, is at home; a batch unlike every one of them is not.
  Against the pooled reference alone every batch of a single domain would differ (a real inbox receives one
  kind of image at a time). It flags drift under ``input_alpha``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = ["InputReference", "Reference", "atc_threshold", "history", "input_key", "input_reference", "mmd_pvalue",
           "monitor", "pipeline_reference", "reference_key", "shares"]


def atc_threshold(confidences: np.ndarray, correct: np.ndarray) -> float:
    """ATC's threshold: the share of ``confidences`` (N,) above it equals the share of ``correct`` (N,) bool."""
    accuracy = float(np.mean(correct))
    return float(np.quantile(confidences, 1.0 - accuracy))


# the monitor's folder in a label store (its rows, its copy of the reference; "_": out of Parquet readers' way)
MONITOR_DIR = "_monitor"
# the files of a reference, in a label store's MONITOR_DIR and in the pipeline's ``monitor_reference`` out
REFERENCE_FILE = "reference.json"
INPUTS_FILE = "inputs.npz"


def reference_key(target_dir: Path, images: int, seed: int, adapt: str) -> str:
    """What a :class:`Reference` depends on besides the models: the evaluated targets (the hash of
    ``target_dir``'s index), the images drawn, the seed and ``relabel.adapt``. A relabel store keys its
    copy by the models' hashes too (:meth:`sda.relabel.job.RelabelJob._reference`)."""
    from sda.io.target_index import INDEX

    targets = hashlib.sha256((Path(target_dir) / INDEX).read_bytes()).hexdigest()[:16]
    return f"{targets}:{images}:{seed}:{adapt}"


def input_key(key: str, images: int) -> str:
    """An :class:`InputReference`'s key: its :class:`Reference`'s and the images a domain it compares with."""
    return f"{key}:{images}"


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


@dataclass
class InputReference:
    """The evaluated domains' inputs as the input test sees them: ``mean`` (D,), ``components`` (K, D) and
    ``scale`` (K,) map a source-model feature (D,) to whitened principal components (K,); ``bandwidth``
    (the median squared distance between reference points: the RBF kernel's); ``domains`` and ``pools``
    (each domain's images in those components, (n_d, K)). ``key`` names the models and targets."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    bandwidth: float
    domains: list[str]
    pools: list[np.ndarray]
    key: str = ""

    def project(self, features: np.ndarray) -> np.ndarray:
        """(N, D) source-model features -> (N, K) whitened components."""
        return ((np.asarray(features, np.float64) - self.mean) @ self.components.T) / self.scale

    def save(self, path: Path) -> None:
        from sda.io.atomic import atomic_file

        arrays = {"mean": self.mean, "components": self.components, "scale": self.scale,
                  "bandwidth": np.float64(self.bandwidth), "domains": np.array(self.domains), "key": np.array(self.key),
                  **{f"pool_{i}": p for i, p in enumerate(self.pools)}}
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "InputReference | None":
        try:
            with np.load(path, allow_pickle=False) as z:
                domains = [str(d) for d in z["domains"]]
                return cls(z["mean"], z["components"], z["scale"], float(z["bandwidth"]), domains,
                           [z[f"pool_{i}"] for i in range(len(domains))], str(z["key"]))
        except (OSError, ValueError, KeyError):
            return None

    def test(self, features: np.ndarray, *, permutations: int, seed: int) -> dict[str, Any]:
        """``{"statistic", "p", "nearest"}`` of a batch's source-model ``features`` (N, D): the largest MMD
        p-value against the pooled domains and the three nearest domains (``nearest``: the one that fits best)."""
        x = self.project(features)
        rng = np.random.default_rng(seed)
        pooled = np.concatenate(self.pools)
        mixture = pooled[rng.choice(len(pooled), min(len(pooled), max(len(p) for p in self.pools)), replace=False)]
        centre = x.mean(0)
        near = sorted(range(len(self.pools)), key=lambda i: float(((self.pools[i].mean(0) - centre) ** 2).sum()))[:3]
        results = {self.domains[i]: mmd_pvalue(x, self.pools[i], self.bandwidth, permutations, rng) for i in near}
        results["(all evaluated domains)"] = mmd_pvalue(x, mixture, self.bandwidth, permutations, rng)
        best = max(results, key=lambda k: results[k][1])
        return {"statistic": round(results[best][0], 6), "p": results[best][1], "nearest": best}


def mmd_pvalue(x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int,
               rng: np.random.Generator) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of samples ``x`` (n, K) and ``y`` (m, K) with the RBF kernel
    ``exp(-|a-b|^2 / bandwidth)``: the biased statistic, its null by ``permutations`` random splits of the
    pooled sample (p = (1 + #null >= observed) / (1 + permutations))."""
    z = np.concatenate([x, y])
    n, total = len(x), len(z)
    sq = (z ** 2).sum(1)
    kernel = np.exp(-np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0.0) / bandwidth)
    order = np.concatenate([np.arange(total)[None], np.stack([rng.permutation(total) for _ in range(permutations)])])
    weights = np.full(order.shape, -1.0 / (total - n))
    np.put_along_axis(weights, order[:, :n], 1.0 / n, axis=1)
    stat = ((weights @ kernel) * weights).sum(1)
    return float(stat[0]), float((1 + np.sum(stat[1:] >= stat[0])) / (1 + permutations))


def input_reference(target_dir: Path, source: Any, *, images: int, seed: int, key: str = "",
                    components: int = 32, device: Any = "cpu") -> InputReference:
    """The :class:`InputReference` of a pipeline run's labelled target domains (``target_data``): up to
    ``images`` images a domain (a seeded draw), the source classifier's penultimate features of the
    originals (``source.logits_and_features``), whitened by a PCA of all of them."""
    from sklearn.decomposition import PCA

    from sda.io.shards import read_manifest, read_positions
    from sda.io.target_index import TargetIndex
    from sda.runtime import derive_seed

    domains = TargetIndex.read(target_dir).labelled
    feats = []
    for d in domains:
        n = read_manifest(target_dir / d)["count"]
        pick = np.random.default_rng(derive_seed(seed, "input reference", d)).choice(n, size=min(images, n), replace=False)
        originals = np.stack([s.image for s in read_positions(target_dir / d, pick)])  # only the drawn ones
        feats.append(source.logits_and_features(originals, device=device)[1].numpy().astype(np.float64))
    if not feats:
        raise ValueError(f"{target_dir}: no labelled target domain to monitor against")
    allf = np.concatenate(feats)
    k = min(components, allf.shape[1], len(allf) - 1)
    pca = PCA(k, random_state=0).fit(allf)
    scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
    ref = InputReference(pca.mean_, pca.components_, scale, 1.0, list(domains), [], key)
    ref.pools = [ref.project(f) for f in feats]
    sample = np.concatenate(ref.pools)
    sample = sample[np.random.default_rng(derive_seed(seed, "input bandwidth")).choice(
        len(sample), size=min(1000, len(sample)), replace=False)]
    sq = (sample ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None] - 2 * sample @ sample.T, 0.0)
    ref.bandwidth = float(np.median(d2[np.triu_indices(len(sample), 1)]))
    return ref


def shares(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """``{class: share}`` of int ``counts`` (C,), classes with none left out, 4 decimals ({} for no count)."""
    n = int(np.sum(counts))
    return {c: round(float(k / n), 4) for c, k in zip(class_names, counts) if k} if n else {}


def monitor(labels: np.ndarray, confidences: np.ndarray, ref: Reference, class_names: Sequence[str], *,
            min_images: int, alpha: float, max_accuracy_drop: float, features: np.ndarray | None = None,
            inputs: InputReference | None = None, input_alpha: float = 0.005, permutations: int = 999,
            seed: int = 0) -> dict[str, Any]:
    """The monitor row of images labelled ``labels`` (N,) int with ``confidences`` (N,): ``{"images",
    "too_few", "drift", "estimated_accuracy" (%), "reference_accuracy" (%), "accuracy_drop" (points),
    "low_confidence" (% at or under the ATC threshold), "mean_confidence", "label_shares" {class: share},
    "tests": {"labels" | "confidence" | "inputs": {"statistic", "p"}}, "fired": [the tests under their
    alpha, and "accuracy_drop"]}``. With ``features`` (N, D: the source model's, of the originals) and
    ``inputs``, the input test (:meth:`InputReference.test`) runs too, flagging under ``input_alpha``."""
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
        "tests": {}, "fired": [],
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
    if inputs is not None and features is not None:
        row["tests"]["inputs"] = inputs.test(features, permutations=permutations, seed=seed)
    row["fired"] = [name for name, t in row["tests"].items() if t["p"] < (input_alpha if name == "inputs" else alpha)]
    row["fired"] += ["accuracy_drop"] if row["accuracy_drop"] > max_accuracy_drop else []
    row["drift"] = bool(row["fired"])
    return row


def pipeline_reference(target_dir: Path, predictor: Any, *, images: int, seed: int, key: str = "") -> Reference:
    """The :class:`Reference` of a pipeline run: a seeded draw of ``images`` images over the labelled target
    domains of ``target_dir`` (``domains.json``), predicted by ``predictor`` exactly as the service predicts
    (:meth:`sda.relabel.predict.SdaPredictor.predict`: each image projected on its own), so that a batch of
    those domains is compared with what the service itself makes of them (the pipeline's own projections
    used a batch-wide guidance norm: a few labels would differ)."""
    from sda.io.shards import read_manifest, read_positions
    from sda.runtime import derive_seed

    from sda.io.target_index import TargetIndex

    domains = TargetIndex.read(target_dir).labelled  # clean too: every labelled domain
    starts = np.cumsum([0] + [read_manifest(target_dir / d)["count"] for d in domains])
    total = int(starts[-1])
    if not total:
        raise ValueError(f"{target_dir}: no labelled target domain to monitor against")
    # the draw is over the domains' images one after the other; only the drawn ones are read
    rng = np.random.default_rng(derive_seed(seed, "monitor reference"))
    pick = np.sort(rng.choice(total, size=min(images, total), replace=False))
    drawn = [(d, s) for i, d in enumerate(domains)
             for s in read_positions(target_dir / d, pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i])]
    unlabelled = sorted({d for d, s in drawn if s.label < 0})
    if unlabelled:
        raise ValueError(f"{target_dir}: the labelled domain(s) {unlabelled} hold unlabelled images: run target_data again")
    originals = np.stack([s.image for _, s in drawn])
    seeds = [derive_seed(seed, "monitor reference", d, s.key) for d, s in drawn]
    pred, _ = predictor.predict(originals, seeds)
    truth = np.asarray([s.label for _, s in drawn])
    return Reference.from_predictions(pred["label"], pred["confidence"], truth, len(predictor.class_names),
                                      domains, key)


def history(monitor_dir: Path, runs: int) -> list[dict[str, Any]]:
    """The last ``runs`` relabel runs of the monitor dataset ``monitor_dir`` (``<labels>/_monitor``), oldest
    first: ``{"run_id", "finished" (UTC ISO), "batches", "images", "estimated_accuracy" (image-weighted %),
    "mean_confidence" (image-weighted, 0-1), "label_shares" {class: share of the run's images},
    "drifted" (batches), "too_few" (batches), "fired" (the tests that flagged a batch, sorted)}``."""
    from sda.relabel.store import read_table

    table = read_table(monitor_dir)
    if table is None:
        return []
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(table.to_pylist(), key=lambda r: r["monitored_at"]):
        h = out.setdefault(r["run_id"], {"run_id": r["run_id"], "batches": 0, "images": 0, "correct": 0.0,
                                         "confidence": 0.0, "counts": {}, "drifted": 0, "too_few": 0,
                                         "fired": set()})
        h["finished"] = r["monitored_at"].isoformat(timespec="seconds")
        h["batches"] += 1
        h["images"] += r["images"]
        h["correct"] += r["estimated_accuracy"] * r["images"]
        h["confidence"] += r["mean_confidence"] * r["images"]
        for c, share in json.loads(r["label_shares"] or "{}").items():
            h["counts"][c] = h["counts"].get(c, 0.0) + share * r["images"]
        h["drifted"] += int(r["drift"])
        h["too_few"] += int(r["too_few"])
        h["fired"] |= set(filter(None, (r.get("fired") or "").split(",")))
    rows = list(out.values())[-runs:]
    for h in rows:
        n = max(h["images"], 1)
        h["estimated_accuracy"] = round(h.pop("correct") / n, 1)
        h["mean_confidence"] = round(h.pop("confidence") / n, 4)
        h["label_shares"] = {c: round(k / n, 4) for c, k in h.pop("counts").items()}
        h["fired"] = sorted(h["fired"])
    return rows
