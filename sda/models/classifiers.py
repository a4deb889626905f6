"""Classifiers: a name-based factory over ``timm.create_model``, training, logits, save / load.

The embedded domain's small CNN is registered in timm's registry as ``sda_cnn3``, so the embedded
and ImageNet profiles go through the same ``timm.create_model`` call. Every model folder holds
``model.safetensors`` and ``config.json`` (architecture, kwargs, class count, input normalisation),
so it can be reloaded without the params that made it.
"""

from __future__ import annotations

from dataclasses import dataclass

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from safetensors.torch import load_file, save_file
from timm.models import load_state_dict, register_model
from timm.optim import create_optimizer_v2
from tqdm.auto import tqdm

from sda.io.atomic import atomic_dir, atomic_write_json

__all__ = [
    "PAPER_RECIPES",
    "SmallCNN",
    "create_classifier",
    "final_linear",
    "fit_classifier",
    "input_spec",
    "load_pretrained_classifier",
    "paper_recipe",
    "Classifier",
    "load_classifier",
    "predict_logits",
    "save_classifier",
    "to_model_input",
    "train_classifier",
]

# a classifier folder (save_classifier / load_classifier): its weights and its config (arch, classes, preprocessing)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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


# The SDA paper's fine-tuning recipes (docs/method.md), per backbone family. The paper's batch is
# 64 per GPU x 8 GPUs; one process here steps on batch_size images (use gradient-equivalent lr
# scaling if you change it). docs/method.md states no AdamW learning rate for Swin / ConvNeXt: 1e-5 is ours.
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "resnet": {"optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64,
               "epochs": 15, "grad_clip": None},
    "swin": {"optimizer": "adamw", "lr": 1e-5, "momentum": 0.9, "weight_decay": 0.05, "batch_size": 64,
             "epochs": 15, "grad_clip": 5.0},
    "convnext": {"optimizer": "adamw", "lr": 1e-5, "momentum": 0.9, "weight_decay": 0.05, "batch_size": 64,
                 "epochs": 15, "grad_clip": 5.0},
}


def paper_recipe(arch: str) -> dict[str, Any]:
    """The recipe of ``arch``'s family (``resnet50`` -> ``resnet``); unknown families are an error."""
    for family, recipe in PAPER_RECIPES.items():
        if arch.startswith(family):
            return dict(recipe)
    raise ValueError(f"classifier_align.recipe 'paper' has no recipe for {arch!r} (known families: "
                     f"{sorted(PAPER_RECIPES)}); set classifier_align.recipe: custom and its fields")


def input_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing keyword arguments of a saved classifier's ``config.json``."""
    return {"mean": config["mean"], "std": config["std"], "resize": config.get("resize"), "crop": config.get("crop")}


def to_model_input(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str = "cpu", resize: int | None = None,
                   crop: int | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> normalised float (B, 3, h, w).

    ``resize``: shorter side to this many pixels, bicubic with antialias (a no-op when it already
    is); ``crop``: then a centre crop (the reference's evaluation: 256 then 224, ImageNet mean/std).
    """
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    else:
        x = (images.to(device).float() + 1.0) / 2.0
    if resize is not None and min(x.shape[-2:]) != resize:
        x = TF.resize(x, resize, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    if crop is not None:
        x = TF.center_crop(x, [crop, crop])
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    **kw: Any,
) -> list[dict[str, float]]:
    """Train in place on arrays: ``images`` uint8 (N, H, W, 3) stay on the CPU, ``labels`` int (N,);
    each epoch a permutation seeded by ``seed``. See :func:`fit_classifier` for ``kw``."""
    gen = torch.Generator().manual_seed(seed)

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        perm = torch.randperm(len(images), generator=gen).numpy()
        for i in range(0, len(perm), batch_size):
            idx = perm[i: i + batch_size]
            yield images[idx], labels[idx]

    steps = [math.ceil(len(images) / batch_size)] * epochs
    return fit_classifier(model, epoch_batches, steps, **kw)


def fit_classifier(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
    steps_per_epoch: Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    lr: float,
    weight_decay: float,
    label_smoothing: float = 0.0,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    grad_clip: float | None = None,
    resize: int | None = None,
    crop: int | None = None,
    device: torch.device | str = "cpu",
    desc: str = "train",
    validate: Callable[[nn.Module], float] | None = None,
    keep_best: bool = True,
) -> list[dict[str, float]]:
    """Train in place (AdamW or SGD with momentum, cosine schedule per step, optional gradient
    clipping); returns per-epoch ``{epoch, loss, acc}`` (``val`` too with ``validate``).

    ``epoch_batches(e)`` yields the batches of epoch ``e`` (0-based) as (uint8 (B, H, W, 3), int
    (B,)) pairs, from arrays (:func:`train_classifier`) or a stream (:class:`sda.io.streaming.ShardStream`);
    they are preprocessed on ``device`` (:func:`to_model_input` with ``resize`` / ``crop``).
    ``steps_per_epoch[e]`` is how many batches epoch ``e`` has (the cosine schedule's length).

    ``validate(model)``: a score (higher is better) of the model in eval mode after each epoch, recorded
    as ``val``; with ``keep_best`` the model then ends holding the weights of its best epoch (ties: the
    later one) instead of the last. It draws no random numbers, so the epochs' training is the same
    with and without it.
    """
    model.to(device).train()
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    # timm's "momentum" is plain SGD with momentum (its "sgd" is Nesterov); every parameter decays
    opt = create_optimizer_v2(model, "momentum" if optimizer == "sgd" else "adamw", lr=lr,
                              weight_decay=weight_decay, momentum=momentum, filter_bias_and_bn=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sum(steps_per_epoch)))
    history = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    bar = tqdm(range(len(steps_per_epoch)), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for images, labels in epoch_batches(epoch):
            x = to_model_input(images, mean, std, device, resize=resize, crop=crop)
            y = torch.as_tensor(labels, dtype=torch.long).to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        if total == 0:
            raise ValueError("an epoch had no training samples: the training set is empty")
        rec = {"epoch": epoch + 1, "loss": loss_sum / total, "acc": correct / total}
        if validate is not None:
            model.eval()
            rec["val"] = float(validate(model))
            if keep_best and (best is None or rec["val"] >= best[0]):
                best = (rec["val"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}", refresh=False)
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    crop: int | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits float32 (N, num_classes) on the CPU for uint8 (N, H, W, 3) or [-1, 1] (N, 3, H, W),
    preprocessed by :func:`to_model_input` (pass ``**input_spec(config)``)."""
    model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i: i + batch_size], mean, std, device, resize=resize, crop=crop)
        out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def save_classifier(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` + ``config.json`` atomically. ``config`` needs ``arch``,
    ``num_classes``, ``kwargs``, ``mean``, ``std``; anything else (history, seeds) is kept."""
    for k in ("arch", "num_classes", "kwargs", "mean", "std"):
        if k not in config:
            raise ValueError(f"classifier config needs {k!r}")
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        atomic_write_json(tmp / CONFIG, config)


@dataclass
class Classifier:
    """A saved classifier as it is used: the ``module`` (eval mode) and its ``config.json``, whose
    preprocessing (:attr:`preprocessing`) travels with it, so its logits are always taken on the input
    it was trained for."""

    module: nn.Module
    config: dict[str, Any]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """``mean`` / ``std`` (per channel, on [0, 1] pixels), ``resize``, ``crop``: :func:`to_model_input`'s."""
        return input_spec(self.config)

    def logits(self, images: np.ndarray | torch.Tensor, *, batch_size: int = 512,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """:func:`predict_logits` with this classifier's preprocessing: float32 (N, num_classes) on the CPU."""
        return predict_logits(self.module, images, **self.preprocessing, batch_size=batch_size, device=device)


    def logits_and_features(self, images: np.ndarray | torch.Tensor, *, batch_size: int = 512,
                            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits float32 (N, num_classes) and penultimate features float32 (N, D), the input of the final
        linear layer (:func:`final_linear`), from one forward per batch, on the CPU."""
        feats: list[torch.Tensor] = []
        hook = final_linear(self.module).register_forward_hook(
            lambda _m, inp, _out: feats.append(inp[0].detach().flatten(1).float().cpu()))
        try:
            logits = self.logits(images, batch_size=batch_size, device=device)
        finally:
            hook.remove()
        return logits, torch.cat(feats) if feats else torch.empty(0)


def final_linear(module: nn.Module) -> nn.Linear:
    """The layer that maps features to logits: timm's ``get_classifier()``, else the last ``nn.Linear``."""
    head = module.get_classifier() if hasattr(module, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear layer: no penultimate features to read")
    return linears[-1]


def load_classifier(model_dir: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Inverse of :func:`save_classifier`: the :class:`Classifier` (its module in eval mode on ``device``)."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: run the stage that trains this classifier first")
    config = json.loads(cfg_path.read_text())
    model = create_classifier(config["arch"], config["num_classes"], **config["kwargs"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
    return Classifier(model.to(device).eval(), config)


WHERE_TO_GET_WEIGHTS = (
    "ImageNet classifier weights are published by torchvision (resnet50: ResNet50_Weights.IMAGENET1K_V1, "
    "as in the paper) and by timm (swin_tiny_patch4_window7_224, convnext_tiny, swin_base_patch4_window7_224, "
    "convnext_base on the Hugging Face hub); download the file once and set imagenet.classifier_weights to it"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """timm's reader (``.safetensors`` or a torch file, read with ``weights_only``): unwraps
    ``state_dict`` / ``model`` and strips DDP / compile prefixes."""
    try:
        state = load_state_dict(str(path), use_ema=False)
    except Exception as err:  # unpickling refused, not a zip / safetensors file, ...
        raise ValueError(f"{path}: cannot read a state dict ({type(err).__name__}: {err})"[:500]) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_pretrained_classifier(arch: str, weights: str | Path) -> tuple[nn.Module, int]:
    """``timm.create_model(arch)`` with the weights of a local file; returns (model in eval mode,
    number of classes read from the file's classifier head).

    A missing file is a ``FileNotFoundError`` that says where to get it; keys that do not fit the
    architecture are a ``ValueError`` listing them (strict loading, nothing silently left random).
    """
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"classifier weights {weights} not found (imagenet.classifier_weights). "
                                f"{WHERE_TO_GET_WEIGHTS}")
    state = _read_state_dict(weights)
    head = (timm.models.get_pretrained_cfg(arch) or timm.models.get_pretrained_cfg(arch.split(".")[0]))
    head_key = f"{head.classifier}.weight" if head is not None and head.classifier else None
    num_classes = int(state[head_key].shape[0]) if head_key in state else 1000
    model = create_classifier(arch, num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit timm {arch!r}: missing {sorted(missing)[:20]} "
                         f"unexpected {sorted(unexpected)[:20]} (is imagenet.classifier_weights for source_model.arch?)")
    return model.eval(), num_classes
