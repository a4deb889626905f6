"""The near-copy thresholds of :mod:`sda.io.image_identity`, measured: how many distinct images match
(false matches) and how many re-encoded or resized copies do not (misses), with the shipped code.

Distinct pairs (2,000 of each kind, 10,000 in all; half of them both of one class, the hardest case,
half any two images of the kind; ``--all-pairs``: every pair): the shapes set's images (a shape on a noisy background, 40-72 px), printed
digits (16 fonts), scanned handwritten digits (scikit-learn's), objects on white (a shape of a random
colour on near-white paper: product photos) and photo crops (64-160 px crops of scikit-image's sample
photos, two crops of one photo per pair: the same scene, other places). Copies: each of 200 images a
kind as a JPEG at quality 95 / 75 / 50, halved, doubled, and at 3/4 size saved as JPEG 75.

    .venv/bin/python bench/near_duplicates.py
    .venv/bin/python bench/near_duplicates.py --pairs 4000 --grid   # the rates at other thresholds
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.io import image_identity as ident  # noqa: E402
from tests.support.datasets import SHAPES, _printed_digit, _scanned_digit, _shape_image  # noqa: E402


def _on_white(rng, shape: str, side: int) -> Image.Image:
    img = np.asarray(_shape_image(rng, shape, side), dtype=float)
    bg = np.median(img.reshape(-1, 3), axis=0)
    mask = (np.abs(img - bg).sum(-1) > 60)[..., None]
    paper = rng.uniform(235, 255, 3) + rng.normal(0, 2, img.shape)
    return Image.fromarray(np.clip(np.where(mask, img, paper), 0, 255).astype(np.uint8))


def _photos():
    import skimage.data as d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
                 "coins", "moon", "retina", "colorwheel", "horse", "brick", "grass", "gravel")
        out = []
        for n in names:
            a = getattr(d, n)()
            a = (a > 0).astype(np.uint8) * 255 if a.dtype == bool else a
            out.append(Image.fromarray(a).convert("RGB"))
        return out


def _crop(rng, photo: Image.Image) -> Image.Image:
    w, h = photo.size
    side = int(rng.integers(64, min(161, w, h)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return photo.crop((x, y, x + side, y + side))


def kinds(rng, n_per_class: int):
    """kind -> list of classes, each a list of distinct images."""
    from sklearn.datasets import load_digits

    hand = load_digits()
    photos = _photos()
    return {
        "shapes": [[_shape_image(rng, s, int(rng.integers(40, 73))) for _ in range(n_per_class)] for s in SHAPES],
        "printed digits": [[_printed_digit(rng, d, int(rng.integers(32, 57))) for _ in range(n_per_class)]
                           for d in range(10)],
        "scanned digits": [[_scanned_digit(rng, hand.images[i], 32) for i in np.flatnonzero(hand.target == d)[:n_per_class]]
                           for d in range(10)],
        "objects on white": [[_on_white(rng, s, int(rng.integers(48, 97))) for _ in range(n_per_class)] for s in SHAPES],
        "photo crops": [[_crop(rng, p) for _ in range(n_per_class)] for p in photos],
    }


def copies(img: Image.Image) -> dict[str, Image.Image]:
    def jpeg(im, q):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=q)
        return Image.open(b).convert("RGB")

    w, h = img.size
    return {"jpeg95": jpeg(img, 95), "jpeg75": jpeg(img, 75), "jpeg50": jpeg(img, 50),
            "half": img.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
            "double": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
            "3/4 + jpeg75": jpeg(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR), 75)}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000, help="distinct pairs of each kind (default %(default)s)")
    ap.add_argument("--grid", action="store_true", help="also the rates at other thresholds")
    ap.add_argument("--all-pairs", action="store_true",
                    help="every pair of distinct images of a kind instead of --pairs drawn (364,740 pairs; slow)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    sets = kinds(rng, 60)
    shipped = (ident.NEAR_PHASH_BITS, ident.NEAR_THUMB_RMSE, ident.NEAR_GREY_NCC)
    grid = [shipped] + ([(b, r, c) for b in (8, 10, 12) for r in (6.0, 8.0) for c in (0.0, 0.8, 0.9, 0.95)
                         if (b, r, c) != shipped] if args.grid else [])
    print(f"near copy = phash within {ident.NEAR_PHASH_BITS} of 64 bits, 4x4 RGB thumbnail rmse within "
          f"{ident.NEAR_THUMB_RMSE:g}, 16x16 grey correlation >= {ident.NEAR_GREY_NCC:g} "
          f"(imagehash {__import__('imagehash').__version__})")
    print(f"{'kind':<18} {'distinct pairs':>14} {'false matches':>13} {'copies':>7} {'missed':>7}   misses by copy kind")
    total = {g: [0, 0, 0, 0] for g in grid}
    for kind, classes in sets.items():
        fps = [[ident.fingerprint(i) for i in c] for c in classes]
        flat = [fp for c in fps for fp in c]
        if args.all_pairs:
            pairs = [ident.near_distances(flat[i], flat[j]) for i in range(len(flat)) for j in range(i + 1, len(flat))]
        else:
            pairs = []
            while len(pairs) < args.pairs:  # half of one class (the hardest), half of any two
                if len(pairs) % 2:
                    c = int(rng.integers(len(classes)))
                    i, j = rng.choice(len(classes[c]), 2, replace=False)
                    pairs.append(ident.near_distances(fps[c][i], fps[c][j]))
                else:
                    i, j = rng.choice(len(flat), 2, replace=False)
                    pairs.append(ident.near_distances(flat[i], flat[j]))
        near = {}
        for k in range(200):
            c, i = k % len(classes), (k // len(classes)) % len(classes[k % len(classes)])
            for how, img in copies(classes[c][i]).items():
                near.setdefault(how, []).append(ident.near_distances(fps[c][i], ident.fingerprint(img)))
        for g in grid:
            b, r, c = g
            false = sum(d <= b and t <= r and n >= c for d, t, n in pairs)
            missed = {how: sum(not (d <= b and t <= r and n >= c) for d, t, n in v) for how, v in near.items()}
            n_copies = sum(len(v) for v in near.values())
            total[g] = [x + y for x, y in zip(total[g], (len(pairs), false, n_copies, sum(missed.values())))]
            if g == grid[0]:
                by = ", ".join(f"{h} {m}" for h, m in missed.items() if m)
                print(f"{kind:<18} {len(pairs):>14} {false:>13} {n_copies:>7} {sum(missed.values()):>7}   {by}")
    for g, (n, false, n_copies, missed) in total.items():
        label = "all" if g == grid[0] else f"{g[0]} bits, rmse {g[1]:g}, ncc {g[2]:g}"
        print(f"{label:<18} {n:>14} {false:>13} {n_copies:>7} {missed:>7}   false-match rate {false / n:.2e}, "
              f"miss rate {missed / n_copies:.3f}")


if __name__ == "__main__":
    main()
