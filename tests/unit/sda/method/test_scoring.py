import numpy as np
import pytest
import torch

from sda.method.report import projection_grid, results_markdown
from sda.method.scoring import MAIN_METHODS, method_predictions, summarise


def test_sda_is_raw_logit_sum_not_softmax_sum():
    # source(orig) is confident in class 0 with a small logit margin; aligned(proj) prefers class 1 by a
    # larger logit margin. Logit sum -> 1; softmax sums behave differently by construction below.
    so = torch.tensor([[10.0, 9.0, 0.0]])
    sp = torch.tensor([[0.0, 0.0, 3.0]])
    ap = torch.tensor([[0.0, 2.0, 0.0]])
    p = method_predictions(so, sp, ap)
    assert p["source"].item() == 0
    assert p["dda"].item() == 2
    assert p["sda"].item() == 1  # 10+0 < 9+2
    # DDA ensemble: softmax(so) ~ (0.73, 0.27, 0), softmax(sp) ~ (0.045, 0.045, 0.91) -> class 2
    assert p["dda_ens"].item() == 2
    assert p["dda_ens_logit"].item() == 0  # 10+0 vs 9+0 vs 0+3
    assert p["aligned_proj"].item() == 1


def test_entropy_and_confidence_picks():
    so = torch.tensor([[2.0, 0.0], [0.0, 0.1]])
    sp = torch.tensor([[0.0, 0.1], [5.0, 0.0]])
    p = method_predictions(so, sp, sp)
    assert p["dda_ens_entropy"].tolist() == [0, 0]  # row 0 keeps original, row 1 takes projected
    assert p["dda_ens_confidence"].tolist() == [0, 0]


def test_summarise_averages_corruptions_only():
    per = {
        "clean": {m: 100.0 for m in MAIN_METHODS} | {"extra": 1.0},
        "fog": {m: 10.0 for m in MAIN_METHODS} | {"extra": 2.0},
        "snow": {m: 30.0 for m in MAIN_METHODS} | {"extra": 4.0},
    }
    s = summarise(per, ["fog", "snow", "frost"])
    assert s["mean"] == {m: 20.0 for m in MAIN_METHODS}
    assert set(s["domains"]) == {"clean", "fog", "snow"}
    assert set(s["domains"]["fog"]) == set(MAIN_METHODS)
    assert s["more"]["mean"] == {"extra": 3.0}
    assert "| **mean (corruptions)** | **20.0**" in results_markdown(s)
    with pytest.raises(ValueError):
        summarise({"clean": per["clean"]}, ["fog"])


def test_projection_grid_layout():
    rows = {d: (np.zeros((3, 16, 16, 3), np.uint8), np.full((3, 16, 16, 3), 255, np.uint8)) for d in ("a", "b")}
    img = projection_grid(rows, upscale=2)
    assert img.mode == "RGB"
    assert img.height == 4 * (32 + 2) + 2  # two domains x (original, projected) rows
