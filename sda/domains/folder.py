"""The ``folder`` domain: SDA on your own labelled images (params section ``folder``).

Source (``folder.source_dir``): one folder per class, ``<class name>/<image files>`` (sub-folders
inside a class folder are read too); the sorted class names are the labels. The folders are read as
hostile input (:mod:`sda.io.user_folder`: no link followed, regular files only, bounded reads) and every
file is decoded as the relabel inbox decodes it (:func:`sda.io.images.decode_image`: size and pixel
limits of ``relabel``, full decode, EXIF orientation, any mode to RGB) before anything is counted, then
brought to ``folder.image_size`` by guided-diffusion's loader (shorter side resized, aspect kept, centre
crop). The images are split into train / val / test per class by ``runtime.seed``. Every file not used
(a link, a special or hidden file, an unsupported format, a file beside the class folders, an
undecodable image, a second copy of a picture in its class) is listed with its reason (the log, and
``skipped.json`` in the output). Layouts that would mislabel are refused: split folders (``train/``,
``val/``) or a data set's domains (``photo/``, ``sketch/``) taken for classes, the same picture under two
class names (by its pixels, or as a near copy: :mod:`sda.io.image_identity`), class names that are one
name up to case or Unicode normalisation.

Targets (``folder.target_dirs``, ``name: folder``): a folder with class sub-folders is a labelled
domain (its class names must be source classes; they get the source's labels; it may not be the source
folder, lie inside it or hold a picture of the source, by pixels or as a near copy); a flat folder of
images is an unlabelled domain (label -1): the pipeline predicts it, without an accuracy. With
``folder.corruptions`` (default) the ``target_data.corruptions`` of the source test split at
``target_data.severity`` are added (and ``clean``, the test split itself, with
``target_data.include_clean``), so every run has a table. The mean is taken over the labelled target
folders and the corruptions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from sda.config import Params, Section
from sda.domains.corruptions import write_shifted_domains
from sda.domains.registry import Domain, PretrainedClassifier, PretrainedDiffusion, register_domain
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.image_identity import Fingerprint, NearIndex
from sda.io.images import FOLDER_SUFFIXES, BadImage, center_crop_arr
from sda.io.console import printable
from sda.io.user_folder import SPLIT_NAMES, Listing, list_folder, read_files, require_folder
from sda.io.shards import Sample, load_shards, write_shards
from sda.io.target_index import TargetIndex
from sda.layout import SourceClasses
from sda.models.adm_flags import ADM_256_UNCOND
from sda.runtime import derive_seed


__all__ = ["Folder", "Inventory", "check_targets", "inventory", "read_source_pictures", "reserved_domain_names",
           "source_inventory", "source_pictures", "split_files", "target_inventories", "write_source", "write_targets"]

# in the source_data and target_data outs: the source pictures' identities (checked against the targets) and
# the files left out, with why
CONTENT = "content.json"
SKIPPED = "skipped.json"


class Folder(Section):
    """``profile: folder``: your own labelled images, read from local folders (paths relative to the repo
    root); the images decode as the relabel inbox's do (``relabel.max_file_bytes`` / ``max_pixels`` /
    ``min_side``), and files that cannot be read are listed and skipped."""

    source_dir: str | None = Field(None, description=(
        "The source domain: <class name>/<image files> (sub-folders allowed); sorted class names = labels."))
    target_dirs: dict[str, str] = Field(default_factory=dict, description=(
        "Target domains, name: folder. With class sub-folders (source class names) -> evaluated; "
        "flat (images only) -> labelled, no accuracy."))
    image_size: int = Field(32, ge=16, le=256, description=(
        "Side in pixels every image is brought to (shorter side resized, aspect kept, centre crop); "
        "a multiple of 8."))
    corruptions: bool = Field(True, description=(
        "Add target_data.corruptions at target_data.severity of the source test split as target domains."))
    classifier_weights: str | None = Field(None, description=(
        "Weights of source_model.arch for these classes (inputs normalised with the arch's timm mean / std); "
        "null = train source_model.arch on the source train split."))
    adm_checkpoint: str | None = Field(None, description=(
        "Start the projector from this unconditional ADM (guided-diffusion .pt or converted folder; with "
        "`dit`), fine-tuned on the source images at image_size; null = the UNet trained from scratch."))
    adm_flags: dict[str, Any] = Field(default_factory=lambda: dict(ADM_256_UNCOND),
                                      description="guided-diffusion model flags of adm_checkpoint.")
    dit: str | None = Field(None, description=(
        "Start the generator from this diffusers DiT folder (transformer/ + vae/; with `adm_checkpoint`): "
        "a new class table for these classes, fine-tuned on the source images at the DiT's own size."))
    finetune_steps: int = Field(2000, ge=1, description="Steps of each of the two fine-tunings (with `dit`).")
    finetune_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the fine-tunings (with `dit`).")
    finetune_batch_size: int = Field(16, ge=1)
    min_images_per_class: int = Field(10, ge=3, description="A source class with fewer image files is an error.")
    near_duplicates: bool = Field(True, description=(
        "Also treat near copies (a JPEG export, a resize) as the same picture, not only identical pixels: "
        "kept once in a class, refused across classes and between the source and a labelled target."))
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Source split, stratified, by runtime.seed.")
    test_fraction: float = Field(0.25, gt=0, lt=0.6)
    shard_maxcount: int = Field(1000, ge=1)

    @field_validator("image_size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (the UNet halves it twice), got {v}")
        return v

    @model_validator(mode="after")
    def _pretrained_pair(self) -> "Folder":
        if (self.adm_checkpoint is None) != (self.dit is None):
            raise ValueError("folder.adm_checkpoint and folder.dit start the projector and the generator from "
                             "pretrained weights together: set both, or neither (both trained from scratch)")
        return self

    @property
    def pretrained(self) -> bool:
        """Both diffusion models start from pretrained weights (``adm_checkpoint`` and ``dit``)."""
        return self.dit is not None

    @field_validator("target_dirs", mode="before")
    @classmethod
    def _yaml_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, folder in v.items():
                if not isinstance(name, str):
                    words = " (or on / off, true / false)" if isinstance(name, bool) else ""
                    raise ValueError(f"target name {_yaml_word(name)}{words} unquoted is read by YAML as "
                                     f"{type(name).__name__} {name!r}, not as a name; quote it: '{_yaml_word(name)}': {folder}")
        return v

    @field_validator("target_dirs")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or name == "clean":
                raise ValueError(f"target name {name!r}: use letters, digits, '-' or '_' (not 'clean')")
        return v

log = logging.getLogger("sda.domains.folder")


def _yaml_word(value: Any) -> str:
    """How a YAML key that was not text was likely written (``no`` for False, ``2019`` for 2019)."""
    return {True: "yes", False: "no"}[value] if isinstance(value, bool) else str(value)


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


@dataclass
class Inventory:
    """A user folder read and decoded once: per class (``""`` for a flat folder) the usable files
    (relative paths, sorted) and their :class:`~sda.io.image_identity.Fingerprint`, and every file not
    used with its reason (``skipped``: ``{"file", "reason"}``, the listing's and the decoding's, and second
    copies of a picture). ``dark``: greyscale files of 16 bits or more whose brightest pixel is at most
    16 of 255 (data of 12 bits or fewer stored in 16 without saying so: read nearly black). ``subfolders``:
    per class, the folders directly inside it that hold files (:class:`sda.io.user_folder.Listing`'s)."""

    root: Path
    labelled: bool
    files: dict[str, list[str]]
    fingerprints: dict[str, Fingerprint]
    skipped: list[dict[str, str]]
    sizes: list[tuple[int, int]]
    dark: list[str]
    subfolders: dict[str, set[str]]

    @property
    def counts(self) -> dict[str, int]:
        return {c: len(fs) for c, fs in self.files.items()}


def inventory(root: Path, key: str, params: Params, *, progress: bool = True) -> Inventory:
    """List ``root`` (:func:`sda.io.user_folder.list_folder`), refuse layouts that would mislabel, read and
    decode every image file once (``relabel``'s size and pixel limits), and keep one copy of a picture in
    a class (same pixels, or a near copy with ``folder.near_duplicates``; the others listed). The same
    picture under two class names is refused: its label is unknowable."""
    listing = list_folder(root, key)
    labelled = bool(listing.classes)
    _refuse_split_folders(list(listing.classes), root, key)
    _refuse_domain_folders(listing, key)
    wanted = listing.classes if labelled else {"": listing.flat}
    r = params.relabel
    skipped = list(listing.skipped)
    files: dict[str, list[str]] = {c: [] for c in wanted}
    prints: dict[str, Fingerprint] = {}
    sizes: list[tuple[int, int]] = []
    dark: list[str] = []
    seen = NearIndex(near=params.folder.near_duplicates)
    todo = [(c, f) for c, fs in wanted.items() for f in fs]
    read = read_files(root, [f for _, f in todo], max_bytes=r.max_file_bytes, max_pixels=r.max_pixels, min_side=r.min_side)
    for (cls, _), got in tqdm(zip(todo, read), total=len(todo), desc=f"reading {root}", disable=not progress,
                              leave=False, mininterval=2):
        if got.reason is not None:
            log.warning("skipped %s: %s", printable(str(root / got.rel)), got.reason)
            skipped.append({"file": str(root / got.rel), "reason": got.reason})
            continue
        match = seen.find(got.fingerprint)
        if match is not None:
            (other_cls, other), how = match
            if other_cls != cls:
                raise ValueError(f"{key}: the same picture is in class folders '{printable(other_cls)}' and "
                                 f"'{printable(cls)}' of {printable(str(root))} ({printable(other)}, {printable(got.rel)}: "
                                 f"{how}): its label is unknowable; remove one of them")
            skipped.append({"file": str(root / got.rel), "reason": f"the same picture as {other} ({how}): not read twice"})
            continue
        seen.add(got.fingerprint, (cls, got.rel))
        files[cls].append(got.rel)
        prints[got.rel] = got.fingerprint
        sizes.append(got.image.size)
        if (got.mode or "").startswith(("I", "F")) and got.image.getextrema()[1] <= 16:
            dark.append(got.rel)
    return Inventory(root, labelled, files, prints, skipped, sizes, dark, listing.subfolders)


def _refuse_domain_folders(listing: Listing, key: str) -> None:
    """Class folders that all hold the same class folders and no images of their own: a data set of
    ``<domain>/<class>/`` (PACS, Office-Home, DomainNet) named one level too high."""
    subs, root, name = listing.subfolders, listing.root, key.split(".")[-1]
    if len(subs) >= 2 and not any(listing.own_images.values()):
        first = next(iter(subs.values()))
        if len(first) >= 2 and all(s == first for s in subs.values()):
            domains = sorted(subs)
            example = ", ".join(sorted(first)[:4]) + (", ..." if len(first) > 4 else "")
            hint = (f"source_dir: {printable(str(root / domains[0]))} and target_dirs "
                    + ", ".join(f"{printable(d)}: {printable(str(root / d))}" for d in domains[1:]))
            raise ValueError(f"{key}: the folders of {printable(str(root))} ({', '.join(map(printable, domains))}) each "
                             f"hold the same class folders ({printable(example)}) and no images: a <domain>/<class>/ "
                             f"data set, its domains taken for classes; did you mean {hint}?"
                             if name == "source_dir" else
                             f"{key}: the folders of {printable(str(root))} ({', '.join(map(printable, domains))}) each "
                             f"hold the same class folders ({printable(example)}): a <domain>/<class>/ data set; name "
                             "each domain as its own target in folder.target_dirs")


def _inside(a: Path, b: Path) -> bool:
    """Whether folder ``a`` is ``b`` or lies inside it (both resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _refuse_split_folders(classes: list[str], root: Path, key: str) -> None:
    """Class folders named like a data set's splits (``train``, ``val``, ...): the folder is one level too high."""
    splits = sorted(c for c in classes if c.lower() in SPLIT_NAMES)
    if len(splits) >= 2 or (splits and len(splits) == len(classes)):
        guess = root / ("train" if "train" in splits else splits[0])
        raise ValueError(f"{key}: the class folders of {root} are split folders ({', '.join(splits)}), not "
                         f"classes; did you mean {key.split('.')[-1]}: {guess}?")


def _load(root: Path, rel: str, params: Params) -> np.ndarray:
    """uint8 (S, S, 3) at ``folder.image_size``; raises :class:`BadImage` (or OSError) with the reason."""
    r = params.relabel
    got = next(read_files(root, [rel], max_bytes=r.max_file_bytes, max_pixels=r.max_pixels, min_side=r.min_side,
                          identify=False))
    if got.image is None:
        raise BadImage(got.reason)
    return center_crop_arr(got.image, params.folder.image_size, max_pixels=r.max_pixels)


def _write_set(items: list[tuple[Path, int]], root: Path, out: Path, prefix: str, params: Params,
               meta: dict, skipped: list[dict[str, str]]) -> int:
    """Decode ``items`` into the shard set ``out`` (keys ``<prefix>-00000``, ...); a file that changed
    into an unusable one since the inventory goes to ``skipped``. Returns the number of images written."""

    def samples():
        for i, (path, label) in enumerate(items):
            rel = path.relative_to(root).as_posix()
            try:
                image = _load(root, rel, params)
            except (BadImage, OSError) as err:
                log.warning("skipped %s: %s", path, err)
                skipped.append({"file": str(root / rel), "reason": str(err)})
                continue
            yield Sample(key=f"{prefix}-{i:05d}", image=image, label=label, meta={"file": rel})

    out.mkdir()
    return write_shards(samples(), out, prefix=prefix, maxcount=params.folder.shard_maxcount, meta=meta)["count"]


def source_inventory(params: Params, *, progress: bool = True) -> Inventory:
    """``folder.source_dir`` read and checked (classes, split-named folders, images per class after
    decoding); raises ValueError / FileNotFoundError naming the key, the folder and what to do."""
    cfg = params.folder
    root = Path(cfg.source_dir)
    inv = inventory(root, "folder.source_dir", params, progress=progress)
    names = sorted(inv.files)
    if not inv.labelled:
        raise ValueError(f"folder.source_dir: {root} has no class folders; expected <class name>/<image files>")
    if len(names) < 2:
        inner = sorted(inv.subfolders[names[0]])
        hint = (f"; did you mean source_dir: {printable(str(root / names[0]))}? (its folders "
                f"{', '.join(map(printable, inner[:4]))}{', ...' if len(inner) > 4 else ''} look like the classes)"
                if len(inner) >= 2 else "")
        raise ValueError(f"folder.source_dir: {printable(str(root))} has one class folder ({printable(names[0])}); a "
                         f"classifier needs two or more{hint}")
    small = {n: k for n, k in inv.counts.items() if k < cfg.min_images_per_class}
    if small:
        raise ValueError(f"folder.source_dir: class folder(s) with fewer than folder.min_images_per_class="
                         f"{cfg.min_images_per_class} readable images: "
                         + ", ".join(f"{root / n} ({k})" for n, k in small.items())
                         + (f" ({len(inv.skipped)} file(s) not used: `sda check` lists them)" if inv.skipped else ""))
    return inv


def write_source(params: Params, out: Path) -> dict[str, int]:
    """``out/{train,val,test}`` shard sets, ``classes.json``, ``content.json`` (each file's split and
    :class:`~sda.io.image_identity.Fingerprint`, by file: the pictures a labelled target may not hold)
    and ``skipped.json``; returns the counts."""
    cfg = params.folder
    inv = source_inventory(params)
    root, names = inv.root, sorted(inv.files)
    splits = split_files({n: [root / f for f in fs] for n, fs in inv.files.items()}, cfg.val_fraction,
                         cfg.test_fraction, params.runtime.seed)
    skipped = list(inv.skipped)
    counts = {}
    with atomic_dir(out) as tmp:
        for split, items in splits.items():
            counts[split] = _write_set(items, root, tmp / split, split, params, skipped=skipped,
                                       meta={"split": split, "seed": params.runtime.seed, "image_size": cfg.image_size})
            if counts[split] == 0:
                raise ValueError(f"folder.source_dir: no readable image in the {split} split of {root} (see the log)")
        atomic_write_json(SourceClasses.path(tmp), SourceClasses(names).as_dict())
        atomic_write_json(tmp / CONTENT, {"files": {
            rel: {"split": split, **inv.fingerprints[rel].as_dict()}
            for split, items in splits.items() for rel in sorted(p.relative_to(root).as_posix() for p, _ in items)}})
        atomic_write_json(tmp / SKIPPED, skipped)
    log.info("source %s: %d classes, %s images, %d file(s) skipped%s", root, len(names), counts, len(skipped),
             " (listed in skipped.json)" if skipped else "")
    return counts


def reserved_domain_names() -> frozenset[str]:
    """Target names a folder may not take: the domains the pipeline writes itself (``clean`` and every
    corruption ``corrupt-tta`` knows)."""
    from sda.domains.corruptions import available_corruptions

    return frozenset({"clean", *available_corruptions()})


def target_inventories(params: Params, *, progress: bool = True) -> dict[str, Inventory]:
    """Each ``folder.target_dirs`` folder read and checked against the source folder (not the source
    folder nor inside it, nor holding it; class names the source's; no image content shared with the
    source's files when labelled)."""
    cfg = params.folder
    source_root = Path(cfg.source_dir)
    out: dict[str, Inventory] = {}
    for name, folder in cfg.target_dirs.items():
        key, root = f"folder.target_dirs.{name}", Path(folder)
        if root.is_dir() and source_root.is_dir() and (_inside(root, source_root) or _inside(source_root, root)):
            raise ValueError(f"{key}: {root} is the source folder, inside it or holds it ({source_root}): the target "
                             "would be the training images; point it at images the source does not hold")
        out[name] = inventory(root, key, params, progress=progress)
    return out


def source_pictures(files: dict[str, Fingerprint], source_root: Path, near: bool) -> NearIndex:
    """The source's pictures (file -> fingerprint, from :class:`Inventory` or ``content.json``) as an index
    a labelled target is checked against."""
    index = NearIndex(near=near)
    for rel, fp in sorted(files.items()):
        index.add(fp, source_root / rel)
    return index


def read_source_pictures(source_dir: Path, params: Params) -> NearIndex:
    """:func:`source_pictures` of ``source_data``'s ``content.json``."""
    content = json.loads((source_dir / CONTENT).read_text())
    if "files" not in content:
        raise ValueError(f"{source_dir / CONTENT} is from an older version of source_data; run "
                         "`dvc repro source_data` (or `python -m tasks.source_data`) again")
    files = {rel: Fingerprint(e["pixels"], e["phash"], e["thumb"], e["grey"]) for rel, e in content["files"].items()}
    return source_pictures(files, Path(params.folder.source_dir), params.folder.near_duplicates)


def check_targets(params: Params, targets: dict[str, Inventory], names: list[str], source: NearIndex) -> None:
    """Refuse a labelled target whose classes are not ``names`` or which holds a picture of the source
    (``source``: same pixels, or a near copy with ``folder.near_duplicates``), naming both files; one with
    no usable image."""
    folded = {n.casefold(): n for n in names}
    for name, inv in targets.items():
        key, root = f"folder.target_dirs.{name}", inv.root
        if inv.labelled:
            unknown = sorted(set(inv.files) - set(names))
            cased = [(u, folded[u.casefold()]) for u in unknown if u.casefold() in folded]
            if cased:
                u, n = cased[0]
                raise ValueError(f"{key}: class folder '{printable(u)}' of {printable(str(root))} is '{printable(n)}' in "
                                 "folder.source_dir: class names must match exactly, case too; rename it")
            if unknown:
                raise ValueError(f"{key}: class folder(s) {', '.join(map(printable, unknown))} of {printable(str(root))} are "
                                 f"not source classes ({', '.join(map(printable, names))}); rename them, or remove them to "
                                 "label the images without accuracy")
            shared = [(rel, match) for rel, fp in sorted(inv.fingerprints.items())
                      if (match := source.find(fp)) is not None]
            if shared:
                rel, (src_file, how) = shared[0]
                raise ValueError(f"{key}: {len(shared)} image(s) of {printable(str(root))} are also in "
                                 f"folder.source_dir (e.g. {printable(rel)} is {printable(str(src_file))}: {how}): the "
                                 "accuracy would be measured on training images; remove them")
        if not sum(inv.counts.values()):
            raise ValueError(f"{key}: no readable image file ({', '.join(sorted(FOLDER_SUFFIXES))}) in {printable(str(root))}"
                             + (f" ({len(inv.skipped)} file(s) not used: `sda check` lists them)" if inv.skipped else ""))


def write_targets(params: Params, source_dir: Path, out: Path) -> list[str]:
    """One shard set per target folder (labelled or not), then ``clean`` and the corruptions of the
    source test split (``folder.corruptions``); ``domains.json`` and ``skipped.json``. Returns the
    domain names."""
    cfg, td = params.folder, params.target_data
    names = SourceClasses.in_folder(source_dir).names
    targets = target_inventories(params)
    check_targets(params, targets, names, read_source_pictures(source_dir, params))
    plan = [(name, inv.root, [(inv.root / f, names.index(c) if inv.labelled else -1)
                              for c, fs in inv.files.items() for f in fs]) for name, inv in targets.items()]
    corruptions = list(td.corruptions) if cfg.corruptions else []
    shifted = (["clean"] if td.include_clean and cfg.corruptions else []) + corruptions
    labelled = [n for n, inv in targets.items() if inv.labelled]
    if not labelled and not corruptions:
        raise ValueError("folder: nothing to measure: add a target folder with class sub-folders to "
                         "folder.target_dirs, or set folder.corruptions: true")
    skipped: list[dict[str, str]] = [s for inv in targets.values() for s in inv.skipped]
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
        TargetIndex(domains=tuple(domains), corruptions=tuple(corruptions), in_mean=tuple(labelled + corruptions),
                    unlabelled=tuple(n for n, inv in targets.items() if not inv.labelled), split="test",
                    severity=td.severity).write(tmp)
        atomic_write_json(tmp / SKIPPED, skipped)
    log.info("%d target domains (%d labelled folders, %d unlabelled, %d from the source test split), %d file(s) "
             "skipped%s", len(domains), len(labelled), len(plan) - len(labelled), len(shifted), len(skipped),
             " (listed in skipped.json)" if skipped else "")
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
    # (corrupt-tta's names import scipy.ndimage, 0.4 s: read only when there is a target to compare)
    taken = sorted(set(params.folder.target_dirs) & reserved_domain_names()) if params.folder.target_dirs else []
    if taken:
        raise ValueError(f"folder.target_dirs: {', '.join(taken)} name(s) a domain the pipeline writes itself "
                         "(clean and the corruptions); rename the target, e.g. my_" + taken[0])


def _check_inputs(params: Params) -> None:
    _check(params)
    try:
        require_folder(params.folder.source_dir, "folder.source_dir")
        for name, path in params.folder.target_dirs.items():
            require_folder(path, f"folder.target_dirs.{name}")
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None


register_domain(Domain(
    name="folder",
    description="your labelled images: params.yaml `folder` (source_dir, target_dirs)",
    sections=("folder",),
    params_model=Folder,
    image_size=lambda p: p.folder.image_size,
    write_source=write_source,
    write_targets=write_targets,
    severities=lambda p: [p.target_data.severity],
    source_classifier=_classifier,
    pretrained_diffusion=lambda p: (PretrainedDiffusion("folder", new_class_table=True, image_size=p.folder.image_size)
                                    if p.folder.pretrained else None),
    check=_check,
    check_inputs=_check_inputs,
))
