"""sda.domains.check (``sda check``): a params file validated and the folder profile's folders read without
training anything: the split per class, every file not used with its reason, and the warnings; exit 2 with
one ``error:`` line when a run cannot start."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sda.config import PROFILE_SECTIONS
from sda.domains.check import check, main


@pytest.fixture(autouse=True)
def sda_log_level():
    """main() quiets the "sda" loggers for its report: put their level back for the tests after."""
    logger = logging.getLogger("sda")
    level = logger.level
    yield
    logger.setLevel(level)


def _params_file(tmp_path: Path, profile: str = "embedded", **sections) -> Path:
    raw = {"profile": profile, "profiles": {profile: {s: {} for s in PROFILE_SECTIONS}}, **sections}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _png(path: Path, seed: int, side: int = 80, bits16: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if bits16:  # 12-bit data in 16 bits without sBIT: read nearly black
        Image.fromarray(rng.integers(0, 4096, (side, side)).astype(np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """``src/big`` (10 images and a dark 16-bit one, 80 px, 22 notes files), ``src/small`` (3 images)."""
    root = tmp_path_factory.mktemp("check")
    for i in range(10):
        _png(root / "src" / "big" / f"{i:02d}.png", i)
    _png(root / "src" / "big" / "dark.png", 99, bits16=True)
    for i in range(22):
        (root / "src" / "big" / f"notes{i:02d}.txt").write_text("not an image")
    for i in range(3):
        _png(root / "src" / "small" / f"{i}.png", 50 + i)
    return root


def _folder_params(root: Path, tmp_path: Path) -> Path:
    return _params_file(tmp_path, "folder", folder={"source_dir": str(root / "src"), "image_size": 16,
                                                    "min_images_per_class": 3},
                        target_data={"corruptions": ["fog", "snow"], "severity": 3})


def test_a_valid_embedded_params_file_is_reported_with_its_profile_and_no_warning(tmp_path):
    out = io.StringIO()
    path = _params_file(tmp_path)
    assert check(path, out) == 0
    assert out.getvalue().startswith(f"{path}: valid; profile embedded (") and out.getvalue().count("\n") == 1


def test_the_folder_report_has_the_split_per_class_what_is_not_used_and_each_warning(folder, tmp_path):
    out = io.StringIO()
    assert check(_folder_params(folder, tmp_path), out) == 4
    lines = out.getvalue().splitlines()
    assert lines[1] == f"source {folder / 'src'}: 2 classes, 14 images (split by runtime.seed 0)"
    assert lines[2].split() == ["class", "train", "val", "test"]
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines[3:5]}
    assert sum(rows["big"]) == 11 and sum(rows["small"]) == 3 and rows["small"] == [1, 1, 1]
    assert "  + clean and 2 corruption(s) of the source test split at severity 3" in lines
    assert "not used: 22 file(s)" in lines
    shown = [line for line in lines if ".txt: unsupported format (.txt)" in line]
    assert len(shown) == 20 and "  ... 2 more (--all-skipped lists them)" in lines
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings[0] == "warning: class imbalance: big has 11 images, small 3 (over 3x)"
    assert warnings[1] == "warning: tiny classes (under 20 images): big, small"
    assert warnings[2] == "warning: images far from folder.image_size=16: their median shorter side is 80 px"
    assert warnings[3].startswith("warning: 1 image(s) of 16 bits or more are nearly black") and "dark.png" in warnings[3]


def test_all_skipped_lists_every_file_not_used(folder, tmp_path):
    out = io.StringIO()
    check(_folder_params(folder, tmp_path), out, all_skipped=True)
    assert out.getvalue().count(": unsupported format (.txt)") == 22 and "more (--all-skipped" not in out.getvalue()


def test_the_command_says_it_passed_with_its_warning_count(folder, tmp_path, capsys):
    main(["--params", str(_folder_params(folder, tmp_path))])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("check passed in ") and last.endswith(" s (4 warning(s))")


@pytest.mark.parametrize("case, message", [
    ("typo", "error: {path}: evaluate.batchsize: unknown parameter"),
    ("missing", "error: {path} not found: run from the repository root or pass --params"),
    ("no folder", "error: folder.source_dir: "),
])
def test_a_run_that_cannot_start_exits_2_with_one_error_line(tmp_path, capsys, case, message):
    if case == "typo":
        path = _params_file(tmp_path, evaluate={"batchsize": 3})
    elif case == "missing":
        path = tmp_path / "nope.yaml"
    else:
        path = _params_file(tmp_path, "folder", folder={"source_dir": str(tmp_path / "absent")})
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(message.format(path=path)) and err.count("\n") == 1
