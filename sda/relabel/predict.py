"""SDA's prediction for new images (docs/method.md): the source model on the original, the aligned
model on its DDA projection, SDA = argmax of the raw logit sum; with confidences and top-5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sda.config import Projection
from sda.method.projector import Projector
from sda.method.scoring import fell_back, sda_logits
from sda.models.classifiers import load_classifier

__all__ = ["SdaPredictor"]


class SdaPredictor:
    """The three models of a pipeline run, loaded once: ``models`` names the folders
    ``{"source": ..., "aligned": ..., "diffusion": ..., "projector": ..., "classes": classes.json}``
    (``projector``: synth_align's, read for ``projection.method: distilled``); ``projection`` is the
    pipeline's (``batch_size: auto`` is measured here, once)."""

    def __init__(self, models: dict[str, Path], projection: Projection, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.source = load_classifier(models["source"], self.device)
        self.aligned = load_classifier(models["aligned"], self.device)
        self.projector = Projector(models["projector"] if projection.method == "distilled" else models["diffusion"],
                                   projection, self.device)
        self.class_names: list[str] = json.loads(Path(models["classes"]).read_text())["names"]

    @torch.no_grad()
    def predict(self, images: np.ndarray, seed_of_chunk) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """uint8 (N, H, W, 3) images -> (predictions, projections uint8 (N, H, W, 3)).

        Projected in guidance batches of the projector's batch size; chunk ``c`` (its first index)
        draws its noise from ``seed_of_chunk(c)``. Predictions: ``label``, ``confidence`` (softmax of
        the SDA logit sum), ``top5`` / ``top5_confidence``, ``source_label`` / ``source_confidence``
        (the source model alone on the original), arrays of N (N x k for top-5).
        """
        pbs = self.projector.batch_size
        projected = np.concatenate([self.projector(images[c: c + pbs], seed_of_chunk(c))
                                    for c in range(0, len(images), pbs)])
        source_orig = self.source.logits(images, device=self.device)
        aligned_proj = self.aligned.logits(projected, device=self.device)
        p_sda = sda_logits(source_orig, aligned_proj, fallback=fell_back(self.aligned.config)).softmax(1)
        p_src = source_orig.softmax(1)
        top = p_sda.topk(min(5, p_sda.shape[1]), dim=1)
        return {
            "label": p_sda.argmax(1).numpy(), "confidence": p_sda.amax(1).numpy(),
            "top5": top.indices.numpy(), "top5_confidence": top.values.numpy(),
            "source_label": p_src.argmax(1).numpy(), "source_confidence": p_src.amax(1).numpy(),
        }, projected
