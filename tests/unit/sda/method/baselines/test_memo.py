"""MEMO (sda.method.baselines.memo): one marginal-entropy step per image on its augmented views, then a reset."""

import torch

from sda.method.baselines.memo import Memo
from tests.support.methods import images as _images, inputs


def test_memo_depends_on_the_image_alone_and_restores_the_model(clf):
    memo = Memo(clf, lr=0.01, views=4, seed=0)
    x = _images(6)
    keys = [f"k{i}" for i in range(6)]
    together = memo(inputs(x, clf))
    alone = memo(x[3:4], keys[3:4])
    assert torch.allclose(together[3], alone[0], atol=1e-5)
    assert not torch.allclose(alone[0], clf.logits(x[3:4])[0], atol=1e-4)  # the step changed the prediction
    assert all(torch.equal(a, b) for a, b in zip(memo.model.state_dict().values(), clf.module.state_dict().values()))
    assert memo.cost.forwards == 7 * 5 and memo.cost.backwards == 4 * 7


def test_memo_draws_an_images_views_from_its_key(clf):
    memo = Memo(clf, lr=0.1, views=4, seed=0)
    x = _images(1)
    first = memo(x, ["a"])
    assert torch.equal(memo(x, ["a"]), first)
    assert not torch.allclose(memo(x, ["b"]), first, atol=1e-6)  # other views: another step
    assert not torch.allclose(Memo(clf, lr=0.1, views=4, seed=1)(x, ["a"]), first, atol=1e-6)


def test_memo_leaves_torchs_global_generator_as_it_found_it(clf):
    """AugMix draws from torch's global generator: MEMO seeds its own draws and puts the state back, so what
    runs after it in the process draws what it would have drawn."""
    memo = Memo(clf, lr=0.1, views=4, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    memo(_images(2), ["a", "b"])
    assert torch.equal(torch.rand(3), expected)
