import numpy as np
import pytest
import timm
import torch

from tests.support import colour_classes as _toy
from sda.models.classifiers import (create_classifier, load_classifier, predict_logits, save_classifier, to_model_input, train_classifier)

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_registered_in_timm_and_unknown_name_fails():
    assert timm.is_model("sda_cnn3")
    m = create_classifier("sda_cnn3", 7, width=8)
    assert m(torch.zeros(2, 3, 16, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown classifier architecture 'resnet_9000'"):
        create_classifier("resnet_9000", 10)


@pytest.mark.parametrize("arch", ["sda_cnn3", "resnet18"])
def test_factory_builds_timm_models(arch):
    m = create_classifier(arch, 4).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_training_learns_and_save_load_round_trip(tmp_path):
    x, y = _toy()
    torch.manual_seed(0)
    model = create_classifier("sda_cnn3", 3, width=8)
    before = (predict_logits(model, x, mean=MEAN, std=STD).argmax(1).numpy() == y).mean()
    hist = train_classifier(model, x, y, mean=MEAN, std=STD, epochs=4, batch_size=32, lr=3e-3,
                            weight_decay=0.0, seed=0)
    after_logits = predict_logits(model, x, mean=MEAN, std=STD)
    assert (after_logits.argmax(1).numpy() == y).mean() > max(0.9, before)
    assert len(hist) == 4 and hist[-1]["loss"] < hist[0]["loss"]
    cfg = {"arch": "sda_cnn3", "num_classes": 3, "kwargs": {"width": 8}, "mean": list(MEAN), "std": list(STD)}
    save_classifier(model, tmp_path / "clf", cfg)
    loaded = load_classifier(tmp_path / "clf")
    assert loaded.config == cfg and loaded.preprocessing["mean"] == list(MEAN)
    assert torch.allclose(loaded.logits(x), after_logits, atol=1e-5)  # its own preprocessing travels with it


def test_model_input_accepts_uint8_and_unit_range():
    img = np.full((1, 4, 4, 3), 255, np.uint8)
    a = to_model_input(img, MEAN, STD)
    b = to_model_input(torch.ones(1, 3, 4, 4), MEAN, STD)
    assert torch.allclose(a, b) and torch.allclose(a, torch.ones_like(a))


def test_missing_model_dir_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage that trains"):
        load_classifier(tmp_path / "nope")
