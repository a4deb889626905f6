"""The ``folder`` domain: SDA on your own labelled images (params section ``folder``).

Source (``folder.source_dir``): one folder per class, ``<class name>/<image files>`` (sub-folders
inside a class folder are read too; hidden files and folders are not); the sorted class names are
the labels. Every file is decoded as the relabel inbox decodes it (:func:`sda.io.images.decode_image`:
size and pixel limits of ``relabel``, full decode, EXIF orientation, any mode to RGB), then brought
to ``folder.image_size`` by guided-diffusion's loader (shorter side resized, aspect kept, centre
crop). The images are split into train / val / test per class by ``runtime.seed``. A file that
cannot be read is skipped and listed with its reason (the log, and ``skipped.json`` in the output).

Targets (``folder.target_dirs``, ``name: folder``): a folder with class sub-folders is a labelled
domain (its class names must be source classes; they get the source's labels); a flat folder of
images is an unlabelled domain (label -1): the pipeline predicts it, without an accuracy. With
``folder.corruptions`` (default) the ``target_data.corruptions`` of the source test split at
``target_data.severity`` are added (and ``clean``, the test split itself, with
``target_data.include_clean``), so every run has a table. The mean is taken over the labelled target
folders and the corruptions.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from sda.config import Params
from sda.domains.corruptions import write_shifted_domains
from sda.domains.registry import Domain, PretrainedClassifier, register_domain
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.images import IMAGE_SUFFIXES, BadImage, center_crop_arr, check_file_size, decode_image
from sda.io.shards import Sample, load_shards, write_shards
from sda.runtime import derive_seed

__all__ = ["class_folders", "image_files", "split_files", "write_source", "write_targets"]

log = logging.getLogger("sda.domains.folder")


def _need_folder(path: Path, key: str) -> None:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise FileNotFoundError(f"{key}: {path} {what}; point it at a folder of images (paths are relative to "
                                "the repository root)")


def class_folders(root: Path) -> list[str]:
    """The sorted names of the visible sub-folders of ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files (by suffix) under ``folder``, hidden files and folders skipped, sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [Path(dirpath) / n for n in filenames
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def split_files(files: dict[str, list[Path]], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[tuple[Path, int]]]:
    """Per class, a seeded shuffle cut into test / val / train (at least one image each in test and
    val); returns ``{"train" | "val" | "test": [(file, label), ...]}`` in class, then path order."""
    out: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(sorted(files)):
        fs = files[name]
        order = np.random.default_rng(derive_seed(seed, "folder split", name)).permutation(len(fs))
        n_test = max(1, round(len(fs) * test_fraction))
        n_val = max(1, round(len(fs) * val_fraction))
        for split, idx in (("test", order[:n_test]), ("val", order[n_test: n_test + n_val]),
                           ("train", order[n_test + n_val:])):
            out[split] += [(fs[i], label) for i in sorted(idx)]
    return out


def _load(path: Path, params: Params) -> np.ndarray:
    """uint8 (S, S, 3) at ``folder.image_size``; raises :class:`BadImage` (or OSError) with the reason."""
    r = params.relabel
    check_file_size(path.stat().st_size, r.max_file_bytes)
    img, _ = decode_image(path.read_bytes(), max_pixels=r.max_pixels, min_side=r.min_side)
    return center_crop_arr(img, params.folder.image_size, max_pixels=r.max_pixels)


def _write_set(items: list[tuple[Path, int]], root: Path, out: Path, prefix: str, params: Params,
               meta: dict, skipped: list[dict[str, str]]) -> int:
    """Decode ``items`` into the shard set ``out`` (keys ``<prefix>-00000``, ...); unreadable files go
    to ``skipped``. Returns the number of images written."""

    def samples():
        for i, (path, label) in enumerate(items):
            rel = path.relative_to(root).as_posix()
            try:
                image = _load(path, params)
            except (BadImage, OSError) as err:
                reason = str(err) if isinstance(err, BadImage) else f"unreadable: {err}"
                log.warning("skipped %s: %s", path, reason)
                skipped.append({"file": str(root / rel), "reason": reason})
                continue
            yield Sample(key=f"{prefix}-{i:05d}", image=image, label=label, meta={"file": rel})

    out.mkdir()
    return write_shards(samples(), out, prefix=prefix, maxcount=params.folder.shard_maxcount, meta=meta)["count"]


def write_source(params: Params, out: Path) -> dict[str, int]:
    """``out/{train,val,test}`` shard sets, ``classes.json`` and ``skipped.json``; returns the counts."""
    cfg = params.folder
    root = Path(cfg.source_dir)
    _need_folder(root, "folder.source_dir")
    names = class_folders(root)
    if not names:
        raise ValueError(f"folder.source_dir: {root} has no class folders; expected <class name>/<image files>")
    if len(names) < 2:
        raise ValueError(f"folder.source_dir: {root} has one class folder ({names[0]}); a classifier needs two or more")
    files = {n: image_files(root / n) for n in names}
    small = {n: len(f) for n, f in files.items() if len(f) < cfg.min_images_per_class}
    if small:
        raise ValueError(f"folder.source_dir: class folder(s) with fewer than folder.min_images_per_class="
                         f"{cfg.min_images_per_class} images: " + ", ".join(f"{root / n} ({k})" for n, k in small.items()))
    splits = split_files(files, cfg.val_fraction, cfg.test_fraction, params.runtime.seed)
    skipped: list[dict[str, str]] = []
    counts = {}
    with atomic_dir(out) as tmp:
        for split, items in splits.items():
            counts[split] = _write_set(items, root, tmp / split, split, params, skipped=skipped,
                                       meta={"split": split, "seed": params.runtime.seed, "image_size": cfg.image_size})
            if counts[split] == 0:
                raise ValueError(f"folder.source_dir: no readable image in the {split} split of {root} (see the log)")
        atomic_write_json(tmp / "classes.json", {"names": names})
        atomic_write_json(tmp / "skipped.json", skipped)
    log.info("source %s: %d classes, %s images, %d file(s) skipped", root, len(names), counts, len(skipped))
    return counts


def write_targets(params: Params, source_dir: Path, out: Path) -> list[str]:
    """One shard set per target folder (labelled or not), then ``clean`` and the corruptions of the
    source test split (``folder.corruptions``); ``domains.json`` and ``skipped.json``. Returns the
    domain names."""
    cfg, td = params.folder, params.target_data
    names = json.loads((source_dir / "classes.json").read_text())["names"]
    plan: list[tuple[str, Path, list[tuple[Path, int]]]] = []
    for name, folder in cfg.target_dirs.items():
        root = Path(folder)
        _need_folder(root, f"folder.target_dirs.{name}")
        classes = class_folders(root)
        if classes:
            unknown = sorted(set(classes) - set(names))
            if unknown:
                raise ValueError(f"folder.target_dirs.{name}: class folder(s) {unknown} of {root} are not source "
                                 f"classes {names}; rename them, or remove them to label the images without accuracy")
            items = [(f, names.index(c)) for c in classes for f in image_files(root / c)]
        else:
            items = [(f, -1) for f in image_files(root, recursive=False)]
        if not items:
            raise ValueError(f"folder.target_dirs.{name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
        plan.append((name, root, items))
    corruptions = list(td.corruptions) if cfg.corruptions else []
    shifted = (["clean"] if td.include_clean and cfg.corruptions else []) + corruptions
    labelled = [n for n, _, items in plan if items[0][1] >= 0]
    if not labelled and not corruptions:
        raise ValueError("folder: nothing to measure: add a target folder with class sub-folders to "
                         "folder.target_dirs, or set folder.corruptions: true")
    skipped: list[dict[str, str]] = []
    with atomic_dir(out) as tmp:
        for name, root, items in plan:
            n = _write_set(items, root, tmp / name, name, params, skipped=skipped,
                           meta={"domain": name, "folder": str(root), "image_size": cfg.image_size})
            if n == 0:
                raise ValueError(f"folder.target_dirs.{name}: no readable image in {root} (see the log)")
        if shifted:
            write_shifted_domains(load_shards(source_dir / "test"), tmp, shifted, severity=td.severity,
                                  seed=params.runtime.seed, maxcount=td.shard_maxcount,
                                  meta={"severity": td.severity, "split": "test", "seed": params.runtime.seed})
        domains = [n for n, _, _ in plan] + shifted
        atomic_write_json(tmp / "domains.json", {
            "domains": domains, "corruptions": corruptions, "corruption_domains": labelled + corruptions,
            "unlabelled": [n for n, _, items in plan if items[0][1] < 0],
            "split": "test", "severity": td.severity})
        atomic_write_json(tmp / "skipped.json", skipped)
    log.info("%d target domains (%d labelled folders, %d unlabelled, %d from the source test split), %d file(s) "
             "skipped", len(domains), len(labelled), len(plan) - len(labelled), len(shifted), len(skipped))
    return domains


def _classifier(params: Params) -> PretrainedClassifier | None:
    """``folder.classifier_weights`` with its arch's timm mean / std (ImageNet's when it has none)."""
    if params.folder.classifier_weights is None:
        return None
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = timm.models.get_pretrained_cfg(params.source_model.arch)
    mean = getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD
    return PretrainedClassifier(weights=params.folder.classifier_weights, mean=mean, std=std)


def _check(params: Params) -> None:
    if params.folder.source_dir is None:
        raise ValueError("folder.source_dir is not set: name your labelled images (<class>/<files>) in params.yaml")


register_domain(Domain(
    name="folder",
    description="your labelled images: params.yaml `folder` (source_dir, target_dirs)",
    sections=("folder",),
    image_size=lambda p: p.folder.image_size,
    write_source=write_source,
    write_targets=write_targets,
    severities=lambda p: [p.target_data.severity],
    source_classifier=_classifier,
    pretrained_diffusion=lambda p: "folder" if p.folder.pretrained else None,
    check=_check,
))
