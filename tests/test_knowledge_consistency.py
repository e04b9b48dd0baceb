"""Knowledge consistency (Liang et al. 2019): self > other seed > random init; orders split g exactly."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import small_classifier, small_datamodule, train_until_accurate

from xai_lightning import ConceptWorld
from xai_lightning.explainer import ConsistencyNetwork, fit_knowledge_consistency, knowledge_consistency

LAYER = "network.features.13"  # the middle stage's output
LAST = "network.features.20"  # the last stage's output, before pooling


def trained(seed: int, train: bool = True):
    """A SmallCNN trained to ≥ 98 % on ConceptWorld shapes (4-8 epochs, a few seconds); else random init.

    Training stops at an accuracy, not after a fixed number of epochs: 6 fixed epochs left some seeds
    (and, on another CPU, the seeds used here) at 0.80-0.91.
    """
    pl.seed_everything(seed)
    model = small_classifier(width=8, lr=3e-3)
    if train:
        accuracy = train_until_accurate(
            model, small_datamodule(num_train=1024, num_val=128, batch_size=64), accuracy=0.98, max_epochs=20
        )
        # Comparing two barely trained models says nothing about shared knowledge: fail loudly.
        assert accuracy > 0.95, "the compared model did not train"
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {"a": trained(0), "b": trained(1), "random": trained(2, train=False)}


@pytest.fixture(scope="module")
def images():
    world = ConceptWorld(num_samples=192, seed=7)
    return world.images[:128], world.images[128:]


def test_orders_split_the_reconstruction_exactly():
    torch.manual_seed(0)
    network = ConsistencyNetwork(5, 3, order=2)
    with torch.no_grad():
        network.p_logits.copy_(torch.tensor([0.3, -0.4]))
    x = torch.randn(4, 5, 6, 6)
    components = network.components(x)
    assert components.shape == (3, 4, 3, 6, 6)
    assert torch.allclose(components.sum(0), network(x), atol=1e-5)
    assert not torch.allclose(components[1], torch.zeros_like(components[1]))  # non-linear paths carry signal


def test_a_linear_relation_is_explained_by_order_zero():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(96, 4, 8, 8, generator=generator)
    mixing = torch.randn(3, 4, 1, 1, generator=generator)
    target = torch.nn.functional.conv2d(source, mixing)  # a 1×1 linear map of the source
    result = fit_knowledge_consistency(source[:64], target[:64], source[64:], target[64:], order=2, steps=300)
    # Order 0 carries the relation; a few hundred Adam steps do not fully silence the non-linear paths.
    assert result.consistency > 0.8
    assert result.order_fraction[0] > 3 * result.order_fraction[1:].max()
    noise = torch.randn(96, 3, 8, 8, generator=generator)
    unrelated = fit_knowledge_consistency(source[:64], noise[:64], source[64:], noise[64:], order=2, steps=300)
    assert unrelated.consistency < 0.1


def test_self_is_fully_consistent_other_seed_less_random_init_least(models, images):
    fit, held_out = images
    kwargs = dict(eval_images=held_out, order=2, steps=250)
    itself = knowledge_consistency(models["a"], LAYER, models["a"], LAYER, fit, **kwargs)
    other_seed = knowledge_consistency(models["a"], LAYER, models["b"], LAYER, fit, **kwargs)
    # Self vs another seed is widest in the middle stage: 1.000 vs 0.37-0.58 over seed pairs 0/1, 2/3,
    # 3/2, 1/0. Another seed vs random init is widest at the last stage, where a random network's
    # features explain almost nothing of a trained one's: 0.71-0.77 vs -0.14-(-0.01) (in the middle
    # stage that gap was only 0.17-0.33, too close to 0.15 for some seeds).
    other_seed_last = knowledge_consistency(models["a"], LAST, models["b"], LAST, fit, **kwargs)
    random_init_last = knowledge_consistency(models["a"], LAST, models["random"], LAST, fit, **kwargs)
    assert itself.consistency > 0.99
    assert itself.order_fraction[0] > 0.99  # a model explains itself linearly: all in order 0
    assert itself.consistency > other_seed.consistency + 0.2
    assert other_seed_last.consistency > random_init_last.consistency + 0.15
    assert itself.order_variance.shape == (3,) and itself.p.shape == (2,)


def test_bad_input_names_the_shapes():
    with pytest.raises(ValueError, match=r"source has 4 images but target has 5"):
        fit_knowledge_consistency(torch.randn(4, 2, 3, 3), torch.randn(5, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv features .* got source \(4, 2\)"):
        fit_knowledge_consistency(torch.randn(4, 2), torch.randn(4, 2, 3, 3))
