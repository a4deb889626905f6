"""Classifiers: a name-based factory over ``timm.create_model``, training, logits, save / load.

The embedded domain's small CNN is registered in timm's registry as ``sda_cnn3``, so the embedded
and ImageNet profiles go through the same ``timm.create_model`` call. Every model folder holds
``model.safetensors`` and ``config.json`` (architecture, kwargs, class count, input normalisation),
so it can be reloaded without the params that made it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models import register_model
from tqdm.auto import tqdm

from sda.shards import atomic_dir, atomic_write_json

__all__ = [
    "SmallCNN",
    "create_classifier",
    "load_classifier",
    "predict_logits",
    "save_classifier",
    "to_model_input",
    "train_classifier",
]


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU x2, max-pool) and a linear head.

    Input (B, in_chans, H, W) normalised images; output logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.1):
        super().__init__()
        chans = [in_chans, width, 2 * width, 4 * width]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.num_classes = num_classes
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                  nn.Linear(chans[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def sda_cnn3(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """timm entry point for :class:`SmallCNN` (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("sda_cnn3 has no pretrained weights; train it with the source_model stage")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return SmallCNN(**kwargs)


def create_classifier(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, num_classes=...)``; unknown names fail with the close matches."""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:10]
        raise ValueError(f"unknown classifier architecture {arch!r}; similar timm names: {close}")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def to_model_input(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> normalised float (B, 3, H, W)."""
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    else:
        x = (images.to(device).float() + 1.0) / 2.0
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    label_smoothing: float = 0.0,
    device: torch.device | str = "cpu",
    desc: str = "train",
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> list[dict[str, float]]:
    """Train in place with AdamW and a cosine schedule; returns per-epoch ``{epoch, loss, acc}``.

    ``images`` uint8 (N, H, W, 3), ``labels`` int (N,). Shuffling is seeded by ``seed``.
    """
    model.to(device).train()
    x_all = to_model_input(images, mean, std, device)
    y_all = torch.as_tensor(labels, dtype=torch.long, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_all) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        perm = torch.randperm(len(x_all), generator=gen).to(device)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i: i + batch_size]
            logits = model(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_all[idx]).sum())
            total += len(idx)
        rec = {"epoch": epoch + 1, "loss": loss_sum / total, "acc": correct / total}
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}", refresh=False)
        if on_epoch:
            on_epoch(epoch + 1, rec["loss"], rec["acc"])
    model.eval()
    return history


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits float32 (N, num_classes) on the CPU for uint8 (N, H, W, 3) or [-1, 1] (N, 3, H, W)."""
    model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(to_model_input(images[i: i + batch_size], mean, std, device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def save_classifier(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` + ``config.json`` atomically. ``config`` needs ``arch``,
    ``num_classes``, ``kwargs``, ``mean``, ``std``; anything else (history, seeds) is kept."""
    for k in ("arch", "num_classes", "kwargs", "mean", "std"):
        if k not in config:
            raise ValueError(f"classifier config needs {k!r}")
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", config)


def load_classifier(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Inverse of :func:`save_classifier`: ``(model in eval mode, config)``."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: run the stage that trains this classifier first")
    config = json.loads(cfg_path.read_text())
    model = create_classifier(config["arch"], config["num_classes"], **config["kwargs"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.to(device).eval(), config
