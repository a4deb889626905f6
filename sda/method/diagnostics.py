"""Is the synthetic domain worth aligning to? Measurements that use no target label.

SDA helps only when the synthetic images carry their classes and fine-tuning on them keeps what the
classifier knew. Both can be measured before any target label is looked at:

- the **classification accuracy score** (CAS, Ravuri & Vinyals 2019, here with the source model as
  the judge): the source classifier's top-1 on the synthetic images against the class each was
  generated for, overall and per class; once for ``synth_generate``'s set, once for ``synth_align``'s;
- the **probe score** of a diffusion model while it trains: the same CAS on a small fixed, seeded
  probe set sampled from it (:func:`probe_score`), so training can run until its samples carry
  their classes and keep the checkpoint that scores best;
- the **projected source val split**: the source and the aligned classifier on DDA projections of
  held-out source images, whose labels are known: the aligned model exists to read projected images
  better than the source model does.

:func:`alignment_warnings` turns them into messages that name the weak stage and the setting to
change; the caller says which settings those are (``settings``), as ``sda`` never reads params.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from sda.io.images import to_uint8
from sda.io.shards import iter_samples
from sda.models.classifiers import Classifier
from sda.runtime import derive_seed

__all__ = ["alignment_warnings", "class_accuracy", "probe_plan", "probe_score", "projected_val_accuracy",
           "synthetic_samples", "weakest_classes"]


def weakest_classes(per_class: Mapping[str, float], class_names: Sequence[str], k: int = 10) -> list[int]:
    """The ``k`` classes (indices, in class order) the source model recognises least in a synthetic set
    (:func:`class_accuracy`'s ``per_class``); all of them when there are at most ``k``."""
    scored = [(per_class[n], i) for i, n in enumerate(class_names) if n in per_class]
    return sorted(i for _, i in sorted(scored)[:k])


def synthetic_samples(generated: str | os.PathLike[str], aligned: str | os.PathLike[str], classes: Sequence[int],
                      per_class: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The first ``per_class`` samples of each of ``classes`` in the shard set ``generated`` (in the order
    written: the same every run) and the same keys in ``aligned``: ``{class: (generated uint8 (K, H, W, 3),
    aligned uint8 (K, H, W, 3))}``. Reads the shards only as far as it needs, decoding only the images
    of ``classes``."""
    picked: dict[int, list] = {c: [] for c in classes}
    for s in iter_samples(generated, labels=set(classes)):
        if s.label in picked and len(picked[s.label]) < per_class:
            picked[s.label].append(s)
            if all(len(v) >= per_class for v in picked.values()):
                break
    keys = {s.key for v in picked.values() for s in v}
    after: dict[str, np.ndarray] = {}
    for s in iter_samples(aligned, labels=set(classes)):
        if s.key in keys:
            after[s.key] = s.image
            if len(after) == len(keys):
                break
    return {c: (np.stack([s.image for s in v]), np.stack([after[s.key] for s in v]))
            for c, v in picked.items() if v and all(s.key in after for s in v)}


def class_accuracy(model: Classifier, batches: Iterable[Any], class_names: Sequence[str],
                   *, batch_size: int = 512, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Top-1 of ``model`` against each image's label.

    ``batches`` yields objects with ``images`` uint8 (B, H, W, 3) and ``labels`` int (B,) (a
    :class:`sda.io.streaming.ShardStream`). Returns ``{"accuracy": percent, "images": N,
    "per_class": {class name: percent}}`` (classes without an image are left out), percent rounded
    to 2 decimals.
    """
    hits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for b in batches:
        pred = model.logits(b.images, batch_size=batch_size, device=device).argmax(1).numpy()
        hits.append(pred == np.asarray(b.labels))
        labels.append(np.asarray(b.labels))
    if not hits:
        return {"accuracy": 0.0, "images": 0, "per_class": {}}
    hit, y = np.concatenate(hits), np.concatenate(labels)
    per_class = {str(class_names[c]) if c < len(class_names) else str(c): round(float(hit[y == c].mean() * 100), 2)
                 for c in np.unique(y).tolist()}
    return {"accuracy": round(float(hit.mean() * 100), 2), "images": int(len(hit)), "per_class": per_class}


def probe_plan(classes: Sequence[int], per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """The fixed probe set: ``per_class`` (class, seed) pairs per class, class-major; the seeds are
    derived from ``seed`` alone, so every checkpoint of a run is scored on the same noise."""
    labels = [c for c in classes for _ in range(per_class)]
    return labels, [derive_seed(seed, "probe", c, i) for c in classes for i in range(per_class)]


def probe_score(sample: Callable[[Sequence[int], Sequence[int]], torch.Tensor], judge: Classifier,
                classes: Sequence[int], class_names: Sequence[str], *, per_class: int,
                seed: int, batch_size: int = 64, device: torch.device | str = "cpu") -> dict[str, Any]:
    """:func:`class_accuracy` of ``judge`` on the probe set (:func:`probe_plan`) drawn from a
    class-conditional generator: ``sample(labels, seeds)`` returns [-1, 1] images float (B, 3, H, W),
    sample ``b`` a function of ``(labels[b], seeds[b])`` alone."""
    labels, seeds = probe_plan(classes, per_class, seed)

    def batches():
        for i in range(0, len(labels), batch_size):
            y = labels[i: i + batch_size]
            yield SimpleNamespace(images=to_uint8(sample(y, seeds[i: i + batch_size])), labels=np.asarray(y))

    return class_accuracy(judge, batches(), class_names, batch_size=batch_size, device=device)


def projected_val_accuracy(model: Classifier, projected: np.ndarray, labels: np.ndarray,
                           *, batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Top-1 in percent (not rounded) of ``model`` on projected images uint8 (N, H, W, 3) with labels (N,)."""
    logits = model.logits(projected, batch_size=batch_size, device=device)
    return float((logits.argmax(1).numpy() == np.asarray(labels)).mean() * 100)


def alignment_warnings(diagnostics: Mapping[str, Any], *, min_synthetic_accuracy: float, max_val_drop: float,
                       settings: Mapping[str, str]) -> list[str]:
    """Messages for what ``diagnostics`` shows to be weak, each naming its stage and what to change.

    ``diagnostics``: ``{"diffusion_probe": {"accuracy", "target", "reached_target", "trained_steps",
    "selected_step"} or None, "synthetic": {"synth_generate": class_accuracy, "synth_align": class_accuracy},
    "projected_val": {"source_original": %, "source": %, "aligned": %} or None, "fallback": bool}``
    (the source model on the val originals and projections, the aligned model on the projections).
    ``settings``: the params settings (with their values) to name, by key ``generator`` (what makes the
    class-conditional samples better), ``projector`` (what makes the unconditional model better), ``projection`` (what keeps a
    projection's class) and ``alignment`` (what makes fine-tuning gentler).
    A synthetic set scored below ``min_synthetic_accuracy`` percent is weak; an aligned model more
    than ``max_val_drop`` points below the source model on the projected source val split is worse.
    """
    out = []
    probe = diagnostics.get("diffusion_probe")
    if probe and not probe["reached_target"]:
        out.append(
            f"diffusion_finetune: after {probe['trained_steps']} steps the source model recognises only "
            f"{probe['accuracy']:.1f}% of the diffusion model's probe samples as their class (target "
            f"{probe['target']:g}%, best at step {probe['selected_step']}): it has not learnt the classes yet. "
            f"Raise {settings['projector']}")
    syn = diagnostics.get("synthetic", {})
    gen, ali = syn.get("synth_generate"), syn.get("synth_align")
    if gen is not None and gen["accuracy"] < min_synthetic_accuracy:
        worst = sorted(gen["per_class"].items(), key=lambda kv: kv[1])[:3]
        out.append(
            f"synth_generate: the source model recognises only {gen['accuracy']:.1f}% of the synthetic images as "
            f"the class they were generated for (under {min_synthetic_accuracy:g}%; weakest: "
            + ", ".join(f"{c}: {a:.0f}%" for c, a in worst)
            + f"): the class-conditional generator is too weak. Raise {settings['generator']}")
    elif ali is not None and ali["accuracy"] < min_synthetic_accuracy:
        out.append(
            f"synth_align: after the projection the source model recognises only {ali['accuracy']:.1f}% of the "
            f"synthetic images (before: {gen['accuracy'] if gen else float('nan'):.1f}%): the projection "
            f"removes the class. Change {settings['projection']}")
    val = diagnostics.get("projected_val")
    if val is not None and val["source"] < min_synthetic_accuracy:
        out.append(
            f"projection: the source model recognises only {val['source']:.1f}% of the projected source val images "
            f"({val['source_original']:.1f}% of the originals): the projector removes the class, and DDA and SDA "
            f"cannot recover it. Raise {settings['projector']}, or change {settings['projection']}")
    if val is not None and val["aligned"] < val["source"] - max_val_drop:
        then = ("SDA falls back to DDA (the source model on the projections)" if diagnostics.get("fallback")
                else "SDA will likely lose to DDA (classifier_align.fallback is off)")
        out.append(
            f"classifier_align: on the projected source val split the aligned model is right on "
            f"{val['aligned']:.1f}% against the source model's {val['source']:.1f}% (more than {max_val_drop:g} "
            f"points worse): fine-tuning on the synthetic domain makes the classifier worse; {then}. "
            f"Raise {settings['generator']}, or lower {settings['alignment']}")
    return out
