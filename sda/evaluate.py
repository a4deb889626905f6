"""Predictions of every method from three logit tensors, accuracy tables, plots and image grids.

Methods (each a prediction per image):

- ``source``: source model on the original image;
- ``dda``: source model on the projected image;
- ``dda_ens``: DDA's ensemble, softmax sum of source(original) and source(projected);
- ``sda``: argmax of the RAW LOGIT SUM source(original) + aligned(projected) (SDA, DESIGN.md §1).

Extra rows (``more``): DDA's other ensembles (entropy pick, confidence pick, logit sum) and the
aligned model alone on projected images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from sda.shards import atomic_write_bytes

__all__ = [
    "MAIN_METHODS",
    "method_predictions",
    "projection_grid",
    "results_markdown",
    "sda_logits",
    "summarise",
    "write_plot_csv",
]

MAIN_METHODS: tuple[str, ...] = ("source", "dda", "dda_ens", "sda")


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def sda_logits(source_orig: torch.Tensor, aligned_proj: torch.Tensor) -> torch.Tensor:
    """SDA's decision logits (N, C): the raw sum source(original) + aligned(projected) (DESIGN.md §1)."""
    return source_orig + aligned_proj


def method_predictions(
    source_orig: torch.Tensor, source_proj: torch.Tensor, aligned_proj: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Class predictions (N,) per method from logits (N, C) of the three model/input pairs."""
    pick_entropy = _entropy(source_proj) < _entropy(source_orig)
    pick_conf = source_proj.softmax(1).amax(1) > source_orig.softmax(1).amax(1)
    return {
        "source": source_orig.argmax(1),
        "dda": source_proj.argmax(1),
        "dda_ens": (source_orig.softmax(1) + source_proj.softmax(1)).argmax(1),
        "sda": sda_logits(source_orig, aligned_proj).argmax(1),
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


def results_markdown(metrics: Mapping[str, object]) -> str:
    """A markdown table: one row per domain, then the corruption mean; columns = main methods."""
    header = "| domain | " + " | ".join(MAIN_METHODS) + " |"
    lines = [header, "|" + "---|" * (len(MAIN_METHODS) + 1)]
    for d, acc in metrics["domains"].items():  # type: ignore[union-attr]
        lines.append(f"| {d} | " + " | ".join(f"{acc[m]:.1f}" for m in MAIN_METHODS) + " |")
    mean = metrics["mean"]
    lines.append("| **mean (corruptions)** | " + " | ".join(f"**{mean[m]:.1f}**" for m in MAIN_METHODS) + " |")  # type: ignore[index]
    return "\n".join(lines)


def write_plot_csv(metrics: Mapping[str, object], path: str | Path) -> None:
    """Per-domain accuracy by method as CSV (``domain,source,dda,dda_ens,sda``) for ``dvc plots``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", *MAIN_METHODS])
    for d, acc in metrics["domains"].items():  # type: ignore[union-attr]
        w.writerow([d, *(acc[m] for m in MAIN_METHODS)])
    w.writerow(["mean", *(metrics["mean"][m] for m in MAIN_METHODS)])  # type: ignore[index]
    atomic_write_bytes(path, buf.getvalue().encode())


def projection_grid(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], *, upscale: int = 4) -> Image.Image:
    """Image grid: for each domain a row of originals and a row of their projections.

    ``rows[domain] = (original uint8 (K, H, W, 3), projected uint8 (K, H, W, 3))``; the domain name
    is drawn at the left of each pair of rows. Returns a PIL RGB image.
    """
    tiles = []
    names = list(rows)
    k = max(len(o) for o, _ in rows.values())
    for name in names:
        orig, proj = rows[name]
        for arr in (orig, proj):
            t = torch.from_numpy(arr).permute(0, 3, 1, 2)
            t = torch.nn.functional.interpolate(t.float(), scale_factor=upscale, mode="nearest").to(torch.uint8)
            if len(t) < k:
                t = torch.cat([t, torch.zeros(k - len(t), *t.shape[1:], dtype=torch.uint8)])
            tiles.append(t)
    grid = make_grid(torch.cat(tiles), nrow=k, padding=2, pad_value=255)
    img = Image.fromarray(grid.permute(1, 2, 0).numpy())
    label_w = 130
    canvas = Image.new("RGB", (img.width + label_w, img.height), "white")
    canvas.paste(img, (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = (img.height - 2) / (2 * len(names))
    for i, name in enumerate(names):
        draw.text((4, int((2 * i) * row_h + 4)), name, fill="black")
        draw.text((4, int((2 * i + 1) * row_h + 4)), "  projected", fill="gray")
    return canvas
