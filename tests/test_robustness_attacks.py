"""Attacks and robustness scores against independent evidence: Captum's PGD/FGSM, closed forms on linear
models, the TRADES definition, ConceptWorld masks, and the guard's contract (modes, BatchNorm, .grad)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.robust import FGSM as CaptumFGSM
from captum.robust import PGD as CaptumPGD
from torch import nn

from xai_lightning.data import ConceptWorld
from xai_lightning.models import SmallCNN
from xai_lightning.robustness import (
    PGD,
    fgsm,
    gradient_object_energy,
    loss_gradients,
    pgd,
    project,
    trades_adversarial,
    trades_kl,
    trades_loss,
)


def shape_batch(n: int = 24, seed: int = 5):
    data = ConceptWorld(num_samples=n, seed=seed)
    items = [data[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    masks = torch.stack([item["object_mask"] for item in items])
    return images, labels, masks


def ce_sum(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")  # Captum wants one loss per example


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


# ---------------------------------------------------------------------------------------------- PGD
@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 1 / 255), ("l2", 0.5, 0.05)])
def test_pgd_loss_never_decreases_with_more_steps_on_a_fixed_model(trained_shape_model, norm, eps, step):
    images, labels, _ = shape_batch(8)
    start = torch.Generator().manual_seed(0)
    losses = []
    for steps in (0, 2, 8):
        result = pgd(
            trained_shape_model,
            images,
            labels,
            norm=norm,
            eps=eps,
            steps=steps,
            step_size=step,
            generator=torch.Generator().manual_seed(0),
        )
        losses.append(result.loss)
    losses = torch.stack(losses)  # (3, B)
    # Worst iterate: with the same start and step size, more steps can only find a higher loss.
    assert (losses[1:] >= losses[:-1] - 1e-6).all()
    # ... and the ascent really climbs: the mean loss after 8 steps far exceeds the start's.
    assert losses[-1].mean() > 3 * losses[0].mean() + 0.1
    # With a small step the *last* iterate's mean loss rises at every step too (gradient ascent).
    trace = pgd(
        trained_shape_model,
        images,
        labels,
        norm=norm,
        eps=eps,
        steps=8,
        step_size=step,
        keep_worst=False,
        generator=start,
    ).loss_trace.mean(1)
    assert (trace[1:] > trace[:-1]).all(), trace


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5), ("l2", 3.0)])
def test_perturbation_stays_in_the_eps_ball_and_the_pixel_box(trained_shape_model, norm, eps):
    images, labels, _ = shape_batch(8)
    # ConceptWorld images touch 0 and 1, so the box constraint is active.
    assert images.min() < 0.05 and images.max() > 0.95
    result = PGD(norm=norm, eps=eps, steps=5, step_size=eps).perturb(trained_shape_model, images, labels)
    delta = (result.adversarial - images).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert size.max() > 0.5 * eps  # the attack used its budget
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert torch.allclose(result.perturbation_norm, size, atol=1e-6)


def test_l2_projection_equals_torch_renorm():
    delta = torch.randn(7, 3, 8, 8) * torch.linspace(0.01, 3, 7).view(-1, 1, 1, 1)
    torch.testing.assert_close(project(delta, "l2", 0.5), torch.renorm(delta, 2, 0, 0.5), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(project(delta, "linf", 0.1), delta.clamp(-0.1, 0.1))


def random_model() -> nn.Module:
    torch.manual_seed(3)
    return SmallCNN(num_classes=5, width=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()


@pytest.mark.parametrize("targeted", [False, True])
def test_linf_pgd_matches_captum_pgd_with_the_same_seed(targeted):
    model = random_model()
    images, labels, _ = shape_batch(12)
    targets = (labels + 1) % 5 if targeted else labels
    settings = dict(eps=8 / 255, step_size=2 / 255, steps=5)
    captum_pgd = CaptumPGD(model, ce_sum, lower_bound=0.0, upper_bound=1.0)
    # Captum leaves coordinates with |gradient| <= 1e-6 in place (about 5 % of them on this untrained
    # model); we move every coordinate with a non-zero gradient, as sign(g) says. Same rule for the test:
    captum_pgd.fgsm.zero_thresh = 0.0
    torch.manual_seed(11)
    reference = captum_pgd.perturb(
        images,
        settings["eps"],
        settings["step_size"],
        settings["steps"],
        targets,
        targeted=targeted,
        random_start=True,
        norm="Linf",
    )
    torch.manual_seed(11)
    ours = pgd(model, images, targets, norm="linf", targeted=targeted, random_start=True, keep_worst=False, **settings)
    torch.testing.assert_close(ours.adversarial, reference, atol=1e-6, rtol=0)
    assert (reference - images).abs().max() > 7 / 255


def test_l2_random_start_and_projection_match_captum():
    # Captum's L2 PGD steps along sign(g) (an L∞ step) and projects on the L2 ball; Madry et al. step
    # along g/‖g‖₂, so only the random start (same draws) and the projection are comparable.
    # Captum 0.9's L2 random start broadcasts the radius (B,) against the last input dimension, so it
    # only runs for one example at a time; compare per example.
    model = random_model()
    images, labels, _ = shape_batch(4)
    for row in range(4):
        x, y = images[row : row + 1], labels[row : row + 1]
        torch.manual_seed(row)
        reference = CaptumPGD(model, ce_sum, lower_bound=0.0, upper_bound=1.0).perturb(
            x, 0.5, 0.1, 0, y, random_start=True, norm="L2"
        )
        torch.manual_seed(row)
        ours = pgd(model, x, y, norm="l2", eps=0.5, steps=0, random_start=True)
        torch.testing.assert_close(ours.adversarial, reference, atol=1e-6, rtol=1e-5)
        assert (reference - x).norm() > 0.3


def test_fgsm_matches_captum_fgsm():
    model = random_model()
    images, labels, _ = shape_batch(12)
    captum_fgsm = CaptumFGSM(model, ce_sum, lower_bound=0.0, upper_bound=1.0)
    captum_fgsm.zero_thresh = 0.0  # see the PGD parity test
    reference = captum_fgsm.perturb(images, 4 / 255, labels)
    ours = fgsm(model, images, labels, eps=4 / 255)
    torch.testing.assert_close(ours.adversarial, reference, atol=1e-6, rtol=0)
    assert (reference - images).abs().max() > 3 / 255


def test_fgsm_on_a_linear_model_is_the_closed_form_step():
    # For f(x) = Wx + b, ∇ₓ CE = Wᵀ(softmax(f(x)) − onehot(y)), so FGSM is x + ε·sign(Wᵀ(p − e_y)), clipped.
    torch.manual_seed(0)
    d, k = 3 * 4 * 4, 4
    model = Linear(torch.randn(k, d), torch.randn(k))
    x = torch.rand(10, 3, 4, 4)
    y = torch.randint(0, k, (10,))
    with torch.no_grad():
        p = (x.flatten(1) @ model.weight.T + model.bias).softmax(1)
        gradient = (p - F.one_hot(y, k)) @ model.weight
    expected = (x + 0.1 * gradient.sign().view_as(x)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1).adversarial, expected)
    # L2 variant: ε·g/‖g‖₂ (interior points and a small ε, so the box does not bind).
    x = 0.3 + 0.4 * torch.rand(10, 3, 4, 4)
    with torch.no_grad():
        p = (x.flatten(1) @ model.weight.T + model.bias).softmax(1)
        gradient = (p - F.one_hot(y, k)) @ model.weight
    expected = x + 0.1 * (gradient / gradient.norm(dim=1, keepdim=True)).view_as(x)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1, norm="l2").adversarial, expected)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_finds_the_exact_worst_case_of_a_linear_binary_classifier(norm):
    # The margin m(x) = (w₁ − w₀)·x + c is minimised over the ε-ball by x − ε·sign(v) (L∞) or
    # x − ε·v/‖v‖₂ (L2), v = w₁ − w₀, for an example of class 1 (box not binding in the interior).
    torch.manual_seed(1)
    d = 3 * 4 * 4
    model = Linear(torch.randn(2, d), torch.zeros(2))
    x = 0.3 + 0.4 * torch.rand(6, 3, 4, 4)
    y = torch.ones(6, dtype=torch.long)
    v = (model.weight[1] - model.weight[0]).detach()
    eps = 0.05 if norm == "linf" else 0.3
    optimum = x - eps * (v.sign() if norm == "linf" else v / v.norm()).view(1, 3, 4, 4)
    result = pgd(model, x, y, norm=norm, eps=eps, steps=60, step_size=eps / 5)
    torch.testing.assert_close(result.adversarial, optimum, atol=2e-3, rtol=0)


def test_pgd_does_not_depend_on_max_batch(trained_shape_model):
    images, labels, _ = shape_batch(10)
    whole = pgd(
        trained_shape_model, images, labels, norm="l2", eps=0.5, steps=3, generator=torch.Generator().manual_seed(4)
    )
    sliced = pgd(
        trained_shape_model,
        images,
        labels,
        norm="l2",
        eps=0.5,
        steps=3,
        max_batch=3,
        generator=torch.Generator().manual_seed(4),
    )
    # Convolutions sum in a batch-size-dependent order; three normalised L2 steps amplify that
    # float32 rounding to ~1e-4 on a few pixels, far below the step size (0.5 / 3 * 2.5).
    torch.testing.assert_close(whole.adversarial, sliced.adversarial, atol=1e-3, rtol=0)


def test_bad_attack_settings_name_the_fix():
    model = random_model()
    images, labels, _ = shape_batch(2)
    with pytest.raises(ValueError, match="positive, finite radius"):
        pgd(model, images, labels, eps=0.0)
    with pytest.raises(ValueError, match="Unknown norm 'l1'.*'linf'.*'l2'"):
        PGD(norm="l1")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        PGD(steps=-1)


# ---------------------------------------------------------------------- guard: modes, BatchNorm, .grad
def test_attack_runs_in_eval_mode_and_leaves_modes_statistics_and_grads_untouched():
    model = random_model().train()
    frozen = model.features[2]  # a BatchNorm the user froze in eval mode must stay frozen
    frozen.eval()
    seen_modes = []
    hook = model.features[5].register_forward_hook(lambda module, args, out: seen_modes.append(module.training))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels, _ = shape_batch(6)
    rng = torch.get_rng_state()
    pgd(model, images, labels, norm="l2", eps=0.5, steps=3, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert seen_modes and not any(seen_modes)  # every attack forward ran in eval mode
    assert model.training and model.features[5].training and not frozen.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key  # BatchNorm running stats untouched
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded generator was given: global stream untouched


# ------------------------------------------------------------------------------------------- TRADES
def test_trades_loss_matches_its_definition():
    torch.manual_seed(0)
    clean, adversarial = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    # The TRADES authors' code: KLDivLoss(sum)(log_softmax(adv), softmax(clean)) / batch.
    kl = F.kl_div(F.log_softmax(adversarial, 1), F.softmax(clean, 1), reduction="sum") / 8
    torch.testing.assert_close(
        trades_loss(clean, adversarial, labels, beta=6.0), F.cross_entropy(clean, labels) + 6 * kl
    )
    # Per example, from the definition Σ p log(p/q).
    p, q = clean.softmax(1), adversarial.softmax(1)
    torch.testing.assert_close(trades_kl(clean, adversarial), (p * (p / q).log()).sum(1))
    assert trades_kl(clean, clean).abs().max() < 1e-6


def test_trades_inner_maximisation_raises_the_kl_inside_the_ball(trained_shape_model):
    images, _, _ = shape_batch(12)
    result = trades_adversarial(
        trained_shape_model, images, eps=0.031, steps=10, step_size=0.007, generator=torch.Generator().manual_seed(0)
    )
    assert (result.perturbation.abs().flatten(1).amax(1) <= 0.031 + 1e-6).all()
    with torch.no_grad():
        clean = trained_shape_model(images)
        noisy = trained_shape_model(
            (images + 0.001 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        )
        kl_adversarial = trades_kl(clean, trained_shape_model(result.adversarial))
    torch.testing.assert_close(kl_adversarial, result.loss, atol=1e-4, rtol=1e-3)
    assert kl_adversarial.mean() > 10 * trades_kl(clean, noisy).mean() + 1e-3


# --------------------------------------------------------------------------- gradient maps and energy
def test_loss_gradient_of_a_linear_model_is_the_closed_form():
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 48), torch.randn(3))
    x, y = torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        p = (x.flatten(1) @ model.weight.T + model.bias).softmax(1)
    expected = ((p - F.one_hot(y, 3)) @ model.weight).view_as(x)
    torch.testing.assert_close(loss_gradients(model, x, "label", labels=y).gradients, expected)


def test_gradients_are_taken_in_pixel_space_with_the_normalisation_inside_the_model():
    # ∂L/∂pixels = ∂L/∂(normalised input) / std: the same network fed pre-normalised inputs.
    torch.manual_seed(0)
    inside = SmallCNN(num_classes=5, width=8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]).eval()
    outside = SmallCNN(num_classes=5, width=8).eval()
    outside.load_state_dict(
        {k: v for k, v in inside.state_dict().items() if not k.startswith("features.0.")}, strict=False
    )
    images, labels, _ = shape_batch(4)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    pixels = loss_gradients(inside, images, "label", labels=labels).gradients
    normalised = loss_gradients(outside, (images - mean) / std, "label", labels=labels).gradients
    torch.testing.assert_close(pixels, normalised / std, atol=1e-6, rtol=1e-4)


def test_gradient_object_energy_against_conceptworld_masks():
    images, labels, masks = shape_batch(6)
    # A gradient that lives on the object scores 1, one off it 0, a constant one the object's area.
    on = masks.unsqueeze(1).float().expand(-1, 3, -1, -1) * torch.randn(6, 3, 32, 32)
    off = (~masks).unsqueeze(1).float().expand(-1, 3, -1, -1) * torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(gradient_object_energy(on, masks), torch.ones(6))
    torch.testing.assert_close(gradient_object_energy(off, masks), torch.zeros(6))
    torch.testing.assert_close(
        gradient_object_energy(torch.ones(6, 3, 32, 32), masks), masks.flatten(1).float().mean(1)
    )
    # A model that only looks at the object has all its loss-gradient energy on it.
    weight = torch.zeros(5, 3, 32, 32)
    weight[:, :, masks[0]] = torch.randn(5, 3, int(masks[0].sum()))
    model = Linear(weight.flatten(1), torch.zeros(5))
    gradients = loss_gradients(model, images[:1], "label", labels=labels[:1]).gradients
    assert gradient_object_energy(gradients, masks[:1]).item() == pytest.approx(1.0)
