"""What one relabel batch did, for people: counts, label distribution, quarantine reasons and a grid
of originals vs projections by predicted class, as markdown (a Prefect artifact) and files under
``<labels>/_reports/<date>/``; the alert of a drifted batch; the picture of the last runs' monitor."""

from __future__ import annotations

import base64
import os
import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from sda.io.atomic import atomic_write_bytes
from sda.io.untrusted_files import read_beneath
from sda.method.report import grid_png, png_bytes

__all__ = ["BatchReport", "class_grid", "drift_alert_markdown", "find_grid", "history_png", "write_report"]


@dataclass
class BatchReport:
    """What one committed batch did. ``grid_png``: originals vs projections by predicted class."""

    batch_id: str
    labelled: int = 0
    quarantined: int = 0
    deferred: int = 0
    seconds: float = 0.0
    label_counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    quarantined_files: list[tuple[str, str]] = field(default_factory=list)
    grid_png: bytes | None = None
    monitor: dict | None = None  # sda.relabel.monitor.monitor's row (None: not monitored)

    @property
    def images_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0

    def markdown(self) -> str:
        lines = [f"# Relabel batch `{self.batch_id}`",
                 f"**{self.labelled}** labelled, **{self.quarantined}** quarantined in {self.seconds:.1f} s "
                 f"({self.images_per_second:.1f} images/s)."
                 + (f" {self.deferred} left for a later run (truncated, recently modified: an upload in progress?)."
                    if self.deferred else "")]
        if self.label_counts:
            lines += ["## Labels (SDA)", "| class | images |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.label_counts.items(), key=lambda kv: -kv[1])]
        if m := self.monitor:
            state = ("too few images to tell" if m["too_few"] else "**drift**" if m["drift"] else "no drift")
            lines += ["## Monitor (no labels used)",
                      f"{state}: estimated accuracy {m['estimated_accuracy']:.1f} % (ATC; "
                      f"{m['reference_accuracy']:.1f} % on the pipeline's evaluated targets), "
                      f"{m['low_confidence']:.1f} % low-confidence", ""]
            lines += [f"- {name}: statistic {t['statistic']}, p = {t['p']:.3g}" for name, t in m["tests"].items()]
        if self.reasons:
            lines += ["## Quarantine reasons", "| reason | files |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        if self.quarantined_files:
            lines += ["| file | reason |", "|---|---|"]
            lines += [f"| `{f}` | {r} |" for f, r in self.quarantined_files[:50]]
        if self.grid_png:
            b64 = base64.b64encode(self.grid_png).decode()
            lines += ["## Originals vs projections, by predicted class",
                      f"![grid](data:image/png;base64,{b64})"]
        return "\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n"


def class_grid(images: np.ndarray, projected: np.ndarray, labels: np.ndarray, class_names: list[str],
               per_class: int, image_size: int) -> bytes:
    """PNG: a row pair (originals, projections) for each of the 10 most predicted classes, up to
    ``per_class`` images each; uint8 (N, H, W, 3) images, int (N,) labels."""
    counts = Counter(labels.tolist())
    rows = {}
    for c, _ in counts.most_common(10):
        idx = np.flatnonzero(labels == c)[:per_class]
        rows[f"{class_names[c]} ({counts[c]})"] = (images[idx], projected[idx])
    return grid_png(rows, image_size)


def write_report(reports_dir: Path, report: BatchReport) -> None:
    """``<reports_dir>/<UTC date>/<batch id>.md`` (+ ``.png``: the grid), atomically."""
    day = reports_dir / dt.datetime.now(dt.timezone.utc).date().isoformat()
    atomic_write_bytes(day / f"{report.batch_id}.md", report.markdown().encode())
    if report.grid_png:
        atomic_write_bytes(day / f"{report.batch_id}.png", report.grid_png)


_BATCH_ID = re.compile(r"[0-9a-f]{16}")


def find_grid(reports_dir: Path, batch_id: str, max_bytes: int = 16 << 20) -> bytes | None:
    """The grid PNG :func:`write_report` wrote for ``batch_id`` (16 hex digits; anything else: None, so
    that an id from an event cannot name another file), newest day first; read with no link followed
    and at most ``max_bytes`` (:func:`sda.io.untrusted_files.read_beneath`)."""
    if not _BATCH_ID.fullmatch(batch_id):
        return None
    try:
        root = os.open(reports_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for day in sorted(os.listdir(root), reverse=True):
            try:
                return read_beneath(root, f"{day}/{batch_id}.png", max_bytes)[0]
            except OSError:  # not there that day, a link, not a regular file, too large
                continue
        return None
    finally:
        os.close(root)


def drift_alert_markdown(alert: Mapping[str, Any], grid: bytes | None = None) -> str:
    """The alert of a drifted batch for people: ``alert`` is the monitor row
    (:func:`sda.relabel.monitor.monitor`) with ``batch_id``, ``checkout``, ``inbox`` and
    ``reference_label_shares``; ``grid`` the batch's originals-vs-projections PNG."""
    shares, ref = alert.get("label_shares") or {}, alert.get("reference_label_shares") or {}
    lines = [f"# Drift in relabel batch `{alert.get('batch_id', '?')}`",
             f"{alert.get('images', 0)} images from `{alert.get('inbox', '?')}` "
             f"(checkout `{alert.get('checkout', '?')}`) "
             f"do not look like the target data the pipeline evaluated. Estimated accuracy "
             f"**{alert.get('estimated_accuracy', 0):.1f} %** (ATC, no label used) against "
             f"{alert.get('reference_accuracy', 0):.1f} % there ({alert.get('accuracy_drop', 0):.1f} points lower); "
             f"{alert.get('low_confidence', 0):.1f} % of the images under the confidence threshold.",
             "## Tests", "| test | statistic | p |", "|---|---|---|"]
    lines += [f"| {name} | {t['statistic']} | {t['p']:.3g} |" for name, t in (alert.get("tests") or {}).items()]
    lines += ["## Predicted classes", "| class | this batch | reference |", "|---|---|---|"]
    for c in sorted(set(shares) | set(ref), key=lambda c: -max(shares.get(c, 0), ref.get(c, 0)))[:20]:
        lines.append(f"| {c} | {100 * shares.get(c, 0):.1f} % | {100 * ref.get(c, 0):.1f} % |")
    lines += ["## What to do", "Look at the images below. A new kind of data that should be labelled: add the folder "
              "as a target domain and re-run the pipeline (docs/service.md, after a drift). If "
              "relabel.monitor.pause_on_drift is set, relabel/scheduled is paused until you resume it."]
    if grid:
        lines += ["## Originals vs projections, by predicted class",
                  f"![grid](data:image/png;base64,{base64.b64encode(grid).decode()})"]
    return "\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n"


# tab10: the class colours of :func:`history_png`
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def history_png(runs: Sequence[Mapping[str, Any]], *, height: int = 180, column: int = 26) -> bytes:
    """PNG of the last runs (:func:`sda.relabel.monitor.history`, oldest left): per run a bar of its label
    shares (the 9 most frequent classes over the runs in colour, the rest grey), the estimated accuracy
    (black line) and the mean confidence (white line) on a 0-100 scale, a red mark over a run with a
    drifted batch."""
    totals: Counter[str] = Counter()
    for r in runs:
        totals.update({c: s * r["images"] for c, s in r["label_shares"].items()})
    colour = {c: _COLOURS[i] for i, (c, _) in enumerate(totals.most_common(9))}
    left, top, bottom = 34, 34, 18
    width = max(500, left + column * max(len(runs), 1) + 8)
    per_row = width // 120
    legend = 14 * ((len(colour) + per_row - 1) // per_row)
    img = Image.new("RGB", (width, top + height + bottom + legend), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), "estimated accuracy % (black), mean confidence % (white), label shares (bars)", fill="black")
    y = lambda v: top + height - v / 100 * height  # noqa: E731
    for v in (0, 50, 100):
        draw.text((4, y(v) - 5), f"{v:3d}", fill="black")
    acc, conf = [], []
    for i, r in enumerate(runs):
        x0, x1 = left + i * column, left + (i + 1) * column - 4
        base = 0.0
        for c, s in sorted(r["label_shares"].items(), key=lambda kv: (kv[0] not in colour, -kv[1])):
            draw.rectangle([x0, y(100 * (base + s)), x1, y(100 * base)], fill=colour.get(c, (200, 200, 200)))
            base += s
        centre = (x0 + x1) / 2
        acc.append((centre, y(r["estimated_accuracy"])))
        conf.append((centre, y(100 * r["mean_confidence"])))
        if r["drifted"]:
            draw.polygon([(centre - 5, top - 12), (centre + 5, top - 12), (centre, top - 3)], fill=(220, 0, 0))
        draw.text((x0 + 2, top + height + 4), str(i + 1 - len(runs)) if i + 1 < len(runs) else "last", fill="black")
    for points, fill in ((conf, "white"), (acc, "black")):
        if len(points) > 1:
            draw.line(points, fill=fill, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=fill, outline="black")
    for j, (c, rgb) in enumerate(colour.items()):
        x, yy = 4 + (j % per_row) * 120, top + height + bottom + 2 + 14 * (j // per_row)
        draw.rectangle([x, yy, x + 9, yy + 9], fill=rgb)
        draw.text((x + 13, yy), str(c)[:16], fill="black")
    return png_bytes(img)
