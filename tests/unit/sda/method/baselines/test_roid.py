"""ROID (sda.method.baselines.roid): weighted self-training, weight ensembling, prior correction."""

import torch

from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.roid import Roid, RoidParams, prior_correction
from tests.support.methods import images as _images, inputs


def test_roid_prior_correction_multiplies_the_logits_by_the_smoothed_batch_prior():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.5, 0.0], [0.1, 1.0, 0.0]])
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / 3, 1 / 3) / prior.max()
    assert torch.allclose(prior_correction(logits), logits * (prior + smooth) / (1 + 3 * smooth))


def test_roid_outputs_the_logits_of_the_model_before_its_step(clf):
    """Roid's model is the source model on test-batch statistics until it steps: BN's logits."""
    x = inputs(_images(32), clf)
    bn = BatchNormAdapter(clf, window=0)(x)
    roid = Roid(clf, params=RoidParams(lr=0.1), window=0, seed=0, batch_size=32)
    assert torch.allclose(roid(x), prior_correction(bn), atol=1e-5)
    assert not torch.allclose(roid(x), prior_correction(bn), atol=1e-3)  # it learnt from the first batch
    plain = Roid(clf, params=RoidParams(lr=0.1, prior_correction=False), window=0, seed=0, batch_size=32)
    assert torch.allclose(plain(x), bn, atol=1e-5)


def test_weight_ensembling_pulls_the_norm_parameters_back_to_their_source_values(clf):
    x = inputs(_images(32), clf)
    moved = {}
    for m in (1.0, 1e-6):  # 1: no ensembling; 1e-6: all but the source value
        roid = Roid(clf, params=RoidParams(lr=1.0, momentum_src=m), window=0, seed=0, batch_size=32)
        source = [p.detach().clone() for p in roid.params]
        roid(x)
        moved[m] = max(float((p.detach() - s).abs().max()) for p, s in zip(roid.params, source))
    assert moved[1.0] > 1e-2 and moved[1e-6] < 1e-5


def test_a_reset_forgets_the_moving_class_prior(clf):
    roid = Roid(clf, params=RoidParams(), window=0, seed=0, batch_size=16)
    roid(inputs(_images(16), clf))
    assert not torch.allclose(roid.class_probs, torch.full((10,), 0.1))
    roid.reset()
    assert torch.equal(roid.class_probs, torch.full((10,), 0.1))
