"""The same picture by its pixels or as a near copy (sda.io.image_identity): real encoders, real files' bytes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sda.io.image_identity import NearIndex, fingerprint, near_distances
from sda.io.images import FOLDER_FORMATS, decode_image
from tests.support.datasets import SHAPES, _printed_digit, _shape_image
from tests.support.images import encode as _encode

LIMIT = 50_000_000


def _decode(data: bytes) -> Image.Image:
    return decode_image(data, max_pixels=LIMIT, formats=FOLDER_FORMATS)[0]


def _photo(seed: int = 0) -> Image.Image:
    return _shape_image(np.random.default_rng(seed), SHAPES[seed % 4], 64)


def test_every_lossless_encoding_is_the_same_picture_by_its_pixels():
    img = _photo()
    prints = {fmt: fingerprint(_decode(_encode(img, fmt, **kw))) for fmt, kw in (
        ("PNG", {}), ("PNG", {"compress_level": 1}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}))}
    assert len({fp.pixels for fp in prints.values()}) == 1
    grey = img.convert("L")  # a greyscale file and its RGB copy: one picture
    assert fingerprint(_decode(_encode(grey, "PNG"))).pixels == fingerprint(_decode(_encode(grey.convert("RGB"), "BMP"))).pixels
    assert fingerprint(_decode(_encode(_photo(1), "PNG"))).pixels != prints["PNG"].pixels


def test_a_jpeg_export_or_a_resize_is_a_near_copy_and_another_image_of_the_class_is_not():
    img = _photo()
    index = NearIndex()
    index.add(fingerprint(_decode(_encode(img, "PNG"))), "original")
    for copy in (_encode(img, "JPEG", quality=85), _encode(img.resize((96, 96), Image.Resampling.BICUBIC), "PNG")):
        owner, how = index.find(fingerprint(_decode(copy)))
        assert owner == "original" and how.startswith("near copy"), how
    rng = np.random.default_rng(3)
    others = [_shape_image(rng, SHAPES[0], 64) for _ in range(40)] + [_printed_digit(rng, 1, 48) for _ in range(40)]
    assert all(index.find(fingerprint(o)) is None for o in others)
    assert NearIndex(near=False).find(fingerprint(img)) is None  # exact only: the switch
    exact = NearIndex(near=False)
    exact.add(fingerprint(img), "x")
    assert exact.find(fingerprint(_decode(_encode(img, "JPEG", quality=85)))) is None
    assert exact.find(fingerprint(_decode(_encode(img, "BMP")))) == ("x", "same pixels")


def test_printed_digits_of_two_classes_on_like_paper_are_not_near_copies():
    """The pair that the hash and the colours alone took for one picture (1 and 3 of the digits set)."""
    rng = np.random.default_rng(0)
    ones = [fingerprint(_printed_digit(rng, 1, 40)) for _ in range(30)]
    threes = [fingerprint(_printed_digit(rng, 3, 40)) for _ in range(30)]
    for a in ones:
        for b in threes:
            bits, rmse, ncc = near_distances(a, b)
            assert not (bits <= 10 and rmse <= 6 and ncc >= 0.9), (bits, rmse, ncc)
