"""The observer guard: modes, RNG, .grad, hooks, autograd inside no_grad/inference_mode, precision."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch
from torch import nn

from xai_lightning import grad_cam, observe
from xai_lightning.core import LayerCapture
from xai_lightning.models import SmallCNN


def model_with_mixed_modes() -> nn.Module:
    model = SmallCNN(num_classes=3, width=4, dropout=0.5)
    model.train()
    model.features[2].eval()  # a frozen BatchNorm must stay frozen
    return model


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def rng_fingerprint() -> tuple:
    return (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())


def assert_same_rng(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_each_submodule_mode_is_restored_including_a_frozen_batchnorm():
    model = model_with_mixed_modes()
    before = modes(model)
    with observe(model):
        assert not any(module.training for module in model.modules())
    assert modes(model) == before
    assert model.features[2].training is False and model.features[5].training is True


def test_modes_rng_and_hooks_are_restored_when_the_explained_forward_raises():
    model = model_with_mixed_modes()
    before_modes, before_rng = modes(model), rng_fingerprint()

    def boom(*_):
        raise RuntimeError("explained forward failed")

    with pytest.raises(RuntimeError, match="explained forward failed"):
        with observe(model) as guard:
            guard.add_hook(model.features[4].register_forward_hook(boom))
            torch.rand(10), np.random.rand(3), random.random()
            model(torch.rand(2, 3, 16, 16))
    assert modes(model) == before_modes
    assert_same_rng(before_rng, rng_fingerprint())
    assert all(not module._forward_hooks for module in model.modules())


def test_layer_capture_hooks_are_removed_when_forward_raises():
    model = SmallCNN(num_classes=3, width=4)
    with pytest.raises(ValueError):
        with LayerCapture(model, ["features.3", "features.10"]):
            model(torch.rand(2, 3, 16, 16))
            raise ValueError("after the forward")
    assert all(not module._forward_hooks for module in model.modules())


def test_rng_streams_are_untouched_and_a_seeded_guard_is_reproducible():
    model = nn.Linear(2, 2)  # built first: initialising it draws from the global RNG
    before = rng_fingerprint()
    with observe(model, seed=7):
        first = torch.rand(4)
    with observe(model, seed=7):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert_same_rng(before, rng_fingerprint())


def test_parameter_grads_are_never_touched():
    model = SmallCNN(num_classes=3, width=4)
    x = torch.rand(4, 3, 16, 16)
    model(x).sum().backward()  # the training step left gradients behind
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.classifier.bias.grad = None  # and one parameter has none
    grad_cam(model, x, target=1, layers=["features.6", "features.20"])
    for name, p in model.named_parameters():
        if name == "classifier.bias":
            assert p.grad is None
        else:
            assert torch.equal(p.grad, grads[name]), name


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_autograd_works_inside_lightning_style_no_grad_contexts(context):
    model = SmallCNN(num_classes=3, width=4)
    with context():
        x = torch.rand(2, 3, 16, 16)  # an inference tensor under inference_mode
        with observe(model) as guard:
            xi = guard.input(x)
            (grad,) = torch.autograd.grad(model(xi)[:, 0].sum(), xi)
        maps = grad_cam(model, x, target=0, layers="features.20").maps["features.20"]
    assert grad.abs().sum() > 0
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    with observe(model) as guard:
        xi = guard.input(x)
        (expected,) = torch.autograd.grad(model(xi)[:, 0].sum(), xi)
    torch.testing.assert_close(grad, expected)


class FakePrecision:
    """Duck-typed Lightning precision plugin whose forward context is CPU bf16 autocast."""

    def __init__(self) -> None:
        self.entered = 0

    @contextlib.contextmanager
    def forward_context(self):
        self.entered += 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield


def test_the_trainer_precision_context_is_used():
    trainer = type("Trainer", (), {"precision_plugin": FakePrecision()})()
    model = nn.Linear(4, 2)
    with observe(model, trainer=trainer):
        out = model(torch.rand(3, 4))
    assert trainer.precision_plugin.entered == 1
    assert out.dtype == torch.bfloat16
    assert model(torch.rand(3, 4)).dtype == torch.float32  # autocast ended with the guard


def test_a_side_model_moves_with_its_optimizer_state_but_not_the_step_counters():
    from xai_lightning.core.side_model import move_with_optimizer

    side = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(side.parameters(), lr=0.1)
    side(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    meta = torch.device("meta")  # a second device on a machine without one
    move_with_optimizer(side, optimizer, meta)
    assert all(p.device == meta for p in side.parameters())
    for state in optimizer.state.values():
        assert state["exp_avg"].device == meta and state["exp_avg_sq"].device == meta
        assert state["step"].device.type == "cpu"
    move_with_optimizer(side, optimizer, meta)  # already there: nothing to do
    assert side.weight.device == meta
