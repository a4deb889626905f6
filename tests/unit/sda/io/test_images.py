"""sda.io.images: decoding that never trusts a file (a one-line reason for every bad one), any mode and bit
depth to 8 bits by the file's range, guided-diffusion's centre crop, and the uint8 <-> [-1, 1] conversions.
Real encoders, real files' bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sda.io.images import (FOLDER_FORMATS, BadImage, center_crop_arr, check_file_size, decode_image,
                           png_significant_bits, read_image, to_uint8, to_unit_range)

from tests.support.images import encode as _encode, huge_header_png, png_bytes, png_chunk, rgb

LIMIT = 40_000_000


def _decode(data: bytes) -> Image.Image:
    return decode_image(data, max_pixels=LIMIT, formats=FOLDER_FORMATS)[0]


# -- moved from tests/unit/sda/relabel/test_inbox.py ---------------------------------------------
@pytest.mark.parametrize("data, reason, cut_short", [
    (b"", "empty file", True),
    (b"hello, I am a text file", "not an image", False),
    (png_bytes(rgb())[:-40], "truncated or corrupt", True),
    (png_bytes(rgb())[:60], "truncated or corrupt", True),
    (huge_header_png(), "too many pixels: .*2500000000 pixels", False),
    (png_bytes(rgb(size=4)), "too small", False),
])
def test_bad_bytes_raise_with_a_reason(data, reason, cut_short):
    with pytest.raises(BadImage, match=reason) as err:
        decode_image(data, max_pixels=LIMIT, min_side=8)
    assert err.value.cut_short is cut_short


def test_truncated_jpeg_is_rejected():
    buf = io.BytesIO()
    Image.fromarray(rgb(size=64)).save(buf, format="JPEG", quality=90)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], max_pixels=LIMIT)


def test_odd_modes_are_converted_not_rejected():
    grey = np.linspace(0, 255, 400).reshape(20, 20).astype(np.uint8)
    cases = {
        "L": _encode(Image.fromarray(grey, "L"), "PNG"),
        "RGBA": _encode(Image.fromarray(np.dstack([rgb(), np.full((20, 20), 128, np.uint8)]), "RGBA"), "PNG"),
        "CMYK": _encode(Image.fromarray(rgb()).convert("CMYK"), "JPEG"),
        "P": _encode(Image.fromarray(rgb()).convert("P"), "PNG"),
        "I;16": _encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "WEBP": _encode(Image.fromarray(rgb()), "WEBP"),
    }
    for name, data in cases.items():
        img, mode = decode_image(data, max_pixels=LIMIT)
        # greyscale stays single-channel until resized (a third of the memory); the rest is RGB
        assert img.mode == ("L" if name in ("L", "I;16") else "RGB") and img.size == (20, 20), name
        assert center_crop_arr(img, 16).shape == (16, 16, 3)
        if name != "WEBP":
            assert mode.startswith(name.split(";")[0]), (name, mode)
    # 16-bit is rescaled, not clipped to white: the darkest and brightest pixels survive
    img, _ = decode_image(cases["I;16"], max_pixels=LIMIT)
    arr = np.asarray(img)
    assert arr.min() <= 1 and arr.max() >= 254 and 100 < arr.mean() < 155


def test_model_images_are_a_centre_crop_at_the_model_size():
    """Red | green | blue thirds, 60 x 30: the shorter side goes to 16, the middle 16 columns are
    kept: green in the middle, only a sliver of red on the left and of blue on the right."""
    arr = np.zeros((30, 60, 3), np.uint8)
    for i in range(3):
        arr[:, 20 * i: 20 * (i + 1), i] = 255
    out = center_crop_arr(Image.fromarray(arr), 16).astype(int)
    assert out.shape == (16, 16, 3)
    assert (np.abs(out[:, 4:12] - [0, 255, 0]) <= 8).all()  # the centre is the green third
    assert out[:, 0, 0].min() > 100 and out[:, 0, 2].max() < 20  # left edge: red, no blue
    assert out[:, -1, 2].min() > 100 and out[:, -1, 0].max() < 20  # right edge: blue, no red
    assert (out == out[:1]).all()  # every row alike: nothing was cropped or shifted vertically


# -- moved from tests/unit/sda/relabel/test_inbox_hostile.py -------------------------------------
def test_only_the_listed_formats_are_decoded_whatever_the_name():
    ps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    dds = b"DDS " + (124).to_bytes(4, "little") + b"\0" * 120  # the 128-byte DDS header
    for data in (ps, dds, _red16("GIF"), _red16("BMP"), _red16("TIFF")):
        with pytest.raises(BadImage, match="not one of PNG, JPEG, WEBP"):
            decode_image(data, max_pixels=LIMIT)
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert decode_image(_red16(fmt), max_pixels=LIMIT)[0].size == (16, 16)


def _red16(fmt: str) -> bytes:
    return _encode(Image.new("RGB", (16, 16), (200, 10, 10)), fmt)


def test_a_thin_image_is_refused_before_it_is_upsampled():
    thin = Image.new("RGB", (625_000, 8))  # passes max_pixels (5 M) and a min_side of 8
    with pytest.raises(BadImage, match="too thin: 625000x8 .* 256 px"):
        center_crop_arr(thin, 256, max_pixels=LIMIT)
    ok = Image.new("RGB", (400, 300))
    assert center_crop_arr(ok, 256, max_pixels=LIMIT).shape == (256, 256, 3)


# -- moved from tests/unit/sda/io/test_image_identity.py -----------------------------------------
def _png_with_sbit(arr: np.ndarray, bits: int) -> bytes:
    """A 16-bit PNG of ``arr`` (greyscale or RGB) with an sBIT chunk of ``bits`` inserted after IHDR."""
    data = _encode(Image.fromarray(arr), "PNG") if arr.ndim == 2 else _rgb16_png(arr)
    channels = 1 if arr.ndim == 2 else 3
    # after the 8-byte signature and the 25-byte IHDR chunk
    return data[:33] + png_chunk(b"sBIT", bytes([bits] * channels)) + data[33:]


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


# -- moved from tests/unit/sda/models/test_diffusion.py ------------------------------------------
def test_uint8_conversions_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    x = to_unit_range(img)
    assert x.shape == (2, 3, 5, 5) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), img)


# -- new -----------------------------------------------------------------------------------------
def test_the_unit_range_maps_black_to_minus_one_and_white_to_one():
    x = to_unit_range(np.array([[[[0, 255, 0]]]], np.uint8))
    assert x.dtype == torch.float32 and x.flatten().tolist() == [-1.0, 1.0, -1.0]


def test_model_outputs_outside_the_unit_range_are_clamped_and_rounded():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 5.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 0.0 -> 127.5 -> 128, 0.999 -> 254.87 -> 255


def test_significant_bits_are_read_from_the_sbit_before_the_image_data_only():
    plain = png_bytes(rgb(size=4))
    assert png_significant_bits(plain) is None
    assert png_significant_bits(b"\xff\xd8\xff not a png") is None
    after_idat = plain[:-12] + png_chunk(b"sBIT", bytes([5, 5, 5])) + plain[-12:]  # before IEND, after IDAT
    assert png_significant_bits(after_idat) is None
    mixed = plain[:33] + png_chunk(b"sBIT", bytes([5, 10, 6])) + plain[33:]
    assert png_significant_bits(mixed) == 10  # the largest over the channels
    assert png_significant_bits(mixed[:40]) is None  # cut inside the chunk: never read past the bytes


def test_a_file_over_the_size_limit_is_refused_by_its_size():
    check_file_size(1000, 1000)
    with pytest.raises(BadImage, match="file too large: 1001 bytes > relabel.max_file_bytes=1000"):
        check_file_size(1001, 1000)


def test_the_pixel_and_side_limits_are_inclusive():
    data = png_bytes(rgb(size=8))
    assert decode_image(data, max_pixels=64, min_side=8)[0].size == (8, 8)
    with pytest.raises(BadImage, match="too many pixels: header says 8x8 > relabel.max_pixels=63"):
        decode_image(data, max_pixels=63)
    with pytest.raises(BadImage, match="too small: 8x8 < relabel.min_side=9"):
        decode_image(data, max_pixels=64, min_side=9)


def test_the_exif_orientation_is_applied():
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = 255  # the white third on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    img, _ = decode_image(_encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95), max_pixels=LIMIT)
    shown = np.asarray(img)
    assert img.size == (10, 30) and shown[:8].mean() > 200 and shown[-8:].mean() < 50  # white on top


def test_a_transparent_palette_image_becomes_rgb_and_float_images_are_read_as_0_to_1():
    pal = Image.fromarray(rgb()).convert("P")
    pal.info["transparency"] = 0
    img, mode = decode_image(_encode(pal, "PNG", transparency=0), max_pixels=LIMIT)
    assert mode == "P" and img.mode == "RGB"
    floats = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]], np.float32)
    img, mode = decode_image(_encode(Image.fromarray(floats, "F"), "TIFF"), max_pixels=LIMIT, formats=FOLDER_FORMATS)
    assert mode == "F" and img.mode == "L" and np.asarray(img).tolist() == [[0, 128, 255, 255, 0, 0]]


def _guided_diffusion_center_crop_arr(pil_image, image_size):
    """guided_diffusion/image_datasets.py's, verbatim (its module imports mpi4py, which is not installed)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize("h, w", [(300, 500), (77, 40), (64, 64)])
def test_the_crop_is_guided_diffusions_pixel_for_pixel(h, w):
    """BOX halving while the shorter side is at least twice the size, then bicubic, then the centre."""
    img = Image.fromarray(np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = center_crop_arr(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, _guided_diffusion_center_crop_arr(img, 32))


def test_read_image_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(rgb(size=40)))
    assert read_image(tmp_path / "ok.png", 16).shape == (16, 16, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad\.png: cannot read the image .*replace or remove the file"):
        read_image(tmp_path / "bad.png", 16)
