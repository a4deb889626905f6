"""Every method on every target stream: what the ``streams`` stage measures (docs/streams.md).

The methods are the registry's (:mod:`sda.method.registry`), all run through one loop
(:func:`run_method`), reading the frozen models' outputs computed once (``frozen_outputs``):

- a *per-image* method (``source``, ``dda``, ``dda_ens``, ``sda``, ``diffpure``, ``memo``: an image's
  prediction is a function of that image alone) is run once over the images and read by every stream;
  the projections are ``target_project``'s (see :func:`batch_coupling` for what the reference's batch-wide
  guidance norm changes);
- every other method (the model-adaptation baselines, LAME, SDA's combinations) carries state along the
  stream or reads its batch: each stream runs it from the source state, reset where the protocol says
  (:func:`sda.method.streams.stream_batches`); one with ``images_per_domain`` (CoTTA) on that seeded subset
  of each domain, in the stream's order.

Every entry records the images it was measured on (``mean``: the stream's images; ``mean_common``: the
images every stream evaluated, on which the spread over streams is taken), and its cost per image: UNet
forward-equivalents (a forward 1, an input-gradient backward 2) and classifier forwards / backwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sda.config import Projection, Streams
from sda.io.shards import iter_samples
from sda.method.baselines.base import ClassifierCost
from sda.method.catalog import (MethodContext, StreamInputs, build_method, frozen_outputs, resolve_methods)
from sda.method.streams import StreamBatch, stream_batches
from sda.models.classifiers import Classifier
from sda.runtime import derive_seed

__all__ = ["TargetSet", "compare_streams", "load_target_set", "run_method", "subset", "summarise_methods"]

log = logging.getLogger("sda.streams")

@dataclass
class TargetSet:
    """The evaluated target images in memory: ``originals`` / ``projections`` uint8 (N, H, W, 3) (the
    projection ``target_project`` wrote), ``labels`` int64 (N,), ``keys`` (N,); the domains' images are
    consecutive runs, ``sizes[domain]`` long, each run in a seeded order (its first k: a seeded subset)."""

    sizes: dict[str, int]
    keys: list[str]
    originals: np.ndarray
    projections: np.ndarray
    labels: np.ndarray

    @property
    def domain_index(self) -> np.ndarray:
        """int (N,): each image's domain, as a position in ``sizes``."""
        return np.repeat(np.arange(len(self.sizes)), list(self.sizes.values()))


def load_target_set(target_dir: Path, project_dir: Path, domains: Sequence[str], *, seed: int,
                    images_per_domain: int | None = None, ids: set[str] | None = None) -> TargetSet:
    """Read each domain's originals and projections (paired by key) from the shard sets
    ``target_dir/<d>`` and ``project_dir/<d>``; keep the keys in ``ids`` (None: all), shuffle each domain
    by ``(seed, domain)`` and keep its first ``images_per_domain`` (None: all)."""
    sizes, keys, orig, proj, labels = {}, [], [], [], []
    for d in domains:
        pairs = [(a, b) for a, b in zip(iter_samples(target_dir / d), iter_samples(project_dir / d))]
        for a, b in pairs:
            if a.key != b.key:
                raise ValueError(f"{project_dir / d}: key {b.key!r} where {target_dir / d} has {a.key!r}: "
                                 "run target_project again (dvc repro target_project)")
        if ids is not None:
            pairs = [p for p in pairs if p[0].key in ids]
        if not pairs:
            raise ValueError(f"{target_dir / d}: no image to evaluate (streams.image_ids keeps none of its keys?)")
        order = np.random.default_rng(derive_seed(seed, "streams", d)).permutation(len(pairs))
        order = order[:images_per_domain] if images_per_domain else order
        sizes[d] = len(order)
        for i in order:
            a, b = pairs[i]
            keys.append(f"{d}/{a.key}")
            orig.append(a.image)
            proj.append(b.image)
            labels.append(a.label)
    return TargetSet(sizes, keys, np.stack(orig), np.stack(proj), np.asarray(labels, dtype=np.int64))


def subset(ts: TargetSet, images_per_domain: int | None) -> np.ndarray:
    """Global indices of the first ``images_per_domain`` images of each domain (None: all), ascending."""
    starts = np.cumsum([0, *ts.sizes.values()])
    k = images_per_domain or max(ts.sizes.values())
    return np.concatenate([np.arange(a, min(b, a + k)) for a, b in zip(starts[:-1], starts[1:])])


@dataclass
class MethodRun:
    """One method's predictions: ``predictions`` int (N,) (-1 where not run), its cost and what it reports."""

    predictions: np.ndarray
    cost: ClassifierCost = field(default_factory=ClassifierCost)
    unet_fe: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    images: int = 0  # images it predicted


def _inputs(ts: TargetSet, idx: np.ndarray, frozen: Mapping[str, torch.Tensor]) -> StreamInputs:
    return StreamInputs(ts.originals[idx], ts.projections[idx], [ts.keys[i] for i in idx],
                        {k: v[idx] for k, v in frozen.items()})


def run_method(adapter, ts: TargetSet, batches: Sequence[StreamBatch], frozen: Mapping[str, torch.Tensor],
               desc: str) -> MethodRun:
    """Run an adapter (sda.method.registry) along ``batches`` of ``ts``, reset where a batch says so."""
    pred = np.full(len(ts.labels), -1, dtype=np.int64)
    seen = 0
    t0 = time.perf_counter()
    for b in tqdm(batches, desc=desc, leave=False, mininterval=5):
        if b.reset:
            adapter.reset()
        pred[b.indices] = adapter(_inputs(ts, b.indices, frozen)).argmax(1).numpy()
        seen += len(b.indices)
    log.debug("%s: %.1f s", desc, time.perf_counter() - t0)  # the log only: outs hold no timing
    return MethodRun(pred, adapter.cost, float(adapter.unet_forward_equivalents), adapter.extra(), seen)


def _accuracy(pred: np.ndarray, ts: TargetSet, images: np.ndarray) -> dict[str, Any]:
    """Top-1 % per domain and their mean over ``images`` (global indices) where ``pred`` is set."""
    dom = ts.domain_index
    names = list(ts.sizes)
    use = images[pred[images] >= 0]
    per = {}
    for j, d in enumerate(names):
        sel = use[dom[use] == j]
        if len(sel):
            per[d] = round(float((pred[sel] == ts.labels[sel]).mean() * 100), 2)
    return {"mean": round(float(np.mean(list(per.values()))), 2), "domains": per,
            "images_per_domain": int(len(use) // max(len(per), 1))}


def batch_coupling(ts: TargetSet, projector: Callable[..., np.ndarray], projection: Projection,
                   source: Classifier, aligned: Classifier, device: torch.device, *, images: int,
                   seed: int) -> dict[str, Any]:
    """What the reference's batch-wide guidance norm changes: ``images`` target images (a seeded draw
    over all domains) are projected twice, grouped by domain (as ``target_project`` batches them) and
    in batches mixed across domains, each image with its own noise in both, once with the reference's
    norm and once with ``per_sample_norm``; SDA's labels of the two compositions are compared.
    ``projector(images uint8, projection, generators) -> uint8``."""
    rng = np.random.default_rng(derive_seed(seed, "coupling"))
    pick = np.sort(rng.choice(len(ts.labels), size=min(images, len(ts.labels)), replace=False))
    mixed = rng.permutation(pick)
    bs = int(projection.batch_size)
    out: dict[str, Any] = {"images": int(len(pick)), "batch_size": bs}
    src = source.logits(ts.originals[pick], device=device)
    for name, per_sample in (("reference_norm", False), ("per_sample_norm", True)):
        proj = projection.model_copy(update={"per_sample_norm": per_sample})
        labels = {}
        for comp, order in (("by_domain", pick), ("mixed", mixed)):
            y = np.zeros_like(ts.originals[pick])
            where = {int(g): i for i, g in enumerate(pick)}
            for c in range(0, len(order), bs):
                idx = order[c: c + bs]
                gens = [torch.Generator(device=device).manual_seed(derive_seed(seed, "coupling", ts.keys[i]))
                        for i in idx]
                y[[where[int(i)] for i in idx]] = projector(ts.originals[idx], proj, gens)
            labels[comp] = (src + aligned.logits(y, device=device)).argmax(1).numpy()
        acc = {c: round(float((v == ts.labels[pick]).mean() * 100), 2) for c, v in labels.items()}
        out[name] = {"labels_changed_pct": round(float((labels["by_domain"] != labels["mixed"]).mean() * 100), 2),
                     "sda_by_domain": acc["by_domain"], "sda_mixed": acc["mixed"]}
    return out


def _view(ts: TargetSet, images: np.ndarray) -> TargetSet:
    """The images ``images`` (global indices, ascending, whole runs of each domain's first k) of ``ts``."""
    per = np.bincount(ts.domain_index[images], minlength=len(ts.sizes))
    return TargetSet({d: int(k) for d, k in zip(ts.sizes, per)}, [ts.keys[i] for i in images], ts.originals[images],
                     ts.projections[images], ts.labels[images])


def compare_streams(ts: TargetSet, source: Classifier, aligned: Classifier, cfg: Streams, *, seed: int,
                    device: torch.device, fallback: bool, projection_fe: float,
                    diffusion: tuple[torch.nn.Module, Any, int | None, int] | None,
                    source_split: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Run the registered methods ``cfg.methods`` names on ``cfg.streams`` over ``ts``; returns ``{"streams":
    {stream: {method: {mean, domains, images_per_domain, unet_forward_equivalents, classifier_forwards,
    classifier_backwards, ...}}}}``. ``diffusion``: (unet, scheduler, null label, respacing) for ``diffpure``;
    ``projection_fe``: ``target_project``'s UNet forward-equivalents per image; ``source_split``: the source
    data by split, for what a method needs of it (EATA's Fisher information)."""
    methods = resolve_methods(cfg)
    n = len(ts.labels)
    frozen = frozen_outputs(source, aligned, ts.originals, ts.projections, device, fallback=fallback,
                            profiles=cfg.guard.max_spread_gap is not None and any(m.kind == "combined" for m in methods))
    base = MethodContext(source=source, aligned=aligned, streams=cfg, params=None, device=device, seed=seed,
                         num_classes=int(source.config.get("num_classes") or frozen["source_orig"].shape[1]),
                         fallback=fallback, projection_fe=projection_fe, diffusion=diffusion, source_split=source_split)

    def build(m, **kw):  # every method gets the stage's seed and derives its own draws from it
        return build_method(m.name, replace(base, **kw))

    # per-image methods: once over their images, in index order, read by every stream
    independent: dict[str, MethodRun] = {}
    for m in methods:
        if m.per_image:
            section = cfg.method_params(m.section_name) if m.section_name else None
            idx = subset(ts, m.images_per_domain(section) if m.images_per_domain else None)
            batches = [StreamBatch(idx[c: c + 64], reset=(c == 0)) for c in range(0, len(idx), 64)]
            independent[m.name] = run_method(build(m), ts, batches, frozen, desc=m.name)

    # the images every stream evaluated (the per-domain draws are nested: the smallest one)
    k_common = min((spec.images_per_domain or max(ts.sizes.values())) for spec in cfg.streams.values())
    common = np.zeros(n, dtype=bool)
    common[subset(ts, k_common)] = True
    sda_pred = independent["sda"].predictions if "sda" in independent else None
    source_pred = frozen["source_orig"].argmax(1).numpy()
    results: dict[str, Any] = {}
    for name, spec in cfg.streams.items():
        images = subset(ts, spec.images_per_domain)
        view = _view(ts, images)
        vfrozen = {k: v[images] for k, v in frozen.items()}
        window = cfg.window if spec.batch_size < cfg.sliding_below else 0
        row: dict[str, Any] = {}
        for m in methods:
            if m.per_image:
                r = independent[m.name]
                pred = r.predictions[images]
            else:
                section = cfg.method_params(m.section_name) if m.section_name else None
                k = m.images_per_domain(section) if m.images_per_domain else None
                on = subset(view, k) if k else np.arange(len(images))
                sub = _view(view, on) if k else view
                batches = stream_batches(sub.sizes, sub.labels, order=spec.order, batch_size=spec.batch_size,
                                         seed=seed, name=name, delta=spec.delta)
                r = run_method(build(m, window=window, batch_size=spec.batch_size), sub, batches,
                               {kk: v[on] for kk, v in vfrozen.items()}, desc=f"{name}: {m.name}")
                pred = np.full(len(images), -1, dtype=np.int64)
                pred[on] = r.predictions
            entry = _accuracy(pred, view, np.arange(len(images)))
            row[m.name] = {**entry, "mean_common": _accuracy(pred, view, np.flatnonzero(common[images]))["mean"],
                           "unet_forward_equivalents": r.unet_fe, **r.cost.per_image(r.images), **r.extra}
            if (pred < 0).any():  # on a subset: the source model and SDA on the same images, for comparison
                row[m.name]["images_adapted"] = int((pred >= 0).sum())
                same = np.where(pred >= 0, source_pred[images], -1)
                row[m.name]["source_same_images"] = _accuracy(same, view, np.arange(len(images)))["mean"]
                if sda_pred is not None:
                    same = np.where(pred >= 0, sda_pred[images], -1)
                    row[m.name]["sda_same_images"] = _accuracy(same, view, np.arange(len(images)))["mean"]
        results[name] = row
        log.info("stream %s (%s, batch %d%s): %s", name, spec.order, spec.batch_size,
                 "" if spec.delta is None else f", delta {spec.delta}",
                 ", ".join(f"{m} {v['mean']:.1f}" for m, v in row.items()))
    return {"streams": results, "common_images_per_domain": int(k_common),
            "methods_info": {m.name: {"kind": m.kind, "description": m.description, "reference": m.reference}
                             for m in methods}}


def summarise_methods(streams: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per method over the streams, each on the images every stream evaluated (``mean_common``: a stream
    on a subset would otherwise differ by which images it drew, not by its order): ``worst_stream``,
    ``worst``, ``best``, ``spread`` (best - worst, points), and its cost per image (the most any stream needed)."""
    out: dict[str, Any] = {}
    methods = list(dict.fromkeys(m for row in streams.values() for m in row))
    for m in methods:
        means = {s: row[m]["mean_common"] for s, row in streams.items() if m in row}
        worst = min(means, key=means.get)
        cost = {k: max(row[m][k] for row in streams.values() if m in row)
                for k in ("unet_forward_equivalents", "classifier_forwards", "classifier_backwards")}
        out[m] = {"worst_stream": worst, "worst": means[worst], "best": max(means.values()),
                  "spread": round(max(means.values()) - means[worst], 2), "cost_per_image": cost}
    return out
