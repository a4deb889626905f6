"""SAR (sda.method.baselines.sar): sharpness-aware entropy minimisation on reliable images, with model recovery."""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.sar import Sar, SarParams
from sda.models.classifiers import Classifier
from tests.support.methods import images as _images, inputs


def test_sar_updates_on_reliable_images_only_and_recovers(clf):
    x = inputs(_images(32), clf)
    none_reliable = Sar(clf, params=SarParams(lr=0.1, margin=1e-6), window=0)
    before = {k: v.clone() for k, v in none_reliable.model.state_dict().items()}
    none_reliable(x)
    assert all(torch.equal(v, before[k]) for k, v in none_reliable.model.state_dict().items())
    assert none_reliable.steps == 0
    sar = Sar(clf, params=SarParams(lr=0.1, margin=1.0, reset_below=100.0), window=0)
    first = sar(x)
    assert sar.resets == 1 and sar.steps == 1  # the moving average is under reset_below: back to the source weights
    assert torch.allclose(sar(x), first, atol=1e-6)


def test_sar_takes_its_step_where_a_few_images_are_reliable(clf):
    """The second (sharpness-aware) forward runs on the whole batch, as the authors' code does: with a
    handful of reliable images their second entropies stay under the margin and SAR steps (a forward on
    those images alone would see their own batch statistics and lose them)."""
    x = _images(32)
    logits = BatchNormAdapter(clf, window=0)(inputs(x, clf))
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    margin = float(ent.sort().values[4:6].mean()) / np.log(10)  # 5 of the 32 images are reliable
    sar = Sar(clf, params=SarParams(lr=0.1, margin=margin, reset_below=0.0), window=0)
    before = [p.clone() for p in sar.params]
    sar(inputs(x, clf))
    assert sar.steps == 1 and any(not torch.equal(a, b) for a, b in zip(before, sar.params))


def test_sar_leaves_the_last_stage_and_the_final_norm_frozen(clf):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 4, 3)), ("bn", nn.BatchNorm2d(4)),
        ("layer4", nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))), ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()), ("norm", nn.LayerNorm(4)), ("fc", nn.Linear(4, 10))])).eval()
    sar = Sar(Classifier(model, clf.config), params=SarParams(), window=0)
    assert {n for n, p in sar.model.named_parameters() if p.requires_grad} == {"bn.weight", "bn.bias"}
    assert sar.optimizer.defaults["lr"] == SarParams().lr
    vit = Sar(Classifier(model, clf.config), params=SarParams(), window=0, arch="vit-base")
    assert vit.optimizer.defaults["lr"] == 0.001  # the authors' ViT / Swin rate


def test_a_recovery_keeps_sgds_momentum_unless_reset_momentum(clf):
    x = inputs(_images(32), clf)
    for reset_momentum in (False, True):
        sar = Sar(clf, params=SarParams(lr=0.1, margin=1.0, reset_below=0.0, reset_momentum=reset_momentum), window=0)
        sar(x)
        buffers = {id(p): s["momentum_buffer"].clone() for p, s in sar.optimizer.state.items()}
        assert buffers
        sar.restore_source()
        kept = {id(p): s["momentum_buffer"] for p, s in sar.optimizer.state.items()}
        if reset_momentum:
            assert kept == {}
        else:
            assert kept.keys() == buffers.keys() and all(torch.equal(kept[k], buffers[k]) for k in kept)
