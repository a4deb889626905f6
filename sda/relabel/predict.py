"""SDA's prediction for new images (docs/method.md): the source model on the original, the aligned
model on its DDA projection, SDA = argmax of the raw logit sum; with confidences and top-5. Each image
is projected on its own (per-image guidance norm and noise), so relabelling is a stream-independent map:
an image gets the same label alone or among any others (docs/streams.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sda.config import GuardParams, Params, Projection, Streams
from sda.layout import MODELS, SourceClasses
from sda.method.projector import Projector
from sda.method.catalog import MethodContext, StreamInputs, build_method
from sda.method.scoring import fell_back, sda_logits
from sda.models.classifiers import load_classifier

__all__ = ["SdaPredictor", "models_read"]


def models_read(root: Path, params: Params) -> dict[str, Path]:
    """The model folders of the checkout at ``root`` that relabelling loads (``sda.layout.MODELS``; the
    distilled projector only with ``projection.method: distilled``)."""
    return {role: root / rel for role, rel in MODELS.items()
            if role != "projector" or params.projection.method == "distilled"}


class SdaPredictor:
    """The three models of a pipeline run, loaded once: ``models`` names the folders
    ``{"source": ..., "aligned": ..., "diffusion": ..., "projector": ..., "classes": classes.json}``
    (``projector``: synth_align's, read for ``projection.method: distilled``); ``projection`` is the
    pipeline's (``batch_size: auto`` is measured here, once). ``guard`` (``relabel.adapt: sda+bn``): each
    :meth:`predict` call is a batch on whose statistics SDA's two classifiers are adapted where the guard
    allows it (:mod:`sda.method.guarded`); None: frozen, an image's label its own."""

    def __init__(self, models: dict[str, Path], projection: Projection, device: torch.device | str = "cpu",
                 guard: GuardParams | None = None):
        self.device = torch.device(device)
        self.guard = guard
        self.adapted = 0  # images labelled by the adapted classifiers (relabel.adapt: sda+bn)
        self.source = load_classifier(models["source"], self.device)
        self.aligned = load_classifier(models["aligned"], self.device)
        # each image on its own: its norm and its noise (a label never depends on what else arrived)
        projection = projection.model_copy(update={"per_sample_norm": True})
        self.projector = Projector(models["projector"] if projection.method == "distilled" else models["diffusion"],
                                   projection, self.device)
        self.class_names: list[str] = SourceClasses.read(models["classes"]).names

    @torch.no_grad()
    def predict(self, images: np.ndarray, seeds: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """uint8 (N, H, W, 3) images -> (predictions, projections uint8 (N, H, W, 3)).

        Projected in guidance batches of the projector's batch size, each image with its own guidance
        norm (``per_sample_norm``, whatever the pipeline's projection params say) and its own noise, drawn
        from ``seeds[i]``: an image's label and confidence do not depend on the other images of the call
        (the relabel job seeds an image by its content). Predictions: ``label``, ``confidence`` (softmax of
        the SDA logit sum), ``top5`` / ``top5_confidence``, ``source_label`` / ``source_confidence``
        (the source model alone on the original), arrays of N (N x k for top-5); ``features`` (N, D): the
        source model's penultimate features of the originals (the monitor's input test).
        """
        pbs = self.projector.batch_size
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images: one each")
        projected = np.concatenate([self.projector(images[c: c + pbs], seeds[c: c + pbs])
                                    for c in range(0, len(images), pbs)])
        source_orig, features = self.source.logits_and_features(images, device=self.device)
        aligned_proj = self.aligned.logits(projected, device=self.device)
        fallback = fell_back(self.aligned.config)
        logits = sda_logits(source_orig, aligned_proj, fallback=fallback)
        if self.guard is not None and not fallback:
            ctx = MethodContext(source=self.source, aligned=self.aligned, streams=Streams(guard=self.guard), params=None,
                                device=self.device, seed=0, num_classes=logits.shape[1], guard_window=len(images))
            combo = build_method("sda+bn", ctx)
            logits = combo(StreamInputs(images, projected, [""] * len(images),
                                        {"source_orig": source_orig, "aligned_proj": aligned_proj}))
            self.adapted += combo.decisions["adapted"]
        p_sda = logits.softmax(1)
        p_src = source_orig.softmax(1)
        top = p_sda.topk(min(5, p_sda.shape[1]), dim=1)
        return {
            "label": p_sda.argmax(1).numpy(), "confidence": p_sda.amax(1).numpy(),
            "top5": top.indices.numpy(), "top5_confidence": top.values.numpy(),
            "source_label": p_src.argmax(1).numpy(), "source_confidence": p_src.amax(1).numpy(),
            "features": features.float().numpy(),
        }, projected
