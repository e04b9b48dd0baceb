"""Targets and model outputs: callable targets, Hugging Face ModelOutputs, output_key errors that list the keys.

Independent checks: a callable target that is a difference of two logits must give exactly the
difference of the two class explanations for every method that is linear in the explained score
(Grad-CAM without ReLU, IG, occlusion of the logit).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_lightning import grad_cam
from xai_lightning.attribution import IntegratedGradients, Occlusion, attribute
from xai_lightning.core import check_target, output_scores, select_logits, split_target
from xai_lightning.models import SmallCNN


def margin(output: torch.Tensor) -> torch.Tensor:
    """Logit of class 1 minus logit of class 0: one score per example."""
    return output[:, 1] - output[:, 0]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=3, width=4).eval()


def test_a_hugging_face_model_output_gives_its_logits_without_output_key():
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits = torch.rand(2, 3)
    output = SequenceClassifierOutput(logits=logits, hidden_states=None)
    assert select_logits(output) is logits
    assert select_logits(output, "logits") is logits
    assert select_logits(output, 0) is logits  # ModelOutputs index like tuples too


def test_an_output_key_that_does_not_exist_lists_the_available_keys():
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits = torch.rand(2, 3)
    with pytest.raises(
        TypeError,
        match=r"output_key='logit' does not select anything .*available: keys \['logits', "
        r"'features'\]",
    ):
        select_logits({"logits": logits, "features": torch.rand(2, 4)}, "logit")
    hf = SequenceClassifierOutput(logits=logits, attentions=(torch.rand(2, 1, 3, 3),))
    with pytest.raises(TypeError, match=r"available: keys \['logits', 'attentions'\]"):
        select_logits(hf, "scores")
    with pytest.raises(TypeError, match=r"available: indices 0\.\.1"):
        select_logits((logits, logits), 5)
    with pytest.raises(TypeError, match=r"selects a tuple, not a tensor; available: keys"):
        select_logits(hf, "attentions")


def test_callable_target_grad_cam_is_the_difference_of_the_class_maps(cnn):
    x = torch.rand(4, 3, 32, 32)
    layer = "features.13"
    both = grad_cam(cnn, x, margin, layer, relu=False).maps[layer]
    one = grad_cam(cnn, x, 1, layer, relu=False).maps[layer]
    zero = grad_cam(cnn, x, 0, layer, relu=False).maps[layer]
    torch.testing.assert_close(both, one - zero, atol=1e-6, rtol=1e-5)
    assert both.abs().max() > 0


def test_callable_target_ig_and_logit_occlusion_are_linear_in_the_score(cnn):
    x = torch.rand(3, 3, 32, 32)
    ig = IntegratedGradients(steps=16)
    torch.testing.assert_close(
        ig.attribute(cnn, x, margin), ig.attribute(cnn, x, 1) - ig.attribute(cnn, x, 0), atol=1e-5, rtol=1e-4
    )
    occlusion = Occlusion(window=8, stride=8, score="logit")
    torch.testing.assert_close(
        occlusion.attribute(cnn, x, margin),
        occlusion.attribute(cnn, x, 1) - occlusion.attribute(cnn, x, 0),
        atol=1e-5,
        rtol=1e-4,
    )


def test_callable_target_of_the_wrong_shape_fails_naming_the_shape(cnn):
    x = torch.rand(4, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"returned shape \(4, 3\) .*one floating-point score per example, shape \(4,\)"
    ):
        attribute(cnn, x, lambda out: out, method="saliency")
    with pytest.raises(ValueError, match=r"shape \(\)"):
        grad_cam(cnn, x, lambda out: out.sum(), "features.13")
    with pytest.raises(TypeError, match="must return a tensor"):
        output_scores(torch.rand(2, 3), score_fn=lambda out: 1.0, batch=2)


def test_a_callable_target_is_a_score_so_probabilities_are_refused(cnn):
    with pytest.raises(ValueError, match="use score='logit' with a callable target"):
        Occlusion(window=8, stride=8).attribute(cnn, torch.rand(2, 3, 32, 32), margin)


def test_check_target_raises_at_setup_what_the_explanation_would_raise_later():
    output = {"logits": torch.rand(1, 3), "features": torch.rand(1, 8)}
    check_target("predicted", output, "logits")
    check_target(margin, torch.rand(1, 3), batch=1)
    with pytest.raises(TypeError, match=r"available: keys \['logits', 'features'\]"):
        check_target("predicted", output, "logit")
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        check_target(7, output, "logits")
    with pytest.raises(ValueError, match=r"returned shape \(1, 3\)"):
        check_target(lambda out: out, torch.rand(1, 3), batch=1)
    assert split_target(2) == (None, 2) and split_target(margin) == (margin, 0)
