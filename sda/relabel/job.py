"""Label new target images with SDA, exactly once, in batches.

:class:`RelabelJob` is the whole job without any orchestration (:mod:`sda.relabel.service` builds it
for a checkout; the Prefect flow and the CLI in ``flows/relabel.py`` drive it)::

    with RelabelJob(settings, models=..., lineage=..., ...) as job:   # lock, scan, load models
        for batch in job.batches:
            report = job.process(batch)                              # validate, quarantine, label, commit

Exactly once: an image is identified by the sha256 of its bytes; a batch's rows are committed by one
atomic rename (:mod:`sda.relabel.store`); which images are done is read back from the committed
datasets when the job starts. A run killed at any point therefore loses at most the uncommitted batch,
which the next run labels again, and never writes a row twice. Two jobs over the same label store
cannot interleave: the job holds an exclusive file lock (``<labels>/.relabel.lock``, released by the
OS even on ``kill -9``) from the scan to the last commit; a second job waits for it, then finds the
images done.

Prediction per image: :class:`sda.relabel.predict.SdaPredictor`. The projection uses the pipeline's ``projection``
params in guidance batches of ``projection.batch_size``, but each image with its own guidance norm and its
own noise (seeded by its sha256): a label never depends on which other files arrived in the same run.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import torch
from filelock import FileLock, Timeout

from sda.config import GuardParams, Projection, Relabel
from sda.io.atomic import atomic_write_bytes, clean_stale_temps
from sda.io.images import BadImage, center_crop_arr, decode_image
from sda.io.target_index import INDEX
from sda.io.untrusted_files import unlink_if_same
from sda.layout import SourceClasses
from sda.relabel.inbox import InboxItem, Readiness, Scan, open_inbox, readiness, safe_file_name, scan_inbox
from sda.relabel.monitor import (INPUTS_FILE, MONITOR_DIR, REFERENCE_FILE, InputReference, Reference, input_key,
                                 input_reference, monitor, pipeline_reference, reference_key)
from sda.relabel.predict import SdaPredictor
from sda.relabel.report import BatchReport, class_grid, write_report
from sda.relabel.store import (LABEL_SCHEMA, QUARANTINE_SCHEMA, MonitorRow, commit_batch, committed_hashes,
                               read_table, remove_stale_temps)
from sda.runtime import derive_seed

__all__ = ["Lineage", "RelabelJob", "batch_id_of"]

log = logging.getLogger("sda.relabel")


@dataclass(frozen=True)
class Lineage:
    """Where a label came from: the DVC hashes of the three models, and the params hash and code version
    of the pipeline run that built them (as that run recorded them)."""

    source_model_hash: str
    aligned_model_hash: str
    diffusion_model_hash: str
    params_hash: str
    code_version: str


def batch_id_of(items: list[InboxItem]) -> str:
    """16 hex digits fixed by the batch's content: a re-run of the same images gets the same id."""
    return hashlib.sha256("\n".join(it.sha256 for it in items).encode()).hexdigest()[:16]


class RelabelJob:
    """One relabelling run over an inbox; see the module docstring.

    ``settings``: the ``relabel`` params (paths already resolved by the caller); ``projection``: the
    pipeline's; ``models``: the folders of :class:`sda.relabel.predict.SdaPredictor`.
    """

    def __init__(self, settings: Relabel, *, projection: Projection, image_size: int,
                 models: dict[str, Path], lineage: Lineage, seed: int, run_id: str,
                 flow_run_id: str | None = None, device: torch.device | str = "cpu",
                 inbox: Path | None = None, guard: GuardParams | None = None,
                 reference_dir: Path | None = None, computed_reference: Path | None = None) -> None:
        self.settings = settings
        # the pipeline's target_data: what each batch is monitored against (relabel.monitor)
        self.reference_dir = reference_dir if settings.monitor.enabled else None
        # the pipeline's monitor_reference out, when it was computed from these models: read, not recomputed
        self.computed_reference = computed_reference
        self.reference: Reference | None = None
        self.inputs: InputReference | None = None  # the input test's (relabel.monitor.inputs)
        self.monitor_dir = Path(settings.labels) / MONITOR_DIR
        # (labels, confidences, source features) per batch
        self.run_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.guard = guard if settings.adapt == "sda+bn" else None
        self.inbox = Path(inbox or settings.inbox)
        self.labels_dir, self.quarantine_dir = Path(settings.labels), Path(settings.quarantine)
        self.reports_dir = self.labels_dir / "_reports"  # "_" keeps it out of Parquet readers' way
        self.projection, self.image_size, self.models = projection, image_size, models
        self.lineage, self.seed, self.run_id, self.flow_run_id = lineage, seed, run_id, flow_run_id
        self.device = torch.device(device)
        # one lock per store (labels, quarantine), taken in path order: two runs that share either are serialised
        self._locks = [FileLock(str(p / ".relabel.lock")) for p in
                       sorted({self.labels_dir.resolve(), self.quarantine_dir.resolve()}, key=str)]
        self._parts_read: set[Path] = set()  # label part files whose hashes are in self._done
        self._done: set[str] = set()
        self.set_aside: list[str] = []  # corrupt part files moved out of the stores
        self.scan: Scan | None = None
        self.batches: list[list[InboxItem]] = []
        self.predictor: SdaPredictor | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "RelabelJob":
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        (self.quarantine_dir / "table").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        held = []
        try:
            for lock in self._locks:
                try:
                    lock.acquire(timeout=max(0.0, self.settings.lock_timeout_seconds - (time.perf_counter() - t0)))
                except Timeout:
                    raise RuntimeError(
                        f"another relabel run holds {lock.lock_file} for more than "
                        f"relabel.lock_timeout_seconds={self.settings.lock_timeout_seconds}; let it finish") from None
                held.append(lock)
            waited = time.perf_counter() - t0
            if waited > 1:
                log.info("waited %.1f s for another relabel run to finish", waited)
            self._start()
        except BaseException:
            for lock in reversed(held):
                lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self._locks):
            lock.release()

    def _start(self) -> None:
        for store in (self.labels_dir, self.quarantine_dir / "table", self.monitor_dir):
            if n := remove_stale_temps(store):
                log.info("removed %d temporary file(s) of a killed commit in %s", n, store)
        # a run killed while writing a report or copying a quarantined file leaves a temporary there;
        # that report's batch is committed, so no later run rewrites (and so replaces) it
        for folder, recursive in ((self.reports_dir, True), (self.quarantine_dir / "files", False),
                                  (self.labels_dir, False), (self.monitor_dir, False)):  # the scan index, the reference
            if n := clean_stale_temps(folder, recursive=recursive):
                log.info("removed %d temporary file(s) of a killed write in %s", n, folder)
        labelled = self._done = committed_hashes(self.labels_dir, parts_read=self._parts_read,
                                                 set_aside=self.set_aside)
        quarantined = committed_hashes(self.quarantine_dir / "table", set_aside=self.set_aside)
        for what in self.set_aside:
            log.warning("unreadable part file moved aside (its images will be labelled again): %s", what)
        self.scan = sc = scan_inbox(self.inbox, skip=labelled | quarantined, min_age_s=self.settings.min_age_seconds,
                                    max_bytes=self.settings.max_file_bytes, index=self._read_index())
        atomic_write_bytes(self._index_file, json.dumps({"inbox": str(self.inbox.resolve()),
                                                         "entries": sc.index}).encode())
        if self.settings.move_quarantined:  # a run killed after its quarantine commit left these behind
            files = self.quarantine_dir / "files"
            self._remove([it for it in sc.known if it.sha256 in quarantined
                          and (it.link or (files / safe_file_name(it.source, it.sha256)).is_file())])
        for folder, reason in sc.unlisted:
            log.warning("inbox folder %s not read: %s", folder or ".", reason)
        log.info("inbox %s: %d new image(s), %d already done, %d duplicate(s), %d too new, %d not images, "
                 "%d refused before decoding, %d symlink(s), %d folder(s) not listed", self.inbox, len(sc.items),
                 len(labelled) + len(quarantined), sc.duplicates, len(sc.too_new), len(sc.ignored),
                 len(sc.broken) - len(sc.symlinks), len(sc.symlinks), len(sc.unlisted))
        bs = self.settings.batch_size
        self.batches = [sc.items[i: i + bs] for i in range(0, len(sc.items), bs)]
        if sc.broken:
            items = [it for it, _ in sc.broken]
            self._quarantine(items, {it.sha256: r for it, r in sc.broken}, "refused-" + batch_id_of(items))
        if self.batches:  # once per run: with batch_size "auto" this measures a guided step on the GPU
            self.predictor = SdaPredictor(self.models, self.projection, self.device, guard=self.guard)
        if self.reference_dir is not None:
            self.reference = self._reference()
            if self.reference is not None and self.settings.monitor.inputs:
                self.inputs = self._input_reference()
        self._heal()

    def _heal(self) -> None:
        """Give each committed label batch that has none its monitor row and its report, from the label
        store itself (labels and confidences are committed per image): a run stopped between the label
        commit and those writes (a full disk, a kill) leaves no batch without them for good."""
        table = read_table(self.labels_dir, columns=["batch_id", "run_id", "flow_run_id", "label", "class_name",
                                                     "confidence"])
        if table is None:
            return
        monitored = read_table(self.monitor_dir, columns=["batch_id"]) if self.reference is not None else None
        have_row = set(monitored.column("batch_id").to_pylist()) if monitored is not None else set()
        have_report = {p.stem for p in self.reports_dir.glob("*/*.md")}
        batches: dict[str, list[dict]] = {}
        for r in table.to_pylist():
            batches.setdefault(r["batch_id"], []).append(r)
        for bid, mine in sorted(batches.items()):
            need_row = self.reference is not None and bid not in have_row
            if not need_row and bid in have_report:
                continue
            labels = np.asarray([r["label"] for r in mine])
            report = BatchReport(batch_id=bid, labelled=len(mine), label_counts=dict(Counter(r["class_name"] for r in mine)))
            if self.reference is not None:
                report.monitor = self.monitor_row(labels, np.asarray([r["confidence"] for r in mine]))
            if need_row:
                self._commit_monitor(bid, report.monitor, run_id=mine[0]["run_id"], flow_run_id=mine[0]["flow_run_id"])
            if bid not in have_report:
                write_report(self.reports_dir, report)
            log.warning("batch %s was committed without its %s (its run stopped before writing them): written now",
                        bid, " and ".join(w for w, missing in (("monitor row", need_row), ("report", bid not in have_report))
                                          if missing))

    def _reference(self) -> Reference | None:
        """The monitor's reference for these models and target domains: read from ``<labels>/_monitor/reference.json``,
        else the pipeline's (``computed_reference``: the ``monitor_reference`` stage's out), else computed from the
        pipeline's evaluated targets (:func:`sda.relabel.monitor.pipeline_reference`); saved there; None when
        it is not saved and there is nothing to label (no predictor is loaded)."""
        lin = self.lineage
        if self.predictor is None and not (self.reference_dir / INDEX).is_file():
            return None  # nothing to label and no evaluated targets: nothing to monitor against
        key = f"{lin.source_model_hash}:{lin.aligned_model_hash}:{lin.diffusion_model_hash}:{self._reference_settings}"

        def compute() -> Reference:
            adapted = self.predictor.adapted
            ref = pipeline_reference(self.reference_dir, self.predictor, images=self.settings.monitor.reference_images,
                                     seed=self.seed, key=key)
            self.predictor.adapted = adapted  # the reference's images are not the run's
            return ref

        return self._kept(self.monitor_dir / REFERENCE_FILE, Reference.load, key, compute, self._reference_settings,
                          lambda r: f"monitor reference: {len(r.confidences)} images of {len(r.domains)} evaluated "
                                    f"domain(s), SDA {r.accuracy:.1f} % there, ATC threshold {r.threshold:.3f}")

    @functools.cached_property
    def _reference_settings(self) -> str:
        """The reference's key but the models' (:func:`sda.relabel.monitor.reference_key`): what the pipeline's
        ``monitor_reference`` stage keys its copy with."""
        return reference_key(self.reference_dir, self.settings.monitor.reference_images, self.seed, self.settings.adapt)

    def _input_reference(self) -> InputReference | None:
        """The input test's reference (:func:`sda.relabel.monitor.input_reference`), kept in
        ``<labels>/_monitor/inputs.npz`` under the monitor reference's key; None when it is not saved and no
        model is loaded."""
        m = self.settings.monitor
        key = input_key(self.reference.key, m.input_images)
        settings = input_key(self._reference_settings, m.input_images)
        return self._kept(self.monitor_dir / INPUTS_FILE, InputReference.load, key,
                          lambda: input_reference(self.reference_dir, self.predictor.source, images=m.input_images,
                                                  seed=self.seed, key=key, device=self.device), settings,
                          lambda r: f"monitor input reference: {sum(len(p) for p in r.pools)} images of "
                                    f"{len(r.domains)} evaluated domain(s)")

    def _kept(self, path: Path, load, key: str, compute, settings: str, describe):
        """What ``load(path)`` gives when it was made under ``key``; else the pipeline's copy (the file of the
        same name in ``computed_reference``) when it was made under ``settings`` (``key`` but the models',
        which the pipeline's dvc.lock vouches for), else ``compute()``; saved at ``path`` and logged with
        ``describe``. None when it must be computed and no model is loaded (nothing to label)."""
        ref = load(path)
        if ref is not None and ref.key == key:
            return ref
        ref = load(self.computed_reference / path.name) if self.computed_reference is not None else None
        if ref is not None and ref.key == settings:
            ref.key = key
            how = f"from the pipeline's {self.computed_reference}"
        elif self.predictor is None:
            return None
        else:
            t0 = time.perf_counter()
            ref = compute()
            how = f"computed in {time.perf_counter() - t0:.1f} s"
        ref.save(path)
        log.info("%s (%s)", describe(ref), how)
        return ref

    def monitor_row(self, labels: np.ndarray, confidences: np.ndarray, features: np.ndarray | None = None,
                    batch_id: str = "") -> dict | None:
        """:func:`sda.relabel.monitor.monitor` of these predictions with ``relabel.monitor``'s settings;
        ``features`` (the source model's, of the originals): the input test too."""
        if self.reference is None:
            return None
        m = self.settings.monitor
        return monitor(labels, confidences, self.reference, self.class_names, min_images=m.min_images,
                       alpha=m.alpha, max_accuracy_drop=m.max_accuracy_drop, features=features, inputs=self.inputs,
                       input_alpha=m.input_alpha, permutations=m.permutations,
                       seed=derive_seed(self.seed, "input test", batch_id))

    @functools.cached_property
    def class_names(self) -> list[str]:
        return SourceClasses.read(self.models["classes"]).names

    # -- work ------------------------------------------------------------------------------------
    def process(self, batch: list[InboxItem]) -> BatchReport:
        """Validate, quarantine the bad, label the good, commit; returns the batch's report."""
        t0 = time.perf_counter()
        bid = batch_id_of(batch)
        good, errors = self._decode(batch)
        report = BatchReport(batch_id=bid)
        later = [it for it in batch
                 if it.sha256 in errors and self._readiness(it, errors[it.sha256]) is Readiness.UPLOADING]
        for it in later:
            log.info("left %s for a later run: %s, modified %.0f s ago (relabel.upload_grace_seconds=%g)", it.source,
                     errors.pop(it.sha256), time.time() - it.file_id.mtime_ns / 1e9, self.settings.upload_grace_seconds)
        report.deferred = len(later)
        bad = {sha: str(err) for sha, err in errors.items()}
        # exactly once does not rest on the lock alone: what was committed since the scan (a part file
        # written by anything else) is read again, under the lock, right before this batch commits
        self._done |= committed_hashes(self.labels_dir, skip_parts=set(self._parts_read), parts_read=self._parts_read,
                                       set_aside=self.set_aside)
        if already := [g for g in good if g[0].sha256 in self._done]:
            log.warning("%d image(s) of batch %s were labelled meanwhile by another writer: not labelled again",
                        len(already), bid)
            good = [g for g in good if g[0].sha256 not in self._done]
        if bad:
            items = [it for it in batch if it.sha256 in bad]
            report.quarantined = len(items)
            report.reasons = dict(Counter(bad[it.sha256].split(":", 1)[0] for it in items))
            report.quarantined_files = [(it.source, bad[it.sha256]) for it in items]
            self._quarantine(items, bad, bid)
        if good:
            assert self.predictor is not None
            images = np.stack([g[1] for g in good])
            pred, proj = self.predictor.predict(images, [derive_seed(self.seed, "relabel", g[0].sha256) for g in good])
            self._commit_labels(bid, good, pred)
            names = self.predictor.class_names
            report.labelled = len(good)
            report.label_counts = dict(Counter(names[i] for i in pred["label"]))
            report.grid_png = class_grid(images, proj, pred["label"], names, self.settings.grid_images,
                                         self.image_size)
            self.run_predictions.append((pred["label"], pred["confidence"], pred["features"]))
            if (row := self.monitor_row(pred["label"], pred["confidence"], pred["features"], bid)) is not None:
                report.monitor = row
                self._commit_monitor(bid, row)
                if row["drift"]:
                    log.warning("batch %s: drift, by %s (estimated accuracy %.1f %% against %.1f %%; %s)", bid,
                                ", ".join(row["fired"]), row["estimated_accuracy"], row["reference_accuracy"],
                                ", ".join(f"{k} p={t['p']:.2g}" for k, t in row["tests"].items()))
        report.seconds = time.perf_counter() - t0
        write_report(self.reports_dir, report)
        return report

    def _decode(self, batch: list[InboxItem]) -> tuple[list[tuple[InboxItem, np.ndarray, tuple[int, int], str]],
                                                        dict[str, BadImage]]:
        """(good: (item, uint8 model-size image, original (w, h), original PIL mode), bad: sha256 -> why)."""
        s = self.settings
        good, bad = [], {}
        for it in batch:
            try:
                data = it.read(s.max_file_bytes)  # the file the scan hashed, or BadImage
                img, mode = decode_image(data, max_pixels=s.max_pixels, min_side=s.min_side)
                # guided-diffusion's loader, as the target_data stage reads its images
                good.append((it, center_crop_arr(img, self.image_size, max_pixels=s.max_pixels), img.size, mode))
            except BadImage as err:
                bad[it.sha256] = err
            except Exception as err:  # one file never stops the batch: it is quarantined with the error
                bad[it.sha256] = BadImage(f"unreadable: {type(err).__name__}: {err}"[:300])
        return good, bad

    def _readiness(self, it: InboxItem, error: BadImage) -> Readiness:
        """:func:`sda.relabel.inbox.readiness` of an item that did not decode (``error``)."""
        age = math.inf if it.file_id is None else time.time() - it.file_id.mtime_ns / 1e9
        return readiness(PurePosixPath(it.rel).name, age_s=age, min_age_s=self.settings.min_age_seconds,
                         upload_grace_s=self.settings.upload_grace_seconds, member=it.member is not None,
                         decoded=error)

    def _commit_labels(self, bid: str, good: list, pred: dict[str, np.ndarray]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        names = self.predictor.class_names
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

    def _commit_monitor(self, bid: str, row: dict, run_id: str | None = None, flow_run_id: str | None = None) -> None:
        record = MonitorRow.of(row, batch_id=bid, run_id=run_id or self.run_id,
                               flow_run_id=flow_run_id if run_id else self.flow_run_id,
                               at=dt.datetime.now(dt.timezone.utc))
        commit_batch(self.monitor_dir, record.table(), bid)

    def _quarantine(self, items: list[InboxItem], reasons: dict[str, str], bid: str) -> None:
        """Copy the files into ``<quarantine>/files/``, commit their rows, then (optionally) remove
        them from the inbox. Each step is idempotent, so a kill between them is repaired by a re-run.
        A symlink, a file the scan did not read and a file that changed since get a row but no copy
        (``quarantined_as`` empty); only what was copied (and symlinks, as links) is removed."""
        names = [self._copy(it) for it in items]
        now = dt.datetime.now(dt.timezone.utc)
        n = len(items)
        table = pa.table({
            "file": [it.source for it in items], "sha256": [it.sha256 for it in items],
            "reason": [reasons[it.sha256] for it in items], "size_bytes": [it.size for it in items],
            "quarantined_as": names, "batch_id": [bid] * n, "run_id": [self.run_id] * n,
            "flow_run_id": [self.flow_run_id] * n, "quarantined_at": [now] * n,
        }, schema=QUARANTINE_SCHEMA)
        commit_batch(self.quarantine_dir / "table", table, bid, now)
        for it in items:
            log.warning("quarantined %s: %s", it.source, reasons[it.sha256])
        if self.settings.move_quarantined:
            self._remove([it for it, name in zip(items, names) if it.link or name])

    @property
    def _index_file(self) -> Path:
        return self.labels_dir / ".scan-index.json"

    def _read_index(self) -> dict[str, list]:
        """The last scan's index of this inbox (:attr:`sda.relabel.inbox.Scan.index`): files unchanged
        since and done are not read again. A missing, unreadable or other inbox's index is empty."""
        try:
            saved = json.loads(self._index_file.read_text())
        except (OSError, ValueError):
            return {}
        ok = isinstance(saved, dict) and saved.get("inbox") == str(self.inbox.resolve())
        return saved.get("entries", {}) if ok and isinstance(saved.get("entries"), dict) else {}

    def _copy(self, it: InboxItem) -> str:
        """Copy the bytes the scan read of ``it`` to ``<quarantine>/files/``, atomically, unless a
        copy is there; returns its name, or "" when there is nothing to copy (link, unread, changed)."""
        if it.link or not it.readable:
            return ""
        name = safe_file_name(it.source, it.sha256)
        dst = self.quarantine_dir / "files" / name
        if not dst.exists():
            try:
                data = it.read(self.settings.max_file_bytes)
            except BadImage as err:
                log.warning("%s not copied to quarantine: %s", it.source, err)
                return ""
            atomic_write_bytes(dst, data)
        return name

    def _remove(self, items: list[InboxItem]) -> None:
        """Remove inbox files (not tar members) that are still the files the scan read; symlinks as
        links. A file replaced or changed since stays, and so does anything outside the inbox."""
        root_fd = open_inbox(self.inbox)
        try:
            for it in items:
                if it.member is None and (it.link or it.file_id is not None):
                    unlink_if_same(root_fd, it.rel, None if it.link else it.file_id)
        finally:
            os.close(root_fd)
