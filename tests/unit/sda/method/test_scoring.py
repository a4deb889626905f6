import numpy as np
import pytest
import torch

from sda.method.report import results_markdown
from sda.method.scoring import MAIN_METHODS, method_predictions, paired_comparison, summarise


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


def test_paired_comparison_counts_the_discordant_images_and_tests_them():
    a = np.array([True] * 12 + [False] * 2 + [True] * 80 + [False] * 106)   # 200 images
    b = np.array([False] * 12 + [True] * 2 + [True] * 80 + [False] * 106)
    c = paired_comparison(a, b)
    assert (c["gained"], c["lost"]) == (12, 2)
    assert c["difference"] == 5.0 and c["low"] < 5.0 < c["high"]
    # exact two-sided McNemar: P(X <= 2 | 14 trials, 1/2) x 2 = 2 x 106 / 16384
    assert c["p"] == pytest.approx(2 * 106 / 2 ** 14, rel=1e-3)
    assert c["p"] < 0.05 and c["low"] > 0
    # a lead of 4 images of 200 (the size of the folder examples' targets) is within chance
    few = paired_comparison(np.array([True] * 6 + [False] * 2 + [False] * 192), np.array([False] * 6 + [True] * 2 + [False] * 192))
    assert few["difference"] == 2.0 and few["p"] > 0.05 and few["low"] < 0 < few["high"]
    # the same predictions: nothing gained or lost, no interval around 0
    same = paired_comparison(a, a)
    assert same == {"gained": 0, "lost": 0, "difference": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    assert paired_comparison(b, a)["difference"] == -5.0
    # 5 images gained, none lost: p 0.0625, and the interval, with its continuity correction, keeps 0 too
    five = paired_comparison(np.array([True] * 5 + [False] * 195), np.array([False] * 200))
    assert five["p"] == 0.0625 and five["low"] < 0 < five["high"]
    # tens of thousands of discordant images: the exact test in log space, tiny p kept (not rounded to 0)
    big = paired_comparison(np.r_[np.ones(30000, bool), np.zeros(20000, bool)], np.r_[np.zeros(25000, bool), np.ones(25000, bool)])
    assert (big["gained"], big["lost"]) == (25000, 20000) and 0 < big["p"] < 1e-100
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_comparison(a, b[:10])


def _colour_model(scale: float):
    """A real (tiny) classifier whose logits are ``scale`` x each channel's mean: class k = channel k."""
    from torch import nn

    from sda.models.classifiers import Classifier

    linear = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(scale * torch.eye(3))
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()
    return Classifier(module, {"mean": [0.0] * 3, "std": [1.0] * 3})


def _domain(n: int = 30):
    """Originals on which the source model calls everything class 0 (a red cast over the class colour) and
    projections that show each image's class colour; labels 0, 1, 2 in turn."""
    from sda.io.streaming import Batch

    labels = np.arange(n) % 3
    proj = np.zeros((n, 4, 4, 3), np.uint8)
    proj[np.arange(n), :, :, labels] = 200
    orig = proj // 4
    orig[..., 0] = 255
    return [Batch([f"k{i}" for i in range(n)], orig, labels, proj)], labels


def test_sda_drops_the_source_term_where_the_source_model_collapsed():
    from sda.method.scoring import score_domain, source_collapsed, top_class_share

    source, aligned = _colour_model(10.0), _colour_model(1.0)
    batches, labels = _domain()
    paper = score_domain(source, aligned, batches, batch_size=8, grid_images=2)
    assert paper.source_share == 1.0 and not paper.source_dropped
    assert paper.accuracy["source"] == pytest.approx(100 / 3, abs=0.01)  # everything called class 0
    assert paper.accuracy["sda"] == paper.accuracy["source"]              # its big logits decide the sum
    assert paper.accuracy["aligned_proj"] == 100.0
    guarded = score_domain(source, aligned, batches, batch_size=8, grid_images=2, collapse_share=0.5)
    assert guarded.source_dropped and guarded.accuracy["sda"] == 100.0 and (guarded.sda == labels).all()
    assert guarded.accuracy["source"] == paper.accuracy["source"] and guarded.accuracy["dda"] == paper.accuracy["dda"]
    # too few images to tell, or a share under the threshold: the paper's sum
    assert not score_domain(source, aligned, batches, batch_size=8, grid_images=2, collapse_share=0.5,
                            collapse_min_images=31).source_dropped
    assert top_class_share(np.array([0, 0, 1, 2])) == 0.5
    assert source_collapsed(np.array([0, 0, 1, 2] * 5), 0.5, 4) and not source_collapsed(np.array([0, 0, 1, 2] * 5), 0.6, 4)
    assert not source_collapsed(np.array([0] * 40), None, 4)
    # at least twice a uniform guess's share: with 3 classes two thirds, with 2 classes every image
    assert not source_collapsed(np.array([0, 0, 0, 1, 1, 2] * 5), 0.5, 3)
    assert not source_collapsed(np.array([0] * 39 + [1]), 0.5, 2) and source_collapsed(np.array([0] * 40), 0.5, 2)
