"""The model folders relabelling loads (``sda.relabel.predict.SdaPredictor``), tiny and random: two
``sda_cnn3`` classifiers of three classes, a 16 px class-conditional UNet, the class list."""

from __future__ import annotations

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
    from sda.io.atomic import atomic_write_json
    from sda.layout import SourceClasses
    from sda.models.diffusion import DiffusionInfo, save_diffusion
    from sda.models.schedulers import ddpm_scheduler
    from tests.support.tiny_models import tiny_unet

    save_tiny_classifier(root / "source", 0)
    save_tiny_classifier(root / "aligned", 1)
    save_diffusion(root / "diffusion", tiny_unet(), ddpm_scheduler(), DiffusionInfo(num_classes=3, null_label=3))
    atomic_write_json(SourceClasses.path(root), SourceClasses(CLASS_NAMES).as_dict())
    return {"source": root / "source", "aligned": root / "aligned", "diffusion": root / "diffusion",
            "projector": root / "projector", "classes": SourceClasses.path(root)}
