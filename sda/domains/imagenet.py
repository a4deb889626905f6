"""ImageNet, ImageNet-C and ImageNet-W as the ImageNet profile reads them, from local folders.

Layouts (the ones the datasets ship in):

- ImageNet val (or train): ``<root>/<class>/<file>`` with one folder per class (``n01440764`` ...),
  class index = position of the folder name in sorted order; or a flat ``<root>/<file>`` plus a
  label file of ``<file name> <class index>`` lines.
- ImageNet-C: ``<root>/<corruption>/<severity>/<class>/<file>`` (the same file names as val).
- ImageNet-W: rendered here from val with the ``imagenet-w`` package's watermark, on the 224 px
  evaluation crop (resize 256 + centre crop 224), as its authors render it.

Every image enters the pipeline through :func:`sda.io.images.center_crop_arr` at the profile's ``image_size``
(256): guided-diffusion's own loader (BOX halving while the shorter side is at least twice the
target, then bicubic to the target, centre crop), which is how DDA reads its references.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Sequence

import numpy as np
from PIL import Image
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from sda.config import Params, Section
from sda.domains.registry import Domain, PretrainedClassifier, PretrainedDiffusion, register_domain
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.shards import Sample, write_shards
from sda.io.target_index import TargetIndex

from sda.io.images import IMAGE_SUFFIXES, center_crop_arr, read_image
from sda.layout import SourceClasses
from sda.models.adm_flags import ADM_256_UNCOND


__all__ = [
    "ImageNet",
    "ImageRef",
    "class_names",
    "imagenet_c_refs",
    "imagenet_w_image",
    "iter_domain",
    "list_images",
    "select_classes",
    "write_source",
    "write_targets",
]


class ImageNet(Section):
    """The ImageNet profile's models and data, all read from local paths (relative to the repo root)."""

    adm_checkpoint: str = Field("models/256x256_diffusion_uncond.pt", description=(
        "Unconditional projector: a guided-diffusion state dict (.pt) or a folder written by "
        "`python -m sda.models.adm convert`."))
    adm_flags: dict[str, Any] = Field(default_factory=lambda: dict(ADM_256_UNCOND),
                                      description="guided-diffusion model flags of adm_checkpoint.")
    dit: str = Field("models/DiT-XL-2-256", description="diffusers DiT folder: transformer/ and vae/.")
    classifier_weights: str = Field("models/resnet50.pth", description=(
        "Weights of source_model.arch (.pth/.pt/.bin state dict or .safetensors)."))
    val_dir: str = Field("datasets/imagenet/val", description="ImageNet val: class folders, or flat with val_labels.")
    val_labels: str | None = Field(None, description="For a flat val_dir: lines '<file name> <class index>'.")
    imagenet_c_dir: str | None = Field("datasets/imagenet-c", description=(
        "ImageNet-C root: <corruption>/<severity>/<class>/<file>. null = no corruption domains."))
    severities: tuple[Annotated[int, Field(ge=1, le=5)], ...] = Field(
        (5,), min_length=1, description="ImageNet-C severities to evaluate (1-5).")
    imagenet_w: bool = Field(True, description="Add the ImageNet-W domain, rendered from val with imagenet-w.")
    train_dir: str | None = Field(None, description="Source train images (class folders) for finetune_steps > 0.")
    classes: tuple[str, ...] | None = Field(None, description="Subset: class folder names (or indices); null = all.")
    images_per_class: int | None = Field(None, ge=1, description="Subset: first N files per class; null = all.")
    image_size: int = Field(256, ge=16, description="Projection / generation resolution.")
    resize_size: int = Field(256, ge=16, description="Classifier input: resize (bicubic, shorter side) ...")
    crop_size: int = Field(224, ge=16, description="... then centre crop.")
    finetune_steps: int = Field(0, ge=0, description="diffusion_finetune: 0 = use the weights as they are.")
    finetune_lr: float = Field(1e-5, gt=0)
    finetune_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ImageNet":
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        return self

IMAGENET_C_URL = "https://zenodo.org/record/2235448 (ImageNet-C, Hendrycks & Dietterich 2019)"


@dataclass(frozen=True)
class ImageRef:
    """One source image: ``key`` is unique within a domain and the same across domains."""

    key: str
    path: Path
    label: int


def _need_dir(path: Path, what: str, where: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} not found; {where}")


def class_names(root: str | Path, label_file: str | Path | None = None) -> list[str]:
    """The class names in index order: sorted class folders of ``root``, or ``0 .. max`` of a label file."""
    root = Path(root)
    _need_dir(root, "ImageNet folder", "set imagenet.val_dir (class folders, or flat with imagenet.val_labels)")
    if label_file is not None:
        labels = _read_label_file(Path(label_file))
        return [str(i) for i in range(max(labels.values()) + 1)]
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class folders; for a flat folder set imagenet.val_labels")
    return names


def _read_label_file(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} not found (imagenet.val_labels)")
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected '<file name> <class index>', got {line!r}")
        out[Path(parts[0]).name] = int(parts[1])
    return out


def select_classes(names: list[str], classes: Sequence[str] | None) -> list[int]:
    """Indices (sorted) of the chosen class names or index strings; ``None`` = every class."""
    if classes is None:
        return list(range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    chosen = []
    for c in classes:
        if c in index:
            chosen.append(index[c])
        elif str(c).isdigit() and int(c) < len(names):
            chosen.append(int(c))
        else:
            raise ValueError(f"imagenet.classes: {c!r} is neither a class folder nor an index < {len(names)}")
    return sorted(set(chosen))


def list_images(root: str | Path, names: list[str], *, label_file: str | Path | None = None,
                classes: Sequence[str] | None = None, per_class: int | None = None) -> list[ImageRef]:
    """The images of an ImageNet-style folder, class by class in index order, files sorted by name;
    ``classes`` / ``per_class`` select a subset (the first ``per_class`` files of each class)."""
    root = Path(root)
    chosen = select_classes(names, classes)
    refs: list[ImageRef] = []
    if label_file is not None:
        labels = _read_label_file(Path(label_file))
        by_class: dict[int, list[str]] = {}
        for f, y in sorted(labels.items()):
            by_class.setdefault(y, []).append(f)
        for y in chosen:
            files = by_class.get(y, [])[:per_class]
            refs += [ImageRef(Path(f).stem, root / f, y) for f in files]
    else:
        for y in chosen:
            folder = root / names[y]
            _need_dir(folder, "class folder", f"every class of imagenet.classes must exist under {root}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
            refs += [ImageRef(p.stem, p, y) for p in files]
    if not refs:
        raise ValueError(f"no images found under {root} for the chosen classes")
    keys = [r.key for r in refs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{root}: file names are not unique across classes; keys must be")
    return refs


def imagenet_c_refs(root: str | Path, corruption: str, severity: int, val_refs: list[ImageRef],
                    names: list[str]) -> list[ImageRef]:
    """The ImageNet-C files of ``val_refs`` (same class folder, same file stem) for one domain."""
    base = Path(root) / corruption / str(severity)
    _need_dir(base, "ImageNet-C folder", f"expected <imagenet_c_dir>/{corruption}/{severity}/<class>/<file>; "
              f"get ImageNet-C from {IMAGENET_C_URL} or set imagenet.imagenet_c_dir: null")
    out = []
    for r in val_refs:
        folder = base / names[r.label]
        hits = [p for p in (folder / f"{r.key}{s}" for s in (".JPEG", ".jpeg", ".jpg", ".png")) if p.is_file()]
        if not hits:
            raise FileNotFoundError(f"{folder}/{r.key}.JPEG not found: ImageNet-C {corruption}/{severity} "
                                    "lacks a val image that the subset selects")
        out.append(ImageRef(r.key, hits[0], r.label))
    return out


def imagenet_w_image(path: Path, size: int, *, eval_resize: int = 256, eval_crop: int = 224) -> np.ndarray:
    """ImageNet-W: the val image's evaluation crop (resize ``eval_resize`` bicubic, centre crop
    ``eval_crop``) with the ``imagenet-w`` watermark, then :func:`sda.io.images.center_crop_arr` to ``size``."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = eval_resize / min(w, h)
        img = img.resize((round(w * s), round(h * s)), resample=Image.Resampling.BICUBIC)
        left, top = (img.size[0] - eval_crop) // 2, (img.size[1] - eval_crop) // 2
        img = img.crop((left, top, left + eval_crop, top + eval_crop))
        marked = _watermark(eval_crop)(img)
    return center_crop_arr(marked, size)


@functools.cache
def _watermark(size: int):
    """imagenet-w's ``AddWatermark`` for ``size`` px images (loads its font once per size)."""
    from imagenet_w import AddWatermark

    return AddWatermark(image_size=size)


def iter_domain(refs: list[ImageRef], size: int, domain: str, *, eval_resize: int = 256,
                eval_crop: int = 224) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(key, uint8 image, label)`` of each ref; ``domain == "imagenet_w"`` renders the watermark
    on the ``eval_resize`` / ``eval_crop`` evaluation crop."""
    for r in refs:
        img = (imagenet_w_image(r.path, size, eval_resize=eval_resize, eval_crop=eval_crop)
               if domain == "imagenet_w" else read_image(r.path, size))
        yield r.key, img, r.label


# -- the domain: the paper's ImageNet set-up -------------------------------------------------------
def write_source(params: Params, out: Path) -> dict[str, int]:
    """``classes.json`` (all names in index order + the selected indices) and, for
    fine-tuning, the selected train images at ``cfg.image_size``."""
    cfg = params.imagenet
    names = class_names(cfg.val_dir, cfg.val_labels)
    selected = select_classes(names, cfg.classes)
    counts = {}
    with atomic_dir(out) as tmp:
        if cfg.finetune_steps > 0:
            if cfg.train_dir is None:
                raise ValueError("imagenet.finetune_steps > 0 needs imagenet.train_dir (source images, class folders)")
            refs = list_images(cfg.train_dir, names, classes=cfg.classes, per_class=cfg.images_per_class)
            (tmp / "train").mkdir()
            samples = (Sample(key=k, image=im, label=y) for k, im, y in iter_domain(refs, cfg.image_size, "train"))
            counts["train"] = write_shards(samples, tmp / "train", meta={"split": "train", "root": cfg.train_dir})["count"]
        atomic_write_json(SourceClasses.path(tmp), SourceClasses(names, selected).as_dict())
    logging.getLogger("sda.source_data").info("%d classes (%d selected), %s", len(names), len(selected), counts or "no train images")
    return counts


def write_targets(params: Params, source_dir: Path, out: Path) -> list[str]:
    """ImageNet val / ImageNet-C / ImageNet-W domains of the selected subset; returns their names."""
    cfg, inet = params.target_data, params.imagenet
    names = class_names(inet.val_dir, inet.val_labels)
    val = list_images(inet.val_dir, names, label_file=inet.val_labels, classes=inet.classes,
                      per_class=inet.images_per_class)
    plan: list[tuple[str, list]] = [("clean", val)] if cfg.include_clean else []
    corrupted = []
    if inet.imagenet_c_dir is not None:
        for sev in inet.severities:
            for c in cfg.corruptions:
                d = c if len(inet.severities) == 1 else f"{c}_s{sev}"
                plan.append((d, imagenet_c_refs(inet.imagenet_c_dir, c, sev, val, names)))  # checks every file first
                corrupted.append(d)
    if inet.imagenet_w:
        plan.append(("imagenet_w", val))
    if not corrupted:
        raise ValueError("no corruption domain: set imagenet.imagenet_c_dir (and target_data.corruptions)")
    with atomic_dir(out) as tmp:
        for d, refs in tqdm(plan, desc="target_data", unit="domain"):
            (tmp / d).mkdir()
            samples = (Sample(key=k, image=im, label=y, meta={"domain": d})
                       for k, im, y in iter_domain(refs, inet.image_size, d, eval_resize=inet.resize_size,
                                                            eval_crop=inet.crop_size))
            write_shards(samples, tmp / d, prefix=d, maxcount=cfg.shard_maxcount,
                         meta={"domain": d, "image_size": inet.image_size})
        TargetIndex(domains=tuple(d for d, _ in plan), corruptions=tuple(cfg.corruptions),
                    in_mean=tuple(corrupted), severities=tuple(inet.severities), split="imagenet-val").write(tmp)
    logging.getLogger("sda.target_data").info("%d domains x %d images (%d classes)", len(plan), len(val), len({r.label for r in val}))
    return [d for d, _ in plan]


def _classifier(params: Params) -> PretrainedClassifier:
    """The paper's source classifier: ``imagenet.classifier_weights``, evaluated the reference way."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = params.imagenet
    return PretrainedClassifier(weights=cfg.classifier_weights, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                                resize=cfg.resize_size, crop=cfg.crop_size)


register_domain(Domain(
    name="imagenet",
    description=("the paper's ImageNet set-up: ADM, DiT-XL/2 and ImageNet / -C / -W from the local"
                 " paths of params.yaml `imagenet` (GPU)"),
    sections=("imagenet",),
    params_model=ImageNet,
    image_size=lambda p: p.imagenet.image_size,
    write_source=write_source,
    write_targets=write_targets,
    severities=lambda p: list(p.imagenet.severities),
    source_classifier=_classifier,
    pretrained_diffusion=lambda p: PretrainedDiffusion("imagenet"),
))
