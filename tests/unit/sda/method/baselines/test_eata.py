"""EATA (sda.method.baselines.eata): reliable, non-redundant entropy minimisation with a Fisher-weighted anchor."""

import math

import torch
import torch.nn.functional as F

from sda.method.baselines.eata import Eata, EataParams, fisher_information
from sda.method.catalog import build_method
from sda.models.classifiers import Classifier, create_classifier
from tests.support.methods import images as _images, inputs, method_context as _ctx


def test_eata_keeps_reliable_unredundant_images_and_anchors_on_the_fisher(clf):
    source = _images(40, seed=9)
    eata = Eata(clf, params=EataParams(lr=0.5, margin=1.0, d_margin=0.999), window=0, source_images=source, batch_size=16)
    assert set(eata.fishers) and all(f[0].shape == f[1].shape for f in eata.fishers.values())
    before = [p.clone() for p in eata.params]
    eata(inputs(_images(32), clf))
    assert eata.steps == 1 and eata.selected == 32  # every image reliable (margin ln C), none redundant yet
    assert any(not torch.equal(a, b) for a, b in zip(before, eata.params))
    # a second batch: images whose softmax is like the running mean are redundant
    strict = Eata(clf, params=EataParams(lr=0.5, margin=1.0, d_margin=1e-6, fisher_alpha=0.0), window=0)
    strict(inputs(_images(32), clf))
    strict(inputs(_images(32, seed=2), clf))
    assert strict.steps == 1 and strict.fishers is None  # the second batch was all redundant: no step
    nothing = Eata(clf, params=EataParams(margin=1e-6, fisher_alpha=0.0), window=0)
    nothing(inputs(_images(32), clf))
    assert nothing.steps == 0 and nothing.cost.backwards == 0


def test_eata_without_source_images_runs_as_eta_and_says_so(clf, tmp_path, caplog):
    """ImageNet's source data has no train split unless imagenet.train_dir is set: no Fisher, a warning."""
    from sda.method.catalog import read_source_split

    ctx = _ctx(clf)
    ctx.source_split = read_source_split(tmp_path / "source_data")
    with caplog.at_level("WARNING", logger="sda.streams"):
        eata = build_method("eata", ctx)
    assert eata.fishers is None and eata.extra()["fisher_images"] == 0
    assert "runs as ETA" in caplog.text and "fisher_split" in caplog.text
    assert eata(inputs(_images(16), clf)).shape == (16, 10)


def test_the_fisher_is_the_mean_squared_gradient_of_the_self_labelled_cross_entropy(clf):
    eata = Eata(clf, params=EataParams(fisher_alpha=0.0), window=0)
    x = _images(8)
    fishers = fisher_information(eata, x, batch_size=4)
    trainable = {n: p for n, p in eata.model.named_parameters() if p.requires_grad}
    assert set(fishers) == set(trainable)  # the norm layers' affine parameters
    squares = []
    for chunk in (x[:4], x[4:]):
        out = eata.model(eata.model_input(chunk))
        grads = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), list(trainable.values()))
        squares.append({n: g ** 2 for n, g in zip(trainable, grads)})
    for n, (fisher, value) in fishers.items():
        assert torch.allclose(fisher, (squares[0][n] + squares[1][n]) / 2, atol=1e-7), n
        assert torch.equal(value, trainable[n])


def test_the_margins_scale_with_the_classes(clf):
    eata = Eata(clf, params=EataParams(fisher_alpha=0.0), window=0)
    assert eata.margin == 0.4 * math.log(10) and eata.d_margin == 0.4  # the library's CIFAR-10 value
    torch.manual_seed(0)
    wide = Classifier(create_classifier("sda_cnn3", 101, width=8).eval(), {**clf.config, "num_classes": 101})
    assert Eata(wide, params=EataParams(fisher_alpha=0.0), window=0).d_margin == 0.05  # its ImageNet value
    assert Eata(wide, params=EataParams(fisher_alpha=0.0, d_margin=0.3), window=0).d_margin == 0.3


def test_the_fisher_is_computed_once_per_source_model_and_never_read_for_another(clf):
    source = _images(40, seed=9)
    params = EataParams()
    first = Eata(clf, params=params, window=0, source_images=source, batch_size=16)
    assert Eata(clf, params=params, window=0, source_images=source, batch_size=16).fishers is first.fishers  # cached
    torch.manual_seed(5)
    other = Classifier(create_classifier("sda_cnn3", 10, width=8).eval(), clf.config)
    theirs = Eata(other, params=params, window=0, source_images=source, batch_size=16).fishers
    assert theirs is not first.fishers
    assert any(not torch.equal(theirs[n][0], first.fishers[n][0]) for n in theirs)
    assert Eata(clf, params=params, window=0, source_images=source, batch_size=16).fishers is first.fishers  # kept
