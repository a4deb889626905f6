"""Every method on every target stream: what the ``streams`` stage measures (docs/streams.md).

Two kinds of method:

- *input adaptation* (``source``, ``dda``, ``dda_ens``, ``sda``, ``diffpure``) and ``memo``: both models
  frozen (MEMO resets after each image), so an image's prediction is a function of that image alone. Each
  is computed once per image and read by every stream; the projections are ``target_project``'s (see
  :func:`batch_coupling` for what the reference's batch-wide guidance norm changes).
- *model adaptation* (``bn``, ``tent``, ``sar``) and the guarded combinations (``sda+bn``, ``sda+tent``,
  :mod:`sda.method.guarded`): state carried along the stream; each stream runs them from the source
  weights, reset where the protocol says (:func:`sda.method.streams.stream_batches`).

Every entry records the images it was measured on (``mean``: the stream's images; ``mean_common``: the
images every stream evaluated, on which the spread over streams is taken), and its cost per image: UNet
forward-equivalents (a forward 1, an input-gradient backward 2) and classifier forwards / backwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sda.config import Projection, Streams
from sda.io.images import to_uint8, to_unit_range
from sda.io.shards import iter_samples
from sda.method.bn import BatchNormAdapter
from sda.method.diffpure import diffpure_depth, purify
from sda.method.guarded import Guard, GuardedSda, NormInputProfile
from sda.method.memo import Memo
from sda.method.norm_layers import ClassifierCost
from sda.method.sar import Sar
from sda.method.scoring import method_predictions
from sda.method.streams import StreamBatch, stream_batches
from sda.method.tent import Tent
from sda.models.classifiers import Classifier
from sda.runtime import derive_seed

__all__ = ["FROZEN", "TargetSet", "compare_streams", "load_target_set", "subset", "summarise_methods"]

log = logging.getLogger("sda.streams")

FROZEN = ("source", "dda", "dda_ens", "sda")  # from the three frozen logit tensors (sda.method.scoring)
ADAPTIVE = ("bn", "tent", "sar", "sda+bn", "sda+tent")
CLASSIFIER_PASSES = {"source": 1, "dda": 1, "dda_ens": 2, "sda": 2}  # forwards per image of the frozen methods


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


def _logits(clf: Classifier, images: np.ndarray, device: torch.device) -> torch.Tensor:
    return clf.logits(images, device=device)


@dataclass
class MethodRun:
    """One method's predictions: ``predictions`` int (N,) (-1 where not run), and its cost."""

    predictions: np.ndarray
    cost: ClassifierCost = field(default_factory=ClassifierCost)
    unet_fe: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_adaptive(method: str, ts: TargetSet, batches: list[StreamBatch], make: Callable[[], Any],
                 frozen: Mapping[str, torch.Tensor], desc: str) -> MethodRun:
    """Run a model-adaptation method (a fresh one from ``make()``) along ``batches``."""
    adapter = make()
    pred = np.full(len(ts.labels), -1, dtype=np.int64)
    for b in tqdm(batches, desc=desc, leave=False, mininterval=5):
        if b.reset:
            adapter.reset()
        idx = b.indices
        if isinstance(adapter, GuardedSda):
            logits = adapter(ts.originals[idx], ts.projections[idx], frozen["source_orig"][idx],
                             frozen["aligned_proj"][idx])
        else:
            logits = adapter(ts.originals[idx])
        pred[idx] = logits.argmax(1).numpy()
    run = MethodRun(pred)
    if isinstance(adapter, GuardedSda):
        for a in (adapter.source, adapter.aligned, adapter.profile):
            if a is None:
                continue
            run.cost.forwards += a.cost.forwards
            run.cost.backwards += a.cost.backwards
        run.extra["guard"] = {k: int(v) for k, v in sorted(adapter.decisions.items())}
    else:
        run.cost = adapter.cost
    if isinstance(adapter, Sar):
        run.extra["model_resets"] = adapter.resets
    return run


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


def compare_streams(ts: TargetSet, source: Classifier, aligned: Classifier, cfg: Streams, *, seed: int,
                    device: torch.device, fallback: bool, projection_fe: float,
                    diffusion: tuple[torch.nn.Module, Any, int | None, int] | None) -> dict[str, Any]:
    """Run ``cfg.methods`` on ``cfg.streams`` over ``ts``; returns ``{"streams": {stream: {method: {mean,
    domains, images_per_domain, unet_forward_equivalents, classifier_forwards, classifier_backwards, ...}}}}``.
    ``diffusion``: (unet, scheduler, null label, respacing) for ``diffpure`` (None: not run);
    ``projection_fe``: ``target_project``'s UNet forward-equivalents per image."""
    methods = list(cfg.methods)
    num_classes = int(source.config.get("num_classes") or 0)
    frozen = {"source_orig": _logits(source, ts.originals, device),
              "source_proj": _logits(source, ts.projections, device),
              "aligned_proj": _logits(aligned, ts.projections, device)}
    if fallback:  # classifier_align rejected its model: SDA decides as DDA (sda.method.scoring.fell_back)
        frozen["aligned_proj"] = frozen["source_proj"]
    preds = method_predictions(frozen["source_orig"], frozen["source_proj"], frozen["aligned_proj"], fallback=fallback)
    n = len(ts.labels)
    independent: dict[str, MethodRun] = {}
    for m in FROZEN:
        if m in methods:
            independent[m] = MethodRun(preds[m].numpy(), ClassifierCost(n * CLASSIFIER_PASSES[m]),
                                       0.0 if m == "source" else projection_fe)
    if "diffpure" in methods and diffusion is not None:
        unet, sched, null_label, respacing = diffusion
        N = diffpure_depth(cfg.diffpure_t, sched.config.num_train_timesteps, respacing)
        pure = np.zeros_like(ts.originals)
        for c in tqdm(range(0, n, 64), desc="diffpure", leave=False, mininterval=5):
            x = to_unit_range(ts.originals[c: c + 64], device)
            labels = None if null_label is None else torch.full((len(x),), null_label, dtype=torch.long)
            pure[c: c + 64] = to_uint8(purify(unet, sched, x, ts.keys[c: c + 64], N=N, respacing=respacing,
                                              seed=derive_seed(seed, "diffpure"), class_labels=labels))
        independent["diffpure"] = MethodRun(_logits(source, pure, device).argmax(1).numpy(), ClassifierCost(n), float(N),
                                            {"respaced_steps": N, "t": round(N / (respacing - 1), 3)})
    if "memo" in methods:
        memo = Memo(source, lr=cfg.memo.lr, views=cfg.memo.views, seed=seed, device=device)
        idx = subset(ts, cfg.memo.images_per_domain)
        pred = np.full(n, -1, dtype=np.int64)
        for c in tqdm(range(0, len(idx), 32), desc="memo", leave=False, mininterval=5):
            part = idx[c: c + 32]
            pred[part] = memo(ts.originals[part], [ts.keys[i] for i in part]).argmax(1).numpy()
        run = MethodRun(pred, memo.cost)
        run.extra["images_adapted"] = int(len(idx))
        independent["memo"] = run

    def make(method: str, window: int) -> Callable[[], Any]:
        if method == "bn":
            return lambda: BatchNormAdapter(source, window=window, device=device)
        if method == "tent":
            return lambda: Tent(source, lr=cfg.tent.lr, momentum=cfg.tent.momentum, window=window, device=device)
        if method == "sar":
            return lambda: Sar(source, lr=cfg.sar.lr, momentum=cfg.sar.momentum, window=window, rho=cfg.sar.rho,
                               margin_fraction=cfg.sar.margin, reset_below=cfg.sar.reset_below, device=device)
        inner = BatchNormAdapter if method == "sda+bn" else Tent
        kw = {} if inner is BatchNormAdapter else {"lr": cfg.tent.lr, "momentum": cfg.tent.momentum}
        g = cfg.guard
        return lambda: GuardedSda(inner(source, window=window, device=device, **kw),
                                  inner(aligned, window=window, device=device, **kw),
                                  Guard(num_classes=num_classes, window=cfg.window or 64, min_images=g.min_images,
                                        min_class_fraction=g.min_class_fraction, max_entropy_rise=g.max_entropy_rise,
                                        max_spread_gap=g.max_spread_gap),
                                  None if g.max_spread_gap is None else NormInputProfile(source, device))

    # the images every stream evaluated (the per-domain draws are nested: the smallest one)
    k_common = min((spec.images_per_domain or max(ts.sizes.values())) for spec in cfg.streams.values())
    common = np.zeros(n, dtype=bool)
    common[subset(ts, k_common)] = True
    results: dict[str, Any] = {}
    for name, spec in cfg.streams.items():
        images = subset(ts, spec.images_per_domain)
        view = TargetSet({d: min(k, spec.images_per_domain or k) for d, k in ts.sizes.items()},
                         [ts.keys[i] for i in images], ts.originals[images], ts.projections[images], ts.labels[images])
        batches = stream_batches(view.sizes, view.labels, order=spec.order, batch_size=spec.batch_size, seed=seed,
                                 name=name, delta=spec.delta)
        window = cfg.window if spec.batch_size < cfg.sliding_below else 0
        vfrozen = {k: v[images] for k, v in frozen.items()}
        row: dict[str, Any] = {}
        for m in methods:
            if m in independent:
                r = independent[m]
                entry = _accuracy(r.predictions[images], view, np.arange(len(images)))
                per_image = r.cost.per_image(n if m != "memo" else r.extra["images_adapted"])
                row[m] = {**entry, "mean_common": _accuracy(r.predictions[images], view,
                                                            np.flatnonzero(common[images]))["mean"],
                          "unet_forward_equivalents": r.unet_fe, **per_image, **r.extra}
                if m == "memo":  # the source model on the images MEMO adapted to, for comparison
                    same = np.where(r.predictions >= 0, preds["source"].numpy(), -1)
                    row[m]["source_same_images"] = _accuracy(same[images], view, np.arange(len(images)))["mean"]
            elif m in ADAPTIVE:
                r = run_adaptive(m, view, batches, make(m, window), vfrozen, desc=f"{name}: {m}")
                entry = _accuracy(r.predictions, view, np.arange(len(images)))
                fe = projection_fe if m.startswith("sda+") else 0.0
                row[m] = {**entry, "mean_common": _accuracy(r.predictions, view, np.flatnonzero(common[images]))["mean"],
                          "unet_forward_equivalents": fe, **r.cost.per_image(len(images)), **r.extra}
                if m.startswith("sda+"):  # the frozen models' logits the guard and the fallback use
                    row[m]["classifier_forwards"] = round(row[m]["classifier_forwards"] + 2, 3)
        results[name] = row
        log.info("stream %s (%s, batch %d%s): %s", name, spec.order, spec.batch_size,
                 "" if spec.delta is None else f", delta {spec.delta}",
                 ", ".join(f"{m} {v['mean']:.1f}" for m, v in row.items()))
    return {"streams": results, "common_images_per_domain": int(k_common)}


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
