import pytest
import torch

from sda.models.classifiers import Classifier, create_classifier


@pytest.fixture
def clf():
    """A tiny random 10-class CNN whose BatchNorm statistics are unlike any test batch's."""
    torch.manual_seed(0)
    model = create_classifier("sda_cnn3", 10, width=8).eval()
    with torch.no_grad():  # source statistics unlike any test batch's, so using the batch's shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return Classifier(model, {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})
