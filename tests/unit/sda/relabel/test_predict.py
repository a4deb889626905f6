"""sda.relabel.predict on tiny random models of the pipeline's kinds: SDA's prediction for new images (the
source model on the original plus the aligned model on its projection), and a label that does not depend
on the other images of the call."""

from __future__ import annotations

import numpy as np
import pytest

from sda.config import Projection, parse_params
from sda.layout import MODELS
from sda.models.classifiers import load_classifier
from sda.relabel.predict import SdaPredictor, models_read
from tests.support.relabel_models import make_relabel_models, save_tiny_classifier

PROJECTION = Projection(respacing=4, N=2, D=2, scale=1.0, batch_size=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    save_tiny_classifier(root / "fell_back", 1, fallback="dda")  # the aligned model, rejected by classifier_align
    return {**make_relabel_models(root), "fell_back": root / "fell_back"}


@pytest.fixture(scope="module")
def predictor(models) -> SdaPredictor:
    return SdaPredictor(models, PROJECTION)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_relabelling_reads_the_projector_folder_only_for_a_distilled_projection(tmp_path):
    guided = models_read(tmp_path, parse_params({}))
    assert guided == {role: tmp_path / rel for role, rel in MODELS.items() if role != "projector"}
    distilled = models_read(tmp_path, parse_params({"projection": {"method": "distilled"}}))
    assert distilled["projector"] == tmp_path / MODELS["projector"] and set(distilled) == set(MODELS)


def test_the_prediction_is_the_softmax_of_source_on_the_original_plus_aligned_on_the_projection(predictor, models):
    images = _images(3)
    pred, projected = predictor.predict(images, [11, 12, 13])
    assert projected.shape == images.shape and projected.dtype == np.uint8 and not np.array_equal(projected, images)
    source, aligned = load_classifier(models["source"]), load_classifier(models["aligned"])
    p = (source.logits(images) + aligned.logits(projected)).softmax(1)
    assert pred["label"].tolist() == p.argmax(1).tolist()
    assert np.allclose(pred["confidence"], p.amax(1).numpy(), atol=1e-6)
    assert pred["top5"].shape == (3, 3) and (pred["top5"][:, 0] == pred["label"]).all()  # 3 classes: top-3
    assert (np.diff(pred["top5_confidence"], axis=1) <= 0).all()
    assert np.allclose(pred["top5_confidence"].sum(1), 1, atol=1e-5)
    p_src = source.logits(images).softmax(1)
    assert pred["source_label"].tolist() == p_src.argmax(1).tolist()
    assert np.allclose(pred["source_confidence"], p_src.amax(1).numpy(), atol=1e-6)
    assert pred["features"].shape[0] == 3 and pred["features"].dtype == np.float32
    assert predictor.class_names == ["red", "green", "blue"]


def test_an_image_gets_the_same_label_and_projection_alone_or_among_others(predictor):
    """Three images in guidance batches of two: the third alone is the third of the three."""
    images = _images(3)
    together, proj = predictor.predict(images, [11, 12, 13])
    alone, proj_alone = predictor.predict(images[2:], [13])
    assert np.array_equal(proj[2:], proj_alone)
    assert together["label"][2] == alone["label"][0]
    assert np.allclose(together["confidence"][2], alone["confidence"][0], atol=1e-6)
    _, other_seed = predictor.predict(images[2:], [99])
    assert not np.array_equal(other_seed, proj_alone)  # the seed draws the projection's noise


def test_one_seed_per_image(predictor):
    with pytest.raises(ValueError, match="2 seeds for 3 images: one each"):
        predictor.predict(_images(3), [1, 2])


def test_an_aligned_model_that_fell_back_leaves_the_decision_to_the_projection(models):
    fell_back = SdaPredictor({**models, "aligned": models["fell_back"]}, PROJECTION)
    images = _images(3)
    pred, projected = fell_back.predict(images, [1, 2, 3])
    p = load_classifier(models["fell_back"]).logits(projected).softmax(1)
    assert pred["label"].tolist() == p.argmax(1).tolist()
    assert np.allclose(pred["confidence"], p.amax(1).numpy(), atol=1e-6)
