"""The same picture by its pixels or as a near copy (sda.io.image_identity), and high bit depths decoded by
the file's range (sda.io.images): real encoders, real files' bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from sda.io.image_identity import NearIndex, fingerprint, near_distances
from sda.io.images import FOLDER_FORMATS, center_crop_arr, decode_image, png_significant_bits
from tests.support.datasets import SHAPES, _printed_digit, _shape_image

LIMIT = 50_000_000


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


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


def _png_with_sbit(arr: np.ndarray, bits: int) -> bytes:
    """A 16-bit PNG of ``arr`` (greyscale or RGB) with an sBIT chunk of ``bits`` inserted after IHDR."""
    data = _encode(Image.fromarray(arr), "PNG") if arr.ndim == 2 else _rgb16_png(arr)
    channels = 1 if arr.ndim == 2 else 3
    body = b"sBIT" + bytes([bits] * channels)
    chunk = struct.pack(">I", channels) + body + struct.pack(">I", zlib.crc32(body))
    return data[:33] + chunk + data[33:]  # 8-byte signature + 25-byte IHDR chunk


def _rgb16_png(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow writes none: OpenCV does)."""
    import cv2

    ok, enc = cv2.imencode(".png", np.ascontiguousarray(arr[..., ::-1]))
    assert ok
    return enc.tobytes()


@pytest.mark.parametrize("channels", [1, 3])
def test_12_bit_data_in_16_bits_is_scaled_by_the_png_sbit(channels):
    rng = np.random.default_rng(0)
    shape = (24, 24) if channels == 1 else (24, 24, 3)
    twelve = rng.integers(0, 4096, shape).astype(np.uint16)
    twelve.flat[0], twelve.flat[1] = 0, 4095
    data = _png_with_sbit(twelve, 12)
    assert png_significant_bits(data) == 12
    got = np.asarray(_decode(data)).astype(int)
    want = (twelve.astype(int) * 255 + 2047) // 4095
    assert np.abs(got - want).max() <= 1 and got.max() == 255
    plain = np.asarray(_decode(_encode(Image.fromarray(twelve), "PNG"))) if channels == 1 else None
    if plain is not None:  # without sBIT: read as 16-bit, nearly black (the check warns), not stretched
        assert plain.max() <= 16


def test_integer_images_are_never_stretched_per_image():
    """Two 32-bit TIFFs of one scene at different exposures keep their difference; a 16-bit image too."""
    scene = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    means = []
    for exposure in (0.25, 1.0):
        buf = io.BytesIO()
        tifffile.imwrite(buf, (scene * exposure * (2**32 - 1)).astype(np.uint32))
        means.append(np.asarray(_decode(buf.getvalue())).mean())
    assert abs(means[1] / means[0] - 4) < 0.1, means
    dim16 = (scene * 0.25 * 65535).astype(np.uint16)
    assert abs(np.asarray(_decode(_encode(Image.fromarray(dim16), "PNG"))).max() - 64) <= 1


def test_a_greyscale_image_resized_as_l_gives_the_pixels_of_its_rgb_copy():
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 256, (77, 131), np.uint8))
    assert np.array_equal(center_crop_arr(grey, 32), center_crop_arr(grey.convert("RGB"), 32))
