"""What people look at: the results table, the per-domain plot data, and grids of originals vs
projections (the evaluate stage's ``metrics/`` files and the relabel reports)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from sda.io.atomic import atomic_write_bytes
from sda.method.scoring import MAIN_METHODS

__all__ = ["alignment_markdown", "confusion_matrix", "confusion_png", "grid_png", "paired_markdown", "png_bytes",
           "projection_grid", "results_markdown", "synthetic_grid_png", "write_plot_csv"]


def results_markdown(metrics: Mapping[str, object]) -> str:
    """A markdown table: one row per domain, then the corruption mean; columns = main methods."""
    header = "| domain | " + " | ".join(MAIN_METHODS) + " |"
    lines = [header, "|" + "---|" * (len(MAIN_METHODS) + 1)]
    for d, acc in metrics["domains"].items():  # type: ignore[union-attr]
        lines.append(f"| {d} | " + " | ".join(f"{acc[m]:.1f}" for m in MAIN_METHODS) + " |")
    mean = metrics["mean"]
    lines.append("| **mean (corruptions)** | " + " | ".join(f"**{mean[m]:.1f}**" for m in MAIN_METHODS) + " |")  # type: ignore[index]
    term = metrics.get("sda_source_term") or {}
    dropped = {d: t["top_class_share"] for d, t in term.get("domains", {}).items() if t["dropped"]}  # type: ignore[union-attr]
    if dropped:
        lines.append(f"\nSDA without its source term (evaluate.source_collapse_share: {term['collapse_share']:g}) on "
                     + ", ".join(f"{d} ({100 * v:.0f}% of the originals in one class)" for d, v in dropped.items())
                     + ": the aligned model on the projections decides there. The streams table's `sda` keeps the "
                     "raw sum on every domain: a stream cannot know in advance that a domain's source model collapsed.")
    if metrics.get("paired"):
        lines.append("\n" + paired_markdown(metrics["paired"]))  # type: ignore[arg-type]
    for d, u in metrics.get("unlabelled", {}).items():  # type: ignore[union-attr]
        top = ", ".join(f"{c} {k}" for c, k in sorted(u["sda_counts"].items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"\nUnlabelled `{d}`: {u['images']} images labelled by SDA ({top}; metrics/predictions.csv).")
    if metrics.get("compute"):
        p = metrics["compute"]["projection"]  # type: ignore[index]
        lines.append(f"\nProjection cost ({p['method']}): {p['forward_equivalents_per_image']:g} UNet forward-equivalents "
                     f"per target image ({p['forwards']} forwards and {p['backwards']} input-gradient backwards "
                     f"for {p['images']} images; the source model needs none).")
    if metrics.get("alignment"):
        lines.append("\n" + alignment_markdown(metrics["alignment"]))  # type: ignore[arg-type]
    return "\n".join(lines)


def paired_markdown(paired: Mapping[str, object], alpha: float = 0.05) -> str:
    """``evaluate.json``'s ``paired`` (:func:`sda.method.scoring.paired_comparison` of SDA against Source
    and DDA per labelled domain) as markdown: a row per domain that is not one of the generated
    corruptions, then how many of those SDA wins or loses at ``alpha``."""
    domains: Mapping[str, Mapping[str, Mapping[str, float]]] = paired["domains"]  # type: ignore[assignment]
    corruptions = list(paired.get("corruptions", []))  # type: ignore[call-overload]
    fmt = lambda c: (f"{c['difference']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}], "  # noqa: E731
                     f"+{c['gained']} / -{c['lost']} images, p {c['p']:.2g}")
    rows = ["SDA against Source and DDA on the same images (points, 95 % interval; images SDA gets right that "
            "the other does not / the reverse; McNemar's p: under 0.05, more than chance):"]
    others = [d for d in domains if d not in corruptions]
    if others:
        rows += ["", "| domain | SDA - Source | SDA - DDA |", "|---|---|---|"]
        rows += [f"| {d} | {fmt(domains[d]['sda_vs_source'])} | {fmt(domains[d]['sda_vs_dda'])} |" for d in others]
    if corruptions:
        count = lambda key, sign: sum(1 for d in corruptions if domains[d][key]["p"] < alpha  # noqa: E731
                                      and sign * domains[d][key]["difference"] > 0)
        rows.append(f"\nOn the {len(corruptions)} corruptions: SDA above Source on {count('sda_vs_source', 1)}, "
                    f"below on {count('sda_vs_source', -1)}; above DDA on {count('sda_vs_dda', 1)}, below on "
                    f"{count('sda_vs_dda', -1)} (p < {alpha:g}; the rest within chance).")
    return "\n".join(rows)


def alignment_markdown(diagnostics: Mapping[str, object]) -> str:
    """The synthetic domain's checks (``metrics/alignment.json``, :mod:`sda.method.diagnostics`) as a
    markdown table, then one warning line each."""
    rows = ["Synthetic domain, measured without target labels:", "", "| check | top-1 % |", "|---|---|"]
    probe = diagnostics.get("diffusion_probe")
    if probe:
        rows.append(f"| source model on the diffusion model's probe samples ({probe['images']} images; step "
                    f"{probe['selected_step']} of {probe['trained_steps']} kept, target {probe['target']:g}) | "
                    f"{probe['accuracy']:.1f} |")
    for stage, score in diagnostics.get("synthetic", {}).items():  # type: ignore[union-attr]
        worst = sorted(score["per_class"].items(), key=lambda kv: kv[1])[:2]
        weakest = ", ".join(f"{c}: {a:.0f}" for c, a in worst)
        rows.append(f"| source model on the {stage} images, intended class ({score['images']} images; weakest: "
                    f"{weakest}) | {score['accuracy']:.1f} |")
    val = diagnostics.get("projected_val")
    if val:
        sel = f", epoch {val['selected_epoch']}" if val.get("selected_epoch") else ""
        rows.append(f"| source model on the source val split ({val['images']} images), originals | "
                    f"{val['source_original']:.1f} |")
        rows.append(f"| source model on the projected source val split | {val['source']:.1f} |")
        rows.append(f"| aligned model on the projected source val split{sel} | {val['aligned']:.1f} |")
    if diagnostics.get("fallback"):
        rows.append("\nThe aligned model was rejected on the projected source val split: **the sda column is DDA's "
                    "prediction** (classifier_align fell back).")
    for w in diagnostics.get("warnings", []):  # type: ignore[union-attr]
        rows.append(f"\n**Warning** {w}")
    return "\n".join(rows)


def write_plot_csv(metrics: Mapping[str, object], path: str | Path) -> None:
    """Per-domain accuracy by method as CSV (``domain,source,dda,dda_ens,sda``) for ``dvc plots``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", *MAIN_METHODS])
    for d, acc in metrics["domains"].items():  # type: ignore[union-attr]
        w.writerow([d, *(acc[m] for m in MAIN_METHODS)])
    w.writerow(["mean", *(metrics["mean"][m] for m in MAIN_METHODS)])  # type: ignore[index]
    atomic_write_bytes(path, buf.getvalue().encode())


def projection_grid(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], *, upscale: int = 4,
                    second: str = "projected") -> Image.Image:
    """Image grid: for each domain a row of originals and a row of their projections.

    ``rows[domain] = (original uint8 (K, H, W, 3), projected uint8 (K, H, W, 3))``; the domain name
    is drawn at the left of each pair of rows, ``second`` at the left of the second row. Returns a PIL
    RGB image.
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
        draw.text((4, int((2 * i + 1) * row_h + 4)), f"  {second}", fill="gray")
    return canvas


def grid_png(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], image_size: int) -> bytes:
    """:func:`projection_grid` as PNG bytes, upscaled so that tiles are at least 64 px."""
    return png_bytes(projection_grid(rows, upscale=max(1, 64 // image_size)))


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _note(text: str) -> bytes:
    """A PNG of one line of text, where a picture has nothing to show."""
    img = Image.new("RGB", (8 * len(text) + 12, 30), "white")
    ImageDraw.Draw(img).text((6, 8), text, fill="black")
    return png_bytes(img)


def synthetic_grid_png(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], image_size: int) -> bytes:
    """PNG: per class (``rows[name] = (generated, aligned)``, uint8 (K, H, W, 3) each) a row of the
    generator's samples and below it the same samples after ``synth_align``'s projection."""
    if not rows:
        return _note("no synthetic images")
    return png_bytes(projection_grid(rows, upscale=max(1, 64 // image_size), second="after synth_align"))


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, int (C, C): row = actual class, column = predicted class."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def confusion_png(matrices: Mapping[str, Mapping[str, np.ndarray]], *, max_classes: int = 64, side: int = 160) -> bytes:
    """PNG: one row per domain, one row-normalised confusion matrix per method (``matrices[domain][method]``,
    counts (C, C); white 0, dark blue all of the row's images); the diagonal holds each class's hits.
    Over ``max_classes`` classes the cells would be under 3 px: a note to use ``dvc plots`` instead."""
    if not matrices:
        return _note("no labelled target domain: nothing to compare")
    first = next(iter(next(iter(matrices.values())).values()))
    if len(first) > max_classes:
        return _note(f"{len(first)} classes: too many to draw here; dvc plots show metrics/confusion")
    cell = max(2, side // len(first))
    colour = torch.tensor([0.85, 0.65, 0.25]).view(3, 1, 1)
    tiles, methods = [], list(next(iter(matrices.values())))
    for per_method in matrices.values():
        for m in methods:
            cm = torch.as_tensor(per_method[m], dtype=torch.float32)
            share = cm / cm.sum(1, keepdim=True).clamp(min=1)
            rgb = (255 * (1 - colour * share)).round().to(torch.uint8)
            tiles.append(rgb.repeat_interleave(cell, 1).repeat_interleave(cell, 2))
    grid = make_grid(torch.stack(tiles), nrow=len(methods), padding=4, pad_value=255)
    img = Image.fromarray(grid.permute(1, 2, 0).numpy())
    label_w, head_h = 130, 16
    canvas = Image.new("RGB", (img.width + label_w, img.height + head_h), "white")
    canvas.paste(img, (label_w, head_h))
    draw = ImageDraw.Draw(canvas)
    tile_w = (img.width - 4) / len(methods)
    for j, m in enumerate(methods):
        draw.text((label_w + int(j * tile_w) + 6, 2), f"{m}: actual (rows) x predicted", fill="black")
    row_h = (img.height - 4) / len(matrices)
    for i, name in enumerate(matrices):
        draw.text((4, head_h + int(i * row_h) + 6), name, fill="black")
    return png_bytes(canvas)
