"""The model folders relabelling loads (``sda.relabel.predict.SdaPredictor``), tiny and random: two
``sda_cnn3`` classifiers of three classes, a 16 px class-conditional UNet, the class list."""

from __future__ import annotations

import json
from pathlib import Path

CLASS_NAMES = ["red", "green", "blue"]
CLASSIFIER_CONFIG = {"arch": "sda_cnn3", "num_classes": 3, "kwargs": {"width": 8}, "mean": [0.5] * 3,
                     "std": [0.5] * 3}


def save_tiny_classifier(path: Path, seed: int, **config) -> None:
    """A random ``sda_cnn3`` saved as the stages save classifiers; ``config`` adds to its config.json."""
    import torch

    from sda.models.classifiers import create_classifier, save_classifier

    torch.manual_seed(seed)
    save_classifier(create_classifier("sda_cnn3", 3, width=8), path, {**CLASSIFIER_CONFIG, **config})


def make_relabel_models(root: Path) -> dict[str, Path]:
    """Under ``root``: ``source/``, ``aligned/``, ``diffusion/`` and ``classes.json``; returns the
    ``models`` mapping of :class:`sda.relabel.predict.SdaPredictor` (``projector``: absent)."""
    import torch

    from sda.models.diffusion import DiffusionInfo, build_unet, save_diffusion
    from sda.models.schedulers import ddpm_scheduler

    save_tiny_classifier(root / "source", 0)
    save_tiny_classifier(root / "aligned", 1)
    torch.manual_seed(0)
    unet = build_unet(16, num_classes=3, block_out_channels=(8, 16), layers_per_block=1,
                      attention_levels=(False, True), norm_num_groups=4)
    save_diffusion(root / "diffusion", unet, ddpm_scheduler(), DiffusionInfo(num_classes=3, null_label=3))
    (root / "classes.json").write_text(json.dumps({"names": CLASS_NAMES}))
    return {"source": root / "source", "aligned": root / "aligned", "diffusion": root / "diffusion",
            "projector": root / "projector", "classes": root / "classes.json"}
