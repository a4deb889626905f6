"""Generated data sets for the tests and ``bench/``: a toy colour set, a tiny ImageNet-like folder
set, and two sets of someone's labelled images of another kind (shapes; printed digits against
handwriting scans)."""

from __future__ import annotations

from pathlib import Path

from tests.support.tiny_models import ADM_TINY_FLAGS, make_diffusion_models

def colour_classes(n: int = 120, seed: int = 0):
    """A toy labelled set: uint8 (n, 16, 16, 3) images whose class (0-2) is the bright colour channel."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, :, :, c] += 150
    return x, y


# --- a tiny ImageNet-like folder set (val, ImageNet-C layout)

WNIDS = ["n01440764", "n01443537", "n01484850"]
IMAGENET_CORRUPTIONS = ["gaussian_noise", "pixelate"]


def make_imagenet_assets(root: Path, per_class: int = 3, side: int = 40) -> dict:
    """Under ``root``: ``datasets/`` (val class folders of JPEGs of odd sizes around ``side`` px,
    ImageNet-C layout for two corruptions at severity 5) and ``models/`` (a guided-diffusion-format
    ADM state dict, a diffusers DiT folder with a tiny VAE, timm resnet18 weights). Returns the
    ``imagenet`` params."""
    import numpy as np
    import torch
    import timm
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            name = f"ILSVRC2012_val_{c * per_class + i + 1:08d}.JPEG"
            h, w = side + 7 * (i % 4), side + 12 - 3 * c
            base = np.zeros((h, w, 3), np.uint8)
            base[..., c] = 200  # class = dominant colour
            img = np.clip(base + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)
            for d in ["val", *[f"imagenet-c/{k}/5" for k in IMAGENET_CORRUPTIONS]]:
                out = root / "datasets" / d / wnid / name
                out.parent.mkdir(parents=True, exist_ok=True)
                arr = img if d == "val" else np.clip(img.astype(int) + rng.integers(-60, 60, img.shape), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(out, quality=90)
    models = make_diffusion_models(root)
    torch.save(timm.create_model("resnet18", num_classes=len(WNIDS)).state_dict(), models / "resnet18.pth")
    return {
        "adm_checkpoint": "models/adm.pt", "adm_flags": ADM_TINY_FLAGS, "dit": "models/dit",
        "classifier_weights": "models/resnet18.pth", "val_dir": "datasets/val",
        "imagenet_c_dir": "datasets/imagenet-c", "severities": [5], "imagenet_w": True,
        "classes": None, "images_per_class": 2, "image_size": 32, "resize_size": 32, "crop_size": 28,
    }


SHAPES = ("circle", "square", "triangle", "cross")


def _shape_image(rng, shape: str, side: int, *, light: float = 1.0, blur: float = 0.0):
    """A ``side`` px RGB PIL image: one shape of a random colour, size and place on a textured
    background; ``light`` scales the brightness and ``blur`` (px) softens it (another camera / site)."""
    from PIL import Image, ImageDraw, ImageFilter

    import numpy as np

    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 10, (side, side, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(img)
    fg = tuple(int(c) for c in (255 - bg + rng.integers(-40, 40, 3)) % 256)
    r = side * rng.uniform(0.26, 0.34)
    cx, cy = side / 2 + rng.uniform(-0.06, 0.06, 2) * side
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "square":
        draw.regular_polygon((cx, cy, r), 4, rotation=float(rng.uniform(-10, 10)), fill=fg)
    elif shape == "triangle":
        draw.regular_polygon((cx, cy, r), 3, rotation=float(rng.uniform(-10, 10)), fill=fg)
    else:
        w = r / 2.5
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if light != 1.0:
        img = Image.fromarray(np.clip(np.asarray(img, dtype=float) * light, 0, 255).astype("uint8"))
    return img


def _save(img, path: Path, i: int) -> None:
    """PNG, JPEG, greyscale PNG or RGBA PNG by ``i``, as cameras and export tools mix them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = i % 4
    if kind == 0:
        img.save(path.with_suffix(".png"))
    elif kind == 1:
        img.save(path.with_suffix(".jpg"), quality=90)
    elif kind == 2:
        img.convert("L").save(path.with_suffix(".png"))
    else:
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path.with_suffix(".png"))


def make_folder_set(root: Path, per_class: int = 30, target_per_class: int = 10, flat: int = 12,
                    seed: int = 0) -> dict[str, str]:
    """Under ``root``: ``source/<shape>/`` (nested sub-folders, mixed formats and sizes 40-72 px, one
    truncated file), ``site_b/<shape>/`` (darker, blurred: a labelled target) and ``site_c/`` (flat,
    unlabelled). Returns the ``folder`` params (paths as given)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for c, shape in enumerate(SHAPES):
        for i in range(per_class):
            side = int(rng.integers(40, 73))
            sub = f"batch{i % 2}/" if i % 3 == 0 else ""  # nested folders inside a class folder
            _save(_shape_image(rng, shape, side), root / "source" / shape / f"{sub}{shape}_{i:03d}", i + c)
        for i in range(target_per_class):
            img = _shape_image(rng, shape, int(rng.integers(40, 73)), light=0.45, blur=1.5)
            _save(img, root / "site_b" / shape / f"b_{i:03d}", i)
    for i in range(flat):
        img = _shape_image(rng, SHAPES[i % len(SHAPES)], 56, light=0.45, blur=1.5)
        _save(img, root / "site_c" / f"c_{i:03d}", i)
    broken = root / "source" / SHAPES[0] / "broken.jpg"
    good = next((root / "source" / SHAPES[0]).glob("*.jpg")).read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # truncated: listed and skipped, never a crash
    return {"source_dir": str(root / "source"), "target_dirs": {"site_b": str(root / "site_b"),
                                                                 "site_c": str(root / "site_c")}}


# --- a second folder set of another kind: printed digits as the source, low-resolution scans of
# handwritten digits as the target (another acquisition: style and resolution, no synthetic corruption)

DIGIT_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono", "DejaVuSansMono-Bold",
               "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol",
               "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10", "cmb10", "cmti10")


def _printed_digit(rng, digit: int, side: int):
    """A ``side`` px RGB PIL image of ``digit`` printed in one of matplotlib's bundled fonts: dark ink
    on tinted paper, random size, tilt and place, a little sensor noise."""
    import matplotlib
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    font = ImageFont.truetype(str(fonts / f"{DIGIT_FONTS[rng.integers(len(DIGIT_FONTS))]}.ttf"),
                              int(side * rng.uniform(0.55, 0.8)))
    glyph = Image.new("L", (side, side), 0)
    ImageDraw.Draw(glyph).text((side / 2 + rng.uniform(-0.08, 0.08) * side, side / 2 + rng.uniform(-0.08, 0.08) * side),
                               str(digit), fill=255, font=font, anchor="mm")
    ink = np.asarray(glyph.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR), dtype=float)[..., None] / 255
    paper = rng.uniform(185, 255, 3)
    pen = rng.uniform(0, 90, 3)
    img = paper * (1 - ink) + pen * ink + rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype("uint8"))


def _scanned_digit(rng, pixels, side: int):
    """A scikit-learn handwritten digit (8 x 8, 17 grey levels) as a low-resolution scan: dark ink on
    light paper, upsampled bilinearly to ``side`` px, with scanner noise."""
    import numpy as np
    from PIL import Image

    ink = Image.fromarray((np.asarray(pixels, dtype=float).reshape(8, 8) * (255 / 16)).astype("uint8"))
    ink = np.asarray(ink.resize((side, side), Image.BILINEAR), dtype=float)[..., None] / 255
    paper, pen = rng.uniform(200, 245, 3), rng.uniform(10, 70, 3)
    img = paper * (1 - ink) + pen * ink + rng.normal(0, 8, (side, side, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype("uint8"))


def make_digits_set(root: Path, per_class: int = 40, target_per_class: int = 30, flat: int = 20,
                    seed: int = 0) -> dict[str, str]:
    """Under ``root``: ``printed/<digit>/`` (digits 0-9 in 16 fonts, 32-56 px, mixed formats),
    ``scans/<digit>/`` (handwritten digits of scikit-learn's set as 8 px scans upsampled to 32 px: a
    labelled target of another acquisition) and ``new_scans/`` (flat, unlabelled). Returns the
    ``folder`` params."""
    import numpy as np
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    hand = load_digits()
    order = rng.permutation(len(hand.target))
    by_class = {d: [i for i in order if hand.target[i] == d] for d in range(10)}
    for d in range(10):
        for i in range(per_class):
            _save(_printed_digit(rng, d, int(rng.integers(32, 57))), root / "printed" / str(d) / f"p{d}_{i:03d}", i + d)
        for i in by_class[d][:target_per_class]:
            _save(_scanned_digit(rng, hand.images[i], 32), root / "scans" / str(d) / f"scan_{i:04d}", int(i) % 2)
    rest = [i for d in range(10) for i in by_class[d][target_per_class:]]
    for i in rng.choice(rest, size=flat, replace=False):
        _save(_scanned_digit(rng, hand.images[i], 32), root / "new_scans" / f"scan_{int(i):04d}", int(i) % 2)
    return {"source_dir": str(root / "printed"), "target_dirs": {"scans": str(root / "scans"),
                                                                  "new_scans": str(root / "new_scans")}}
