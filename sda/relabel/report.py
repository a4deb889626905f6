"""What one relabel batch did, for people: counts, label distribution, quarantine reasons and a grid
of originals vs projections by predicted class, as markdown (a Prefect artifact) and files under
``<labels>/_reports/<date>/``."""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sda.io.atomic import atomic_write_bytes
from sda.method.report import grid_png

__all__ = ["BatchReport", "class_grid", "write_report"]


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
