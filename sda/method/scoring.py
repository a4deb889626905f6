"""Predictions of every method from three logit tensors, and their accuracies per domain.

Methods (each a prediction per image):

- ``source``: source model on the original image;
- ``dda``: source model on the projected image;
- ``dda_ens``: DDA's ensemble, softmax sum of source(original) and source(projected);
- ``sda``: argmax of the RAW LOGIT SUM source(original) + aligned(projected) (SDA, docs/method.md);
  DDA's prediction when the alignment fell back (an aligned model that the projected source val
  split rejected: ``classifier_align``'s config says ``fallback: dda``); the aligned term alone on a
  domain where the source model's predictions collapsed, when ``evaluate.source_collapse_share`` is
  set (:func:`source_collapsed`; off by default, as in the paper). The decision needs a whole domain,
  so it is made here, per target domain; relabelling, image by image, keeps the sum.

Extra rows (``more``): DDA's other ensembles (entropy pick, confidence pick, logit sum) and the
aligned model alone on projected images.

:func:`paired_comparison` says whether one method's lead over another on the same images is more
than chance: a labelled target of a few hundred images moves by a point per few images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from sda.models.classifiers import Classifier

__all__ = ["MAIN_METHODS", "DomainScore", "accuracy", "fell_back", "method_predictions", "paired_comparison",
           "score_domain", "sda_logits", "source_collapsed", "summarise", "top_class_share"]

MAIN_METHODS: tuple[str, ...] = ("source", "dda", "dda_ens", "sda")


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def fell_back(aligned_config: dict[str, Any]) -> bool:
    """Whether ``classifier_align`` rejected its aligned model (``fallback: dda`` in its config): the
    saved "aligned" model is then the source model, and SDA decides as DDA does."""
    return aligned_config.get("fallback") == "dda"


def sda_logits(source_orig: torch.Tensor, aligned_proj: torch.Tensor, *, fallback: bool = False) -> torch.Tensor:
    """SDA's decision logits (N, C): the raw sum source(original) + aligned(projected) (docs/method.md);
    with ``fallback`` (:func:`fell_back`) the projected term alone, DDA's decision."""
    return aligned_proj if fallback else source_orig + aligned_proj


def top_class_share(predictions: np.ndarray) -> float:
    """The share (0..1) of ``predictions`` (int (N,), N > 0) that go to the most predicted class."""
    return float(np.bincount(np.asarray(predictions)).max() / len(predictions))


def source_collapsed(source_predictions: np.ndarray, share: float | None, num_classes: int,
                     min_images: int = 20) -> bool:
    """Whether the source model's predictions on a domain's originals (int (N,), of ``num_classes``
    classes) have collapsed: at least ``share`` of the images in one class, and at least twice the share
    of a uniform guess (2 / ``num_classes``: with two classes, all of them), with ``min_images`` or more
    images (``share`` None: never). A model that calls nearly everything one class (the digits source
    model on Gaussian noise calls all of it one digit) says nothing about the classes there, and its
    logits in SDA's sum only pull the decision off the aligned model's (``evaluate.source_collapse_share``)."""
    return (share is not None and len(source_predictions) >= min_images
            and top_class_share(source_predictions) >= max(share, 2 / num_classes))


def method_predictions(
    source_orig: torch.Tensor, source_proj: torch.Tensor, aligned_proj: torch.Tensor, *, fallback: bool = False
) -> dict[str, torch.Tensor]:
    """Class predictions (N,) per method from logits (N, C) of the three model/input pairs
    (``fallback``: see :func:`sda_logits`)."""
    pick_entropy = _entropy(source_proj) < _entropy(source_orig)
    pick_conf = source_proj.softmax(1).amax(1) > source_orig.softmax(1).amax(1)
    return {
        "source": source_orig.argmax(1),
        "dda": source_proj.argmax(1),
        "dda_ens": (source_orig.softmax(1) + source_proj.softmax(1)).argmax(1),
        "sda": sda_logits(source_orig, aligned_proj, fallback=fallback).argmax(1),
        "dda_ens_entropy": torch.where(pick_entropy, source_proj.argmax(1), source_orig.argmax(1)),
        "dda_ens_confidence": torch.where(pick_conf, source_proj.argmax(1), source_orig.argmax(1)),
        "dda_ens_logit": (source_orig + source_proj).argmax(1),
        "aligned_proj": aligned_proj.argmax(1),
    }


def summarise(
    per_domain: Mapping[str, Mapping[str, float]], corruptions: Sequence[str]
) -> dict[str, object]:
    """Shape the per-domain accuracies (percent) as ``metrics/evaluate.json``.

    Returns ``{"domains": {d: {main methods}}, "mean": {main methods}, "more": {...}}`` where
    ``mean`` averages over the corruption domains only (the clean domain is reported, not averaged).
    """
    present = [c for c in corruptions if c in per_domain]
    if not present:
        raise ValueError("no corruption domain to average over")
    methods = list(next(iter(per_domain.values())).keys())
    mean_all = {m: round(float(np.mean([per_domain[c][m] for c in present])), 2) for m in methods}
    return {
        "domains": {d: {m: acc[m] for m in MAIN_METHODS} for d, acc in per_domain.items()},
        "mean": {m: mean_all[m] for m in MAIN_METHODS},
        "more": {
            "domains": {d: {m: v for m, v in acc.items() if m not in MAIN_METHODS} for d, acc in per_domain.items()},
            "mean": {m: v for m, v in mean_all.items() if m not in MAIN_METHODS},
            "corruptions_in_mean": present,
        },
    }


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent, rounded to 2 decimals (as ``metrics/evaluate.json`` holds it)."""
    return round(float((predictions == labels).mean() * 100), 2)


def paired_comparison(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, float | int]:
    """Method A against method B on the same N images (``a_right``, ``b_right``: bool (N,), whether
    each method labelled each image right).

    Returns ``gained`` / ``lost`` (images A gets right and B wrong / the reverse), ``difference``
    (A minus B, points), ``low`` / ``high`` (its 95 % interval: the paired Wald interval widened by the
    continuity correction 1 / N, so that it leaves out 0 only where ``p`` is small too) and ``p`` (exact
    two-sided McNemar test: the chance of a split of the ``gained + lost`` discordant images at least
    this uneven if neither method were better; 4 significant digits). Points rounded to 2 decimals.
    """
    a, b = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_comparison needs two equal, non-empty 1-d arrays, got {a.shape} and {b.shape}")
    n, gained, lost = len(a), int((a & ~b).sum()), int((~a & b).sum())
    diff = (gained - lost) / n
    half = (1.96 * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) + 1) / n if gained + lost else 0.0
    return {"gained": gained, "lost": lost, "difference": round(100 * diff, 2), "low": round(100 * (diff - half), 2),
            "high": round(100 * (diff + half), 2), "p": float(f"{_binomial_two_sided(min(gained, lost), gained + lost):.4g}")}


def _binomial_two_sided(k: int, m: int) -> float:
    """P(X <= k) x 2, capped at 1, for X ~ Binomial(m, 1/2): McNemar's exact test of k of m discordant
    pairs. Summed in log space (lgamma), so that tens of thousands of pairs take milliseconds."""
    if m == 0:
        return 1.0
    log_norm = math.lgamma(m + 1) - m * math.log(2)
    tail = sum(math.exp(log_norm - math.lgamma(i + 1) - math.lgamma(m - i + 1)) for i in range(k + 1))
    return min(1.0, 2 * tail)


@dataclass
class DomainScore:
    """One target domain's results: ``accuracy`` per method (percent; meaningless where the labels
    are -1, an unlabelled domain), the ``grid`` pair (originals, projections, uint8 (k, H, W, 3)),
    and every image's ``keys`` with its ``sda``, ``source`` and ``dda`` predictions and its ``labels`` (int (N,));
    ``source_share``: the share of the originals the source model gives its most predicted class, and
    ``source_dropped``: whether SDA's source term was dropped for it (:func:`source_collapsed`)."""

    accuracy: dict[str, float]
    grid: tuple[np.ndarray, np.ndarray]
    keys: list[str]
    sda: np.ndarray
    source: np.ndarray
    dda: np.ndarray
    labels: np.ndarray
    source_share: float = 0.0
    source_dropped: bool = False

    def compared(self) -> dict[str, dict[str, float | int]]:
        """SDA against Source and against DDA on this domain's images (:func:`paired_comparison`)."""
        right = lambda pred: pred == self.labels  # noqa: E731
        return {"sda_vs_source": paired_comparison(right(self.sda), right(self.source)),
                "sda_vs_dda": paired_comparison(right(self.sda), right(self.dda))}


def score_domain(source: Classifier, aligned: Classifier, batches: Iterable[Any], *, batch_size: int, grid_images: int,
                 device: torch.device | str = "cpu", collapse_share: float | None = None,
                 collapse_min_images: int = 20) -> DomainScore:
    """Every method's predictions (:func:`method_predictions`) on one target domain, scored.

    ``batches`` yields objects with ``keys``, ``images`` (originals), ``paired`` (their projections),
    both uint8 (B, H, W, 3), and ``labels`` (B,): :class:`sda.io.streaming.ShardStream` with
    ``paired_dir``. Memory holds a batch and the predictions, not the domain. With ``collapse_share``
    SDA is the aligned term alone where the source model's predictions on the originals collapsed
    (:func:`source_collapsed`: decided once the whole domain is seen).
    """
    fallback = fell_back(aligned.config)
    preds: dict[str, list[np.ndarray]] = {}
    keys, labels, grid_o, grid_p = [], [], [], []
    for b in batches:
        source_orig = source.logits(b.images, batch_size=batch_size, device=device)
        num_classes = source_orig.shape[1]
        source_proj = source.logits(b.paired, batch_size=batch_size, device=device)
        aligned_proj = aligned.logits(b.paired, batch_size=batch_size, device=device)
        for m, p in method_predictions(source_orig, source_proj, aligned_proj, fallback=fallback).items():
            preds.setdefault(m, []).append(p.numpy())
        keys += list(b.keys)
        labels.append(b.labels)
        if sum(map(len, grid_o)) < grid_images:  # the first batch comes from the first shard: same images every run
            grid_o.append(b.images[:grid_images])
            grid_p.append(b.paired[:grid_images])
    y = np.concatenate(labels)
    predictions = {m: np.concatenate(p) for m, p in preds.items()}
    # under a fallback SDA is DDA's decision already: nothing to drop
    dropped = not fallback and source_collapsed(predictions["source"], collapse_share, num_classes, collapse_min_images)
    if dropped:
        predictions["sda"] = predictions["aligned_proj"]
    share = round(top_class_share(predictions["source"]), 4) if len(y) else 0.0
    return DomainScore(accuracy={m: accuracy(p, y) for m, p in predictions.items()},
                       grid=(np.concatenate(grid_o)[:grid_images], np.concatenate(grid_p)[:grid_images]),
                       keys=keys, sda=predictions["sda"], source=predictions["source"], dda=predictions["dda"],
                       labels=y, source_share=share, source_dropped=dropped)
