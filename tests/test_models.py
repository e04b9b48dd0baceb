"""Reference networks: shapes, layer names, normalisation inside the model, classifier wiring."""

from __future__ import annotations

import pytest
import torch

from xai_lightning.models import CifarResNet, ImageClassifier, Normalize, SmallCNN, resnet18, resnet20


def test_small_cnn_stages_and_output():
    model = SmallCNN(num_classes=7, width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.features[:7](x).shape == (2, 8, 32, 32)
    assert model.features[:14](x).shape == (2, 16, 16, 16)
    assert model.features(x).shape == (2, 32, 8, 8)
    assert isinstance(model.features[18], torch.nn.Conv2d) and isinstance(model.features[20], torch.nn.ReLU)


def test_resnets_have_the_documented_sizes():
    assert sum(p.numel() for p in resnet20().parameters()) == pytest.approx(0.27e6, rel=0.03)
    assert sum(p.numel() for p in resnet18().parameters()) == pytest.approx(11.2e6, rel=0.03)
    model = CifarResNet((1, 1), (8, 16), in_channels=1, num_classes=3).eval()
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="one entry per stage"):
        CifarResNet((1, 1), (8,))


def test_normalize_inside_the_model():
    norm = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    torch.testing.assert_close(norm(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
    model = SmallCNN(num_classes=2, width=4, mean=[0.5] * 3, std=[0.25] * 3)
    assert isinstance(model.features[0], Normalize)
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.0], [0.0])


def test_classifier_needs_a_class_count_and_steps_on_tuples_and_dicts():
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(torch.nn.Linear(4, 2))
    model = ImageClassifier(SmallCNN(num_classes=3, width=4))
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    model.log = lambda *args, **kwargs: None
    loss_tuple = model.training_step((x, y), 0)
    loss_dict = model.training_step({"image": x, "label": y, "masks": None}, 0)
    torch.testing.assert_close(loss_tuple, loss_dict)
    assert torch.isfinite(loss_tuple)
