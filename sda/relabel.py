"""Label new target images with SDA, exactly once, in batches.

:class:`RelabelJob` is the whole job without any orchestration (the Prefect flow and the CLI in
``flows/relabel.py`` drive it)::

    with RelabelJob(settings, models=..., lineage=..., ...) as job:   # lock, scan, load models
        for batch in job.batches:
            report = job.process(batch)                              # validate, quarantine, label, commit

Exactly once: an image is identified by the sha256 of its bytes; a batch's rows are committed by one
atomic rename (:mod:`sda.label_store`); which images are done is read back from the committed
datasets when the job starts. A run killed at any point therefore loses at most the uncommitted batch,
which the next run labels again, and never writes a row twice. Two jobs over the same label store
cannot interleave: the job holds an exclusive file lock (``<labels>/.relabel.lock``, released by the
OS even on ``kill -9``) from the scan to the last commit; a second job waits for it, then finds the
images done.

Prediction per image (DESIGN.md §1): the source model on the original, the aligned model on its DDA
projection, SDA = argmax of the raw logit sum. The projection uses the pipeline's ``projection``
params in guidance batches of ``projection.batch_size`` (with the reference's batch-wide norm a label
can depend on the batch mates, exactly as in ``target_project``; ``per_sample_norm`` removes that).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from filelock import FileLock, Timeout

from sda.classifiers import load_classifier, predict_logits
from sda.diffusion import load_diffusion
from sda.evaluate import projection_grid, sda_logits
from sda.inbox import BadImage, InboxItem, Scan, decode_image, safe_file_name, scan_inbox, to_model_image
from sda.label_store import (LABEL_SCHEMA, QUARANTINE_SCHEMA, commit_batch, committed_hashes,
                             remove_stale_temps)
from sda.project_sets import project_uint8, projection_batch_size
from sda.runtime import derive_seed
from sda.shards import atomic_write_bytes

__all__ = ["BatchReport", "Lineage", "RelabelJob", "batch_id_of"]

log = logging.getLogger("sda.relabel")


@dataclass(frozen=True)
class Lineage:
    """Where a label came from: DVC hashes of the three models, params hash, code version."""

    source_model_hash: str
    aligned_model_hash: str
    diffusion_model_hash: str
    params_hash: str
    code_version: str


@dataclass
class BatchReport:
    """What one committed batch did. ``grid_png``: originals vs projections by predicted class."""

    batch_id: str
    labelled: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    label_counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    quarantined_files: list[tuple[str, str]] = field(default_factory=list)
    grid_png: bytes | None = None

    @property
    def images_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0

    def markdown(self) -> str:
        lines = [f"# Relabel batch `{self.batch_id}`",
                 f"**{self.labelled}** labelled, **{self.quarantined}** quarantined in {self.seconds:.1f} s "
                 f"({self.images_per_second:.1f} images/s)."]
        if self.label_counts:
            lines += ["## Labels (SDA)", "| class | images |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.label_counts.items(), key=lambda kv: -kv[1])]
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


def batch_id_of(items: list[InboxItem]) -> str:
    """16 hex digits fixed by the batch's content: a re-run of the same images gets the same id."""
    return hashlib.sha256("\n".join(it.sha256 for it in items).encode()).hexdigest()[:16]


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


class RelabelJob:
    """One relabelling run over an inbox; see the module docstring.

    ``settings`` is :class:`sda.params.Relabel` (paths already resolved by the caller),
    ``projection`` the :class:`sda.params.Projection` fields, ``models`` the folders
    ``{"source": ..., "aligned": ..., "diffusion": ..., "classes": classes.json}``.
    """

    def __init__(self, settings: Any, *, projection: dict[str, Any], image_size: int,
                 models: dict[str, Path], lineage: Lineage, seed: int, run_id: str,
                 flow_run_id: str | None = None, device: torch.device | str = "cpu",
                 inbox: Path | None = None) -> None:
        self.s = settings
        self.inbox = Path(inbox or settings.inbox)
        self.labels_dir, self.quarantine_dir = Path(settings.labels), Path(settings.quarantine)
        self.reports_dir = self.labels_dir / "_reports"  # "_" keeps it out of Parquet readers' way
        self.projection, self.image_size, self.models = projection, image_size, models
        self.lineage, self.seed, self.run_id, self.flow_run_id = lineage, seed, run_id, flow_run_id
        self.device = torch.device(device)
        self._lock = FileLock(str(self.labels_dir / ".relabel.lock"))
        self.scan: Scan | None = None
        self.batches: list[list[InboxItem]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "RelabelJob":
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        (self.quarantine_dir / "table").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            self._lock.acquire(timeout=self.s.lock_timeout_seconds)
        except Timeout:
            raise RuntimeError(
                f"another relabel run holds {self._lock.lock_file} for more than "
                f"relabel.lock_timeout_seconds={self.s.lock_timeout_seconds}; let it finish") from None
        waited = time.perf_counter() - t0
        if waited > 1:
            log.info("waited %.1f s for another relabel run to finish", waited)
        try:
            self._start()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _start(self) -> None:
        for store in (self.labels_dir, self.quarantine_dir / "table"):
            if n := remove_stale_temps(store):
                log.info("removed %d temporary file(s) of a killed commit in %s", n, store)
        labelled = committed_hashes(self.labels_dir)
        quarantined = committed_hashes(self.quarantine_dir / "table")
        self.scan = sc = scan_inbox(self.inbox, skip=labelled | quarantined, min_age_s=self.s.min_age_seconds)
        if self.s.move_quarantined:  # a run killed after its quarantine commit left these behind
            for it in sc.known:
                if it.sha256 in quarantined:
                    it.path.unlink(missing_ok=True)
        log.info("inbox %s: %d new image(s), %d already done, %d duplicate(s), %d too new, %d not images, "
                 "%d broken tar(s), %d symlink(s)", self.inbox, len(sc.items), len(labelled) + len(quarantined),
                 sc.duplicates, len(sc.too_new), len(sc.ignored), len(sc.broken) - len(sc.symlinks),
                 len(sc.symlinks))
        bs = self.s.batch_size
        self.batches = [sc.items[i: i + bs] for i in range(0, len(sc.items), bs)]
        if sc.broken:
            items = [it for it, _ in sc.broken]
            self._quarantine(items, {it.sha256: r for it, r in sc.broken}, "refused-" + batch_id_of(items))
        if self.batches:
            self._load_models()

    def _load_models(self) -> None:
        m = self.models
        self.source, self.source_cfg = load_classifier(m["source"], self.device)
        self.aligned, self.aligned_cfg = load_classifier(m["aligned"], self.device)
        self.unet, self.scheduler, self.diffusion_info = load_diffusion(m["diffusion"], self.device)
        # once per run: with batch_size "auto" this measures a guided step on the GPU
        self.projection_batch = projection_batch_size(self.unet, self.scheduler, self.projection, self.image_size,
                                                      self.diffusion_info["null_label"])
        self.class_names: list[str] = json.loads(Path(m["classes"]).read_text())["names"]

    # -- work ------------------------------------------------------------------------------------
    def process(self, batch: list[InboxItem]) -> BatchReport:
        """Validate, quarantine the bad, label the good, commit; returns the batch's report."""
        t0 = time.perf_counter()
        bid = batch_id_of(batch)
        good: list[tuple[InboxItem, np.ndarray, tuple[int, int], str]] = []
        bad: dict[str, str] = {}
        for it in batch:
            try:
                if it.size > self.s.max_file_bytes:
                    raise BadImage(f"file too large: {it.size} bytes > relabel.max_file_bytes={self.s.max_file_bytes}")
                data = it.read()
                if hashlib.sha256(data).hexdigest() != it.sha256:
                    raise BadImage("changed while being read (sha256 differs from the scan)")
                img, mode = decode_image(data, max_pixels=self.s.max_pixels, min_side=self.s.min_side)
                good.append((it, to_model_image(img, self.image_size), img.size, mode))
            except (BadImage, OSError) as err:
                bad[it.sha256] = str(err) if isinstance(err, BadImage) else f"unreadable: {err}"
        report = BatchReport(batch_id=bid)
        if bad:
            items = [it for it in batch if it.sha256 in bad]
            report.quarantined = len(items)
            report.reasons = dict(Counter(_reason_kind(bad[it.sha256]) for it in items))
            report.quarantined_files = [(it.source, bad[it.sha256]) for it in items]
            self._quarantine(items, bad, bid)
        if good:
            images = np.stack([g[1] for g in good])
            pred, proj = self._predict(images, bid)
            self._commit_labels(bid, good, pred)
            report.labelled = len(good)
            report.label_counts = dict(Counter(self.class_names[i] for i in pred["label"]))
            report.grid_png = self._grid(images, proj, pred["label"])
        report.seconds = time.perf_counter() - t0
        self._write_report(report)
        return report

    @torch.no_grad()
    def _predict(self, images: np.ndarray, bid: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Projections in guidance batches of projection.batch_size, then both classifiers."""
        pbs = self.projection_batch
        proj = []
        for c in range(0, len(images), pbs):
            gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, "relabel", bid, c))
            proj.append(project_uint8(self.unet, self.scheduler, images[c: c + pbs], self.projection,
                                      null_label=self.diffusion_info["null_label"], generator=gen))
        projected = np.concatenate(proj)
        so = predict_logits(self.source, images, mean=self.source_cfg["mean"], std=self.source_cfg["std"],
                            device=self.device)
        ap = predict_logits(self.aligned, projected, mean=self.aligned_cfg["mean"], std=self.aligned_cfg["std"],
                            device=self.device)
        p_sda, p_src = sda_logits(so, ap).softmax(1), so.softmax(1)
        k = min(5, p_sda.shape[1])
        top = p_sda.topk(k, dim=1)
        return {
            "label": p_sda.argmax(1).numpy(), "confidence": p_sda.amax(1).numpy(),
            "top5": top.indices.numpy(), "top5_confidence": top.values.numpy(),
            "source_label": p_src.argmax(1).numpy(), "source_confidence": p_src.amax(1).numpy(),
        }, projected

    def _commit_labels(self, bid: str, good: list, pred: dict[str, np.ndarray]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        names = self.class_names
        lin = self.lineage
        n = len(good)
        cols = {
            "key": [g[0].sha256[:16] for g in good],
            "sha256": [g[0].sha256 for g in good],
            "source_path": [g[0].source for g in good],
            "width": [g[2][0] for g in good],
            "height": [g[2][1] for g in good],
            "mode": [g[3] for g in good],
            "label": pred["label"].tolist(),
            "class_name": [names[i] for i in pred["label"]],
            "confidence": pred["confidence"].tolist(),
            "top5": pred["top5"].tolist(),
            "top5_confidence": pred["top5_confidence"].tolist(),
            "source_label": pred["source_label"].tolist(),
            "source_class_name": [names[i] for i in pred["source_label"]],
            "source_confidence": pred["source_confidence"].tolist(),
            "source_model_hash": [lin.source_model_hash] * n,
            "aligned_model_hash": [lin.aligned_model_hash] * n,
            "diffusion_model_hash": [lin.diffusion_model_hash] * n,
            "params_hash": [lin.params_hash] * n,
            "code_version": [lin.code_version] * n,
            "batch_id": [bid] * n,
            "run_id": [self.run_id] * n,
            "flow_run_id": [self.flow_run_id] * n,
            "labelled_at": [now] * n,
        }
        commit_batch(self.labels_dir, pa.table(cols, schema=LABEL_SCHEMA), bid, now)

    def _quarantine(self, items: list[InboxItem], reasons: dict[str, str], bid: str) -> None:
        """Copy the files into ``<quarantine>/files/``, commit their rows, then (optionally) remove
        them from the inbox. Each step is idempotent, so a kill between them is repaired by a re-run.
        A symlink gets a row but no copy (``quarantined_as`` empty); removing it leaves its target."""
        files_dir = self.quarantine_dir / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for it in items:
            if it.link:
                names.append("")
                continue
            name = safe_file_name(it.source, it.sha256)
            dst = files_dir / name
            if not dst.exists():
                if it.member is None:
                    tmp = files_dir / f".{name}.tmp"
                    shutil.copyfile(it.path, tmp)
                    os.replace(tmp, dst)
                else:
                    atomic_write_bytes(dst, it.read())
            names.append(name)
        now = dt.datetime.now(dt.timezone.utc)
        n = len(items)
        table = pa.table({
            "file": [it.source for it in items], "sha256": [it.sha256 for it in items],
            "reason": [reasons[it.sha256] for it in items], "size_bytes": [it.size for it in items],
            "quarantined_as": names, "batch_id": [bid] * n, "run_id": [self.run_id] * n,
            "flow_run_id": [self.flow_run_id] * n, "quarantined_at": [now] * n,
        }, schema=QUARANTINE_SCHEMA)
        commit_batch(self.quarantine_dir / "table", table, bid, now)
        for it, reason in ((it, reasons[it.sha256]) for it in items):
            log.warning("quarantined %s: %s", it.source, reason)
            if self.s.move_quarantined and it.member is None:
                it.path.unlink(missing_ok=True)

    def _grid(self, images: np.ndarray, projected: np.ndarray, labels: np.ndarray) -> bytes:
        k = self.s.grid_images
        counts = Counter(labels.tolist())
        rows = {}
        for c, _ in counts.most_common(10):
            idx = np.flatnonzero(labels == c)[:k]
            rows[f"{self.class_names[c]} ({counts[c]})"] = (images[idx], projected[idx])
        buf = io.BytesIO()
        projection_grid(rows, upscale=max(1, 64 // self.image_size)).save(buf, format="PNG")
        return buf.getvalue()

    def _write_report(self, report: BatchReport) -> None:
        day = self.reports_dir / dt.datetime.now(dt.timezone.utc).date().isoformat()
        atomic_write_bytes(day / f"{report.batch_id}.md", report.markdown().encode())
        if report.grid_png:
            atomic_write_bytes(day / f"{report.batch_id}.png", report.grid_png)

