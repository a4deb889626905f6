"""The method catalog (sda.method.catalog): every registered method built from its params section, the frozen
outputs every method reads, and the source data read on demand."""

import numpy as np
import pytest
import torch

from sda.config import ParamsError, Streams
from sda.io.shards import Sample, write_shards
from sda.method.catalog import build_method, frozen_outputs, method_names, read_source_split
from sda.method.guarded import NormInputProfile
from sda.models.classifiers import Classifier, create_classifier
from tests.support.methods import images as _images, inputs, method_context as _ctx


def test_every_registered_method_runs_resets_and_counts_its_passes(clf):
    names = method_names()
    assert {"bn", "tent", "sar", "eata", "cotta", "rotta", "lame", "roid", "sda+lame", "sda+bn+lame"} <= set(names)
    assert names[:4] == ("source", "dda", "dda_ens", "sda")  # input adaptation first, combinations last
    x = inputs(_images(48), clf, projections=_images(48, seed=1))
    for name in names:
        if name == "diffpure":  # needs a diffusion model: tests/unit/sda/method/test_input_methods.py
            continue
        adapter = build_method(name, _ctx(clf))
        first = adapter(x)
        assert first.shape == (48, 10) and torch.isfinite(first).all(), name
        adapter.reset()
        assert adapter.cost.forwards >= 48, name
        assert isinstance(adapter.extra(), dict)


def test_a_params_section_error_names_the_key(clf):
    cfg = Streams.model_validate({"lame": {"knn": 3}})
    assert cfg.method_params("lame").knn == 3
    with pytest.raises(ParamsError, match=r"streams\.lame\.knn"):
        Streams.model_validate({"lame": {"knn": 0}}).method_params("lame")


def test_the_frozen_outputs_are_each_models_logits_and_features_on_its_input(clf):
    torch.manual_seed(1)
    aligned = Classifier(create_classifier("sda_cnn3", 10, width=8).eval(), clf.config)
    x, p = _images(6), _images(6, seed=1)
    cpu = torch.device("cpu")
    out = frozen_outputs(clf, aligned, x, p, cpu)
    assert set(out) == {"source_orig", "source_orig_features", "source_proj", "aligned_proj", "aligned_proj_features"}
    assert torch.allclose(out["source_proj"], clf.logits(p)) and torch.allclose(out["aligned_proj"], aligned.logits(p))
    assert torch.allclose(out["aligned_proj_features"], aligned.logits_and_features(p)[1])
    fell_back = frozen_outputs(clf, aligned, x, p, cpu, fallback=True, profiles=True)
    assert torch.equal(fell_back["aligned_proj"], fell_back["source_proj"])  # the aligned model was rejected
    assert torch.allclose(fell_back["aligned_proj_features"], clf.logits_and_features(p)[1])
    profile = NormInputProfile(clf)
    assert fell_back["source_orig_profile"].dtype == torch.float32
    assert np.allclose(fell_back["source_proj_profile"].numpy(), profile(p), atol=1e-5)


def test_the_source_split_is_read_when_asked_and_a_missing_or_empty_one_is_named(tmp_path):
    x = _images(5)
    (tmp_path / "train").mkdir()
    write_shards([Sample(key=f"s{i}", image=im, label=i % 2) for i, im in enumerate(x)], tmp_path / "train")
    read = read_source_split(tmp_path)
    images, labels = read("train")
    assert np.array_equal(images, x) and labels.dtype == np.int64 and labels.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(FileNotFoundError, match="no val split"):
        read("val")
    (tmp_path / "val").mkdir()
    write_shards([], tmp_path / "val")
    with pytest.raises(ValueError, match="no image"):
        read("val")
