"""fast_forward: the model's own forward, channels-last with eval BatchNorms folded, for a block of passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_lightning import SmallCNN
from xai_lightning.core import LayerCapture
from xai_lightning.core.fast_forward import fast_forward


def evaluated_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=8)
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so folding has something to fold
        for _ in range(3):
            model(torch.rand(16, 3, 32, 32) * 2)
    return model.eval()


def logits_and_input_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(logits[:, 1].sum(), x)
    return logits.detach(), gradient


def test_same_logits_and_input_gradients_as_the_plain_forward_up_to_rounding():
    model = evaluated_cnn()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain_logits, plain_gradient = logits_and_input_gradient(model, x)
    with fast_forward(model) as same:
        assert same is model
        assert "forward" in model.__dict__  # the fast path is active inside the block
        fast_logits, fast_gradient = logits_and_input_gradient(model, x)
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_gradient, plain_gradient, rtol=1e-4, atol=1e-5 * plain_gradient.abs().max().item())
    # The fast pass really differs in arithmetic (folded weights), i.e. it is not the plain pass.
    assert not torch.equal(fast_logits, plain_logits)


def test_forward_is_restored_after_the_block_and_after_an_error():
    model = evaluated_cnn()
    x = torch.rand(2, 3, 32, 32)
    with fast_forward(model):
        pass
    assert "forward" not in model.__dict__
    with pytest.raises(RuntimeError, match="boom"):
        with fast_forward(model):
            raise RuntimeError("boom")
    assert "forward" not in model.__dict__
    assert torch.equal(model(x), SmallCNN.forward(model, x))

    own = model.forward  # an instance forward the caller installed survives the block
    model.forward = own  # type: ignore[method-assign]
    with fast_forward(model):
        assert model.__dict__["forward"] is not own
    assert model.__dict__["forward"] is own


def test_disabled_runs_the_model_as_it_is_and_parameters_are_untouched():
    model = evaluated_cnn()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with fast_forward(model, enabled=False):
        assert "forward" not in model.__dict__
    x = torch.rand(4, 3, 32, 32)
    with fast_forward(model):
        model(x)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # folding never writes weights


def test_a_captured_layer_sees_its_own_output():
    # A hooked convolution/BatchNorm pair is not folded: the captured BatchNorm output is the real one.
    model = evaluated_cnn()
    x = torch.rand(3, 3, 32, 32)
    with LayerCapture(model, "features.9") as capture:
        model(x)
    plain = capture.activations["features.9"]
    with fast_forward(model), LayerCapture(model, "features.9") as capture:
        model(x)
    torch.testing.assert_close(capture.activations["features.9"], plain, rtol=1e-4, atol=1e-5)


def test_a_lightning_module_wrapping_the_network_runs_fast_and_is_restored():
    """``fast_forward(pl_module)``: the wrapper's forward calls the network, whose BatchNorms fold all the same."""
    from xai_lightning import ImageClassifier

    module = ImageClassifier(evaluated_cnn()).eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain_logits, plain_gradient = logits_and_input_gradient(module, x)
    with fast_forward(module):
        fast_logits, fast_gradient = logits_and_input_gradient(module, x)
    assert "forward" not in module.__dict__
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_gradient, plain_gradient, rtol=1e-4, atol=1e-5 * plain_gradient.abs().max().item())
    assert not torch.equal(fast_logits, plain_logits)  # folded arithmetic reached the wrapped network
    assert torch.equal(logits_and_input_gradient(module, x)[0], plain_logits)  # and left it as it was


def test_without_folding_only_the_layout_changes():
    """``FastForward(fold_batchnorm=False)`` is exactly the model on a channels-last copy of the input."""
    from xai_lightning.core.fast_forward import FastForward

    model = evaluated_cnn()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(FastForward(model, fold_batchnorm=False)(x), expected)
        assert not torch.equal(FastForward(model)(x), expected)  # folding on by default
