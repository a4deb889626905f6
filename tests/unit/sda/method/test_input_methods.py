"""Input adaptation (sda.method.input_methods): the frozen classifiers on the original, projected or purified image."""

import pytest
import torch

from sda.io.images import to_uint8, to_unit_range
from sda.method.catalog import StreamInputs, build_method
from sda.method.diffpure import purify
from sda.runtime import derive_seed
from tests.support.methods import images as _images, inputs, method_context as _ctx


def _batch(n=6):
    torch.manual_seed(0)
    frozen = {k: torch.randn(n, 10) for k in ("source_orig", "source_proj", "aligned_proj")}
    return StreamInputs(_images(n), _images(n, seed=1), [f"k{i}" for i in range(n)], frozen)


def test_the_frozen_methods_read_the_shared_outputs_and_count_the_forwards_they_read(clf):
    b = _batch()
    f = b.frozen
    expected = {"source": (f["source_orig"], 1, 0.0), "dda": (f["source_proj"], 1, 7.0),
                "dda_ens": (f["source_orig"].softmax(1) + f["source_proj"].softmax(1), 2, 7.0),
                "sda": (f["source_orig"] + f["aligned_proj"], 2, 7.0)}
    for name, (logits, passes, unet_fe) in expected.items():
        adapter = build_method(name, _ctx(clf, projection_fe=7.0))
        assert torch.allclose(adapter(b), logits), name
        assert adapter.cost.forwards == passes * 6 and adapter.unet_forward_equivalents == unet_fe, name
    fell_back = build_method("sda", _ctx(clf, fallback=True))
    assert torch.equal(fell_back(b), f["aligned_proj"])  # SDA decides as DDA


def test_diffpure_needs_the_diffusion_model(clf):
    with pytest.raises(ValueError, match="needs the diffusion model"):
        build_method("diffpure", _ctx(clf))


def test_diffpure_classifies_the_purified_image_with_the_source_model(clf, tiny_unet, scheduler):
    x = inputs(_images(4), clf)
    diffpure = build_method("diffpure", _ctx(clf, diffusion=(tiny_unet, scheduler, 3, 20)))
    assert diffpure.N == 3 and diffpure.unet_forward_equivalents == 3.0  # t* 0.15 of 20 respaced steps
    out = diffpure(x)
    pure = purify(tiny_unet, scheduler, to_unit_range(x.originals), x.keys, N=3, respacing=20,
                  seed=derive_seed(0, "diffpure"), class_labels=torch.full((4,), 3))
    assert torch.allclose(out, clf.logits(to_uint8(pure)), atol=1e-5)
    assert not torch.allclose(out, x.frozen["source_orig"], atol=1e-3)
    assert diffpure.cost.forwards == 4 and diffpure.extra() == {"respaced_steps": 3, "t": round(3 / 19, 3)}
