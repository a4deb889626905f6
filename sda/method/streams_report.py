"""What people look at from the ``streams`` stage: the methods x streams table (markdown) and heatmap (PNG)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw

from sda.method.report import png_bytes

__all__ = ["streams_heatmap_png", "streams_markdown"]


def _order(metrics: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    streams = list(metrics["streams"])
    methods = list(dict.fromkeys(m for row in metrics["streams"].values() for m in row))
    return streams, methods


def streams_markdown(metrics: Mapping[str, Any]) -> str:
    """Top-1 % (mean over the evaluated domains) of each method (rows) on each stream (columns), its worst
    stream and spread, and its cost per image; the best method per stream in bold."""
    streams, methods = _order(metrics)
    specs = metrics.get("protocol", {}).get("streams", {})

    def head(s: str) -> str:
        first = next(iter(metrics["streams"][s].values()))
        return f"{s} (b{specs[s]['batch_size']}, {first['images_per_domain']}/domain)" if s in specs else s

    lines = ["| method | " + " | ".join(head(s) for s in streams) + " | worst (same images) | spread | "
             "UNet FE / image | classifier fwd / bwd |",
             "|---|" + "---|" * (len(streams) + 4)]
    best = {s: max(row["mean"] for row in metrics["streams"][s].values()) for s in streams}
    for m in methods:
        cells = []
        for s in streams:
            e = metrics["streams"][s].get(m)
            cells.append("–" if e is None else (f"**{e['mean']:.1f}**" if e["mean"] == best[s] else f"{e['mean']:.1f}"))
        summ = metrics["methods"][m]
        c = summ["cost_per_image"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {summ['worst']:.1f} ({summ['worst_stream']}) | "
                     f"{summ['spread']:.1f} | {c['unet_forward_equivalents']:g} | "
                     f"{c['classifier_forwards']:.3g} / {c['classifier_backwards']:.3g} |")
    notes = []
    for s in streams:
        for m, e in metrics["streams"][s].items():
            if "guard" in e:
                total = sum(e["guard"].values()) or 1
                notes.append(f"{s}/{m}: adapted on {100 * e['guard'].get('adapted', 0) / total:.0f} % of images")
    text = "\n".join(lines)
    k = metrics.get("common_images_per_domain")
    if k:
        text += (f"\n\nEach column on its stream's images; worst and spread over the streams on the {k} images per "
                 "domain every stream evaluated (a subset would otherwise differ by its draw, not by its order). "
                 "Costs per image: the most any stream needed.")
    first = next(iter(metrics["streams"].values()), {})
    for m, e in first.items():  # a method on a seeded subset of each domain: the frozen models on the same images
        if "source_same_images" in e:
            sda = f", SDA {e['sda_same_images']:.1f}" if "sda_same_images" in e else ""
            text += (f" {m}: on {e['images_per_domain']} images per domain (streams.{m}.images_per_domain), where "
                     f"the source model gets {e['source_same_images']:.1f}{sda}.")
    if notes:
        text += "\n\nGuard: " + "; ".join(notes) + "."
    share = metrics.get("protocol", {}).get("evaluate_source_collapse_share")
    if share is not None:
        text += (f"\n\n`sda` here is the raw logit sum on every domain; `metrics/evaluate.json`'s SDA drops the source "
                 f"term on a domain where the source model calls over {share:g} of the originals one class "
                 "(evaluate.source_collapse_share), which a stream cannot know before the domain is over: the two "
                 "tables' SDA differ there.")
    return text


def streams_heatmap_png(metrics: Mapping[str, Any], cell: tuple[int, int] = (76, 22)) -> bytes:
    """PNG: methods (rows) x streams (columns), each cell the top-1 % on a white (the lowest) to blue (the
    highest) scale, with the number written in it."""
    streams, methods = _order(metrics)
    vals = np.array([[metrics["streams"][s].get(m, {}).get("mean", np.nan) for s in streams] for m in methods])
    lo, hi = np.nanmin(vals), np.nanmax(vals)
    left, top = 80, 24
    w, h = cell
    img = Image.new("RGB", (left + w * len(streams) + 4, top + h * len(methods) + 4), "white")
    draw = ImageDraw.Draw(img)
    for j, s in enumerate(streams):
        draw.text((left + j * w + 4, 6), s[:12], fill="black")
    for i, m in enumerate(methods):
        draw.text((4, top + i * h + 6), m, fill="black")
        for j in range(len(streams)):
            v = vals[i, j]
            if np.isnan(v):
                continue
            t = 0.0 if hi == lo else (v - lo) / (hi - lo)
            colour = tuple(int(round(255 - t * (255 - c))) for c in (40, 90, 200))
            x0, y0 = left + j * w, top + i * h
            draw.rectangle([x0, y0, x0 + w - 2, y0 + h - 2], fill=colour)
            draw.text((x0 + 20, y0 + 6), f"{v:.1f}", fill="white" if t > 0.6 else "black")
    return png_bytes(img)
