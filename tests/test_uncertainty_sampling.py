"""MC dropout, vectorised ensembles, Bayes by Backprop, keyed noise and familiarity — pure torch.

Independent evidence: explicit per-member modules (ensembles), explicit weight sampling and the
Gaussian closed forms (local reparameterisation, KL), the Bernoulli dropout expectation, and a
1-D regression toy where the truth about epistemic uncertainty is known (it must grow away from
the data).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.models import SmallCNN
from xai_lightning.uncertainty import (
    BayesianConv2d,
    BayesianLinear,
    KeyedNoise,
    MCDropoutError,
    UnsupportedForPacking,
    VectorisedEnsemble,
    bayesian_logits,
    fit_autoencoder,
    keyed_weight_noise,
    kl_divergence,
    make_bayesian,
    mc_dropout_logits,
    mc_dropout_predict,
    mutual_information,
    ood_auroc,
    reconstruction_error,
    reinitialise,
    sample_passes,
    summarise_samples,
)

ROOT = Path(__file__).resolve().parents[1]


def test_uncertainty_package_never_imports_lightning():
    # The root package may import Lightning (callbacks); load xai_lightning.uncertainty without it.
    code = (
        "import sys, types\n"
        f"root = types.ModuleType('xai_lightning'); root.__path__ = [{str(ROOT / 'xai_lightning')!r}]\n"
        "sys.modules['xai_lightning'] = root\n"
        "import xai_lightning.uncertainty\n"
        "assert xai_lightning.uncertainty.__file__.startswith(root.__path__[0])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------- keyed noise
def test_keyed_noise_depends_only_on_the_keys_not_on_the_batch():
    noise = KeyedNoise(seed=3)
    keys, passes = torch.arange(100), torch.zeros(100, dtype=torch.long)
    noise.set_rows(keys, passes)
    full = noise.uniform(stream=1, shape=(100, 50))
    noise.set_rows(keys[[7, 42]], passes[[7, 42]])
    assert torch.equal(noise.uniform(stream=1, shape=(2, 50)), full[[7, 42]])
    assert not torch.equal(noise.uniform(stream=2, shape=(2, 50)), full[[7, 42]])
    assert full.min() >= 0 and full.max() < 1 and abs(float(full.mean()) - 0.5) < 0.01
    noise.set_rows(torch.arange(2000), torch.ones(2000, dtype=torch.long))
    normal = noise.normal(stream=1, shape=(2000, 20))
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1) < 0.02
    # Neighbouring keys and elements are uncorrelated.
    u = noise.uniform(stream=5, shape=(2000, 20))
    assert abs(float(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1])) < 0.02


def test_sample_passes_batches_all_passes_into_one_forward():
    calls = []

    def forward(rows, example, pass_index):
        calls.append(rows.shape[0])
        return torch.stack([rows.sum(1), pass_index.float()], dim=1)

    x = torch.arange(6.0).view(3, 2)
    out = sample_passes(forward, x, passes=4)
    assert calls == [12] and out.shape == (4, 3, 2)
    assert torch.equal(out[:, :, 0], x.sum(1).expand(4, 3)) and torch.equal(out[2, :, 1], torch.full((3,), 2.0))
    calls.clear()
    assert torch.equal(sample_passes(forward, x, passes=4, max_batch=5), out) and calls == [5, 5, 2]


# ---------------------------------------------------------------------------------------------- MC dropout
def dropout_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=4, dropout=0.5)
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.rand(16, 3, 32, 32))
    model.features[5].eval()  # a frozen BatchNorm must stay frozen
    return model


def test_mc_dropout_leaves_modes_batchnorm_statistics_and_global_rng_exactly_as_they_were():
    model = dropout_cnn()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modes = [module.training for module in model.modules()]
    x = torch.rand(8, 3, 32, 32)
    rng = torch.get_rng_state()
    summary = mc_dropout_predict(model, x, passes=10)
    assert summary.mean.shape == (8, 5) and bool((summary.mutual_information > 0).all())
    assert [module.training for module in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # running_mean/var and num_batches_tracked included
    assert torch.equal(torch.get_rng_state(), rng)


def test_mc_dropout_equals_train_mode_dropout_in_expectation_and_is_batching_invariant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.Dropout(0.3), nn.Linear(40, 3))
    x = torch.randn(5, 6)
    logits = mc_dropout_logits(model, x, passes=4000)
    # The last layer is linear: the expectation over Bernoulli masks scaled by 1/(1-p) is the eval output.
    with torch.no_grad():
        assert torch.allclose(logits.mean(0), model.eval()(x), atol=0.05)
    before, after = [], []  # the dropout layer's input, and what reaches the next layer
    handles = [
        model[0].register_forward_hook(lambda m, i, o: before.append(o)),
        model[2].register_forward_pre_hook(lambda m, i: after.append(i[0])),
    ]
    mc_dropout_logits(model, x, passes=50)
    for handle in handles:
        handle.remove()
    inputs, outputs = before[0].repeat(50, 1), after[0]  # the shared prefix ran once; its output is repeated
    kept = outputs != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.02
    assert torch.allclose(outputs[kept], inputs[kept] / 0.7)
    # The same masks however the passes are chunked and whichever subset of examples is evaluated
    # (equal up to the rounding of matrix products of other sizes).
    full = mc_dropout_logits(model, x, passes=6, seed=1)
    assert torch.allclose(mc_dropout_logits(model, x, passes=6, seed=1, max_batch=7), full, atol=1e-6, rtol=0)
    assert torch.allclose(
        mc_dropout_logits(model, x[3:], passes=6, seed=1, keys=torch.tensor([3, 4])), full[:, 3:], atol=1e-6, rtol=0
    )
    assert not torch.equal(mc_dropout_logits(model, x, passes=6, seed=2), full)


class KeepsItsBatchSize(nn.Module):
    """A forward that reuses the input's batch size after dropout, and a residual around the dropout:
    repeating rows at the dropout layer breaks it, so MC dropout must fall back to repeating the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.dropout, self.head = nn.Linear(6, 8), nn.Dropout(0.4), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h + self.dropout(h)).view(x.shape[0], 3)


def test_shared_prefix_gives_the_same_passes_and_falls_back_when_the_model_forbids_it():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=4, dropout=0.5).eval()
    x = torch.rand(7, 3, 32, 32)
    calls = []
    handle = model.features[1].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    shared = mc_dropout_logits(model, x, passes=9, max_batch=30)
    assert calls[:3] == [3, 3, 1]  # 30 rows per forward = 3 examples x 9 passes; conv layers saw each image once
    calls.clear()
    repeated = mc_dropout_logits(model, x, passes=9, max_batch=30, share_prefix=False)
    assert calls == [30, 30, 3]
    handle.remove()
    assert torch.allclose(shared, repeated, atol=1e-5, rtol=0)
    odd = KeepsItsBatchSize()
    x = torch.randn(5, 6)
    assert torch.allclose(mc_dropout_logits(odd, x, passes=4), mc_dropout_logits(odd, x, passes=4, share_prefix=False))


def test_channel_dropout_drops_whole_channels():
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.Dropout2d(0.5), nn.Flatten(1), nn.Linear(6 * 25, 2))
    seen = []
    model[2].register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    mc_dropout_logits(model, torch.randn(3, 2, 5, 5), passes=4)
    channels = seen[0].flatten(2)
    dropped = (channels == 0).all(2)
    assert dropped.any() and ((channels != 0).all(2) | dropped).all()


def test_mc_dropout_bad_input_names_the_fix():
    with pytest.raises(MCDropoutError, match=r"no dropout layer.*SmallCNN\(dropout=0.2\)"):
        mc_dropout_logits(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(2, 3, 2, 2))
    with pytest.raises(MCDropoutError, match="all have p=0"):
        mc_dropout_logits(SmallCNN(num_classes=5, width=4, dropout=0.0), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="T >= 2"):
        mc_dropout_logits(SmallCNN(num_classes=5, width=4, dropout=0.2), torch.rand(2, 3, 32, 32), passes=1)
    with pytest.raises(MCDropoutError, match="AlphaDropout"):
        mc_dropout_logits(nn.Sequential(nn.Linear(3, 3), nn.AlphaDropout(0.2)), torch.rand(2, 3))


# ---------------------------------------------------------------------------------------------- ensembles
def members(k: int = 3) -> list[nn.Module]:
    torch.manual_seed(0)
    return [SmallCNN(num_classes=5, width=4, dropout=0.0) for _ in range(k)]


@pytest.mark.parametrize(("layout", "channels_last"), [("packed", False), ("packed", True), ("vmap", None)])
def test_vectorised_ensemble_equals_separate_members_in_eval_and_train_mode_and_in_gradients(layout, channels_last):
    separate = members()
    ensemble = VectorisedEnsemble(separate, layout=layout, channels_last=channels_last)
    assert ensemble.layout == layout
    x, y = torch.rand(10, 3, 32, 32), torch.randint(0, 5, (10,))
    if channels_last:  # the same kernels for the members alone: rounding then agrees, even at ReLU kinks
        separate = [member.to(memory_format=torch.channels_last) for member in separate]
        x = x.contiguous(memory_format=torch.channels_last)
    ensemble.eval()
    for member in separate:
        member.eval()
    with torch.no_grad():
        expected = torch.stack([member(x) for member in separate])
        assert torch.allclose(ensemble(x), expected, atol=1e-5)
    # Train mode: batch statistics per member, running statistics updated per member, same gradients.
    ensemble.train()
    for member in separate:
        member.train()
    stacked = ensemble(x)
    loss = sum(F.cross_entropy(logits, y) for logits in stacked)
    grads = torch.autograd.grad(loss, [ensemble.stacked.features[1].weight, ensemble.stacked.classifier.weight])
    for k, member in enumerate(separate):
        out = member(x)
        assert torch.allclose(stacked[k], out, atol=1e-5)
        member_grads = torch.autograd.grad(
            F.cross_entropy(out, y), [member.features[1].weight, member.classifier.weight]
        )
        for ours, theirs in zip(grads, member_grads):
            assert torch.allclose(ours[k], theirs, atol=1e-5)
        assert torch.allclose(ensemble.stacked.features[2].running_mean[k], member.features[2].running_mean, atol=1e-6)
        assert int(ensemble.stacked.features[2].num_batches_tracked[k]) == int(member.features[2].num_batches_tracked)
    assert ensemble.member(1).classifier.weight.shape == separate[1].classifier.weight.shape
    assert torch.equal(ensemble.member(1).classifier.weight, separate[1].classifier.weight)


@pytest.mark.parametrize("layout", ["packed", "vmap"])
def test_ensemble_members_draw_different_dropout_masks_and_disagree(layout):
    torch.manual_seed(0)
    same = SmallCNN(num_classes=5, width=4, dropout=0.5)
    ensemble = VectorisedEnsemble([same, same], layout=layout)  # identical weights: only dropout can make them differ
    ensemble.train()
    out = ensemble(torch.rand(4, 3, 32, 32))
    assert not torch.allclose(out[0], out[1])
    ensemble.eval()
    with torch.no_grad():
        probs = ensemble(torch.rand(4, 3, 32, 32)).softmax(-1)
    assert torch.allclose(mutual_information(probs), torch.zeros(4), atol=1e-6)


def packable_architectures() -> dict[str, nn.Module]:
    """Chains the packed layout accepts, covering every state transition it makes (see packed_ensemble)."""
    return {
        # Normalize (per-member buffers) widens the shared input before the first convolution.
        "small_cnn_normalised": SmallCNN(num_classes=5, width=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)),
        # Biased, strided and grouped convolutions, average pooling, channel dropout, flatten as a function,
        # batch norm after the flatten (members state), a linear chain.
        "grouped_conv_mlp_head": nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=True),
            nn.BatchNorm2d(4, momentum=0.3),
            nn.LeakyReLU(0.1),
            nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=True),
            nn.AvgPool2d(2),
            nn.Dropout2d(0.0),
            nn.Flatten(),
            nn.Linear(6 * 3 * 3, 7),
            nn.BatchNorm1d(7),
            nn.GELU(),
            nn.Linear(7, 5, bias=False),
        ),
        # Operations on the shared input (pooling, activation), then a flatten straight away.
        "mlp_on_shared_input": nn.Sequential(
            nn.MaxPool2d(2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(3 * 8 * 8, 6),
            nn.ReLU(),
            nn.Dropout(0.0),
            nn.Linear(6, 5),
        ),
        # Batch norm without running statistics and with no affine parameters, adaptive max pooling.
        "stateless_batch_norm": nn.Sequential(
            nn.Conv2d(3, 4, 3, groups=1),
            nn.BatchNorm2d(4, track_running_stats=False, affine=False),
            nn.SiLU(),
            nn.AdaptiveMaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 5),
        ),
    }


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("architecture", sorted(packable_architectures()))
def test_packed_layout_equals_each_member_alone_in_outputs_running_statistics_and_gradients(
    architecture, channels_last
):
    """Independent reference: K ordinary modules, each run alone on the same batch (and the vmap layout).

    Channels-last packing is compared with members run channels-last (the same kernels); NCHW packing
    also with the vmap layout."""
    torch.manual_seed(0)
    separate = [reinitialise(packable_architectures()[architecture]) for _ in range(3)]
    for member in separate:  # non-trivial running statistics, different per member
        for name, buffer in member.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    packed = VectorisedEnsemble(separate, layout="auto", channels_last=channels_last)
    vmapped = VectorisedEnsemble(separate, layout="vmap")
    assert (packed.layout, packed.layout_reason, vmapped.layout) == ("packed", None, "vmap")
    x = torch.rand(6, 3, 16, 16)
    if channels_last:
        separate = [member.to(memory_format=torch.channels_last) for member in separate]
        x = x.contiguous(memory_format=torch.channels_last)
    fired: list[str] = []  # as in the vmap layout, the storage modules' hooks never see (wide) activations
    for name, module in packed.stacked.named_modules():
        module.register_forward_hook(lambda *_, name=name: fired.append(name))
    for train in (False, True, True):  # twice in train mode: running statistics must keep up
        for module in [packed, vmapped, *separate]:
            module.train(train)
        outputs = packed(x)
        assert torch.allclose(outputs, vmapped(x), atol=1e-5 if not channels_last else 1e-4)
        assert outputs.shape[:2] == (3, 6)
        names = [name for name, _ in packed.stacked.named_parameters()]
        grads = torch.autograd.grad(outputs.square().sum(), list(packed.stacked.parameters()))
        for k, member in enumerate(separate):
            alone = member(x)
            assert torch.allclose(outputs[k], alone, atol=1e-5), (architecture, train, k)
            member_grads = torch.autograd.grad(alone.square().sum(), list(member.parameters()))
            for name, ours, theirs in zip(names, grads, member_grads):
                assert torch.allclose(ours[k], theirs, atol=1e-4, rtol=1e-4), (architecture, train, k, name)
            for (name, ours), (_, theirs) in zip(packed.stacked.named_buffers(), member.named_buffers()):
                assert torch.allclose(ours[k].float(), theirs.float(), atol=1e-6), (architecture, train, k, name)
    assert fired == []


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.conv(x)).mean((2, 3)))


class StandardisedConv2d(nn.Conv2d):  # a subclass with its own forward: packing must not assume Conv2d's
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight - self.weight.mean(), self.bias, self.stride, self.padding)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (Residual, "straight chain"),
        (lambda: nn.Sequential(StandardisedConv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 5)), "straight chain"),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.Flatten()), "momentum=None"),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(768, 4), nn.MaxPool1d(2)), "not supported"),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten()), "not supported"),
    ],
)
def test_unsupported_architectures_fall_back_to_vmap_and_packed_on_request_names_the_operation(make, reason):
    torch.manual_seed(0)
    separate = [make() for _ in range(2)]
    ensemble = VectorisedEnsemble(separate)
    assert ensemble.layout == "vmap"
    assert reason in ensemble.layout_reason
    x = torch.rand(4, 3, 16, 16)
    ensemble.eval()
    for member in separate:
        member.eval()
    with torch.no_grad():
        assert torch.allclose(ensemble(x), torch.stack([member(x) for member in separate]), atol=1e-5)
    with pytest.raises(UnsupportedForPacking, match="layout='auto' or 'vmap'"):
        VectorisedEnsemble(separate, layout="packed")


def test_packed_dropout_on_the_shared_input_draws_an_independent_mask_for_every_member():
    """Dropout before any member-specific layer must still differ per member (the input is widened first)."""
    torch.manual_seed(0)
    same = nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    ensemble = VectorisedEnsemble([same] * 4, layout="packed").train()  # identical weights
    x = torch.rand(64, 3, 4, 4)
    out = ensemble(x)
    for k in range(1, 4):
        assert not torch.allclose(out[0], out[k])
    # Each member's mask keeps about half the inputs: the mean output is the undropped one in expectation.
    ensemble.eval()
    with torch.no_grad():
        undropped = ensemble(x)
    ensemble.train()
    with torch.no_grad():
        averaged = torch.stack([ensemble(x) for _ in range(400)]).mean(0)
    assert torch.allclose(averaged, undropped, atol=0.1)


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        VectorisedEnsemble(members(1))
    with pytest.raises(ValueError, match="one architecture"):
        VectorisedEnsemble([SmallCNN(width=4), SmallCNN(width=8)])
    with pytest.raises(ValueError, match="'auto', 'packed' or 'vmap'"):
        VectorisedEnsemble(members(2), layout="wide")


# ---------------------------------------------------------------------------------------------- Bayes by Backprop
def test_local_reparameterisation_matches_explicit_weight_sampling():
    torch.manual_seed(0)
    layer = BayesianLinear(4, 3)
    with torch.no_grad():
        layer.weight_rho.uniform_(-2, 0)
        layer.bias_rho.uniform_(-2, 0)
    x = torch.randn(1, 4)
    samples = 40_000
    layer.train()
    with torch.no_grad():
        local = layer(x.expand(samples, 4))
        weights = layer.weight_mu + layer.weight_sigma * torch.randn(samples, 3, 4)
        biases = layer.bias_mu + layer.bias_sigma * torch.randn(samples, 3)
        explicit = torch.einsum("soi,i->so", weights, x[0]) + biases
        mean = x @ layer.weight_mu.T + layer.bias_mu
        variance = x.square() @ layer.weight_sigma.square().T + layer.bias_sigma.square()
    for draws in (local, explicit):
        assert torch.allclose(draws.mean(0), mean[0], atol=4 * float(variance.max().sqrt()) / math.sqrt(samples))
        assert torch.allclose(draws.var(0), variance[0], rtol=0.03)
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight_mu, layer.bias_mu))  # eval: posterior means


def test_bayesian_conv_moments_and_kl_closed_form():
    torch.manual_seed(0)
    conv = BayesianConv2d(2, 3, 3, padding=1, prior_sigma=0.5)
    with torch.no_grad():
        conv.weight_rho.fill_(-1.5)
    x = torch.randn(1, 2, 5, 5)
    conv.train()
    with torch.no_grad():
        draws = conv(x.expand(20_000, 2, 5, 5))
        mean = F.conv2d(x, conv.weight_mu, conv.bias_mu, padding=1)
        variance = F.conv2d(x.square(), conv.weight_sigma.square(), conv.bias_sigma.square(), padding=1)
    assert torch.allclose(draws.var(0), variance[0], rtol=0.05)
    assert torch.allclose(draws.mean(0), mean[0], atol=0.03)
    # KL(q || p) against a Monte Carlo estimate of E_q[log q(w) - log p(w)].
    q = torch.distributions.Normal(conv.weight_mu, conv.weight_sigma)
    p = torch.distributions.Normal(torch.zeros_like(conv.weight_mu), 0.5)
    w = q.sample((4000,))
    with torch.no_grad():
        estimate = float((q.log_prob(w) - p.log_prob(w)).sum((1, 2, 3, 4)).mean())
    q_bias = torch.distributions.Normal(conv.bias_mu, conv.bias_sigma)
    exact_bias = float(torch.distributions.kl_divergence(q_bias, torch.distributions.Normal(0.0, 0.5)).sum())
    assert float(kl_divergence(conv)) == pytest.approx(estimate + exact_bias, rel=0.02)


def test_make_bayesian_keeps_the_function_at_the_posterior_means():
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        before = network(x)
        converted = make_bayesian(network, "all").eval()
        assert torch.allclose(converted(x), before, atol=1e-6)
    assert isinstance(converted.classifier, BayesianLinear) and isinstance(converted.features[1], BayesianConv2d)
    with pytest.raises(ValueError, match="cannot convert.*features.2"):
        make_bayesian(SmallCNN(width=4), ["features.2"])
    logits = bayesian_logits(converted, x, samples=4)
    assert logits.shape == (4, 3, 5)
    assert torch.allclose(
        bayesian_logits(converted, x[1:], samples=4, keys=torch.tensor([1, 2])), logits[:, 1:], atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="Bayesian layers"):
        bayesian_logits(SmallCNN(width=4), x, samples=4)
    with pytest.raises(ValueError, match="at least 2"):
        bayesian_logits(converted, x, samples=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_bayes_by_backprop_predictive_std_grows_away_from_the_training_data(seed):
    """1-D regression, y = sin(3x) on x in [-1, 1]: the posterior is sure where it saw data, unsure far away."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(128, 1, generator=generator) * 2 - 1
    y = torch.sin(3 * x) + 0.05 * torch.randn(128, 1, generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(
        BayesianLinear(1, 16, prior_sigma=1.0, init_rho=-4),
        nn.ReLU(),
        BayesianLinear(16, 16, prior_sigma=1.0, init_rho=-4),
        nn.ReLU(),
        BayesianLinear(16, 1, prior_sigma=1.0, init_rho=-4),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    noise_sigma = 0.1
    model.train()
    for _ in range(400):  # far/inside std ratio 4.4-6.3 after 300 steps over 6 seeds; 14-20 after 600
        prediction = model(x)
        nll = ((prediction - y).square() / (2 * noise_sigma**2)).mean()
        loss = nll + kl_divergence(model) / x.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grid = torch.linspace(-4, 4, 81).view(-1, 1)
    noise = KeyedNoise(seed=0)

    def forward(rows, example, pass_index):
        noise.set_rows(example, pass_index)
        return model(rows)

    model.eval()
    with torch.no_grad(), keyed_weight_noise(model, noise):
        std = sample_passes(forward, grid, passes=200).std(0).squeeze(1)
    inside = std[(grid.squeeze(1).abs() <= 1)].mean()
    far = std[(grid.squeeze(1).abs() >= 3)].mean()
    assert far > 3 * inside, (float(inside), float(far))
    assert float(std[0]) > float(std[20]) > float(std[40]) * 0.9  # grows as x leaves the data to the left


# ---------------------------------------------------------------------------------------------- summaries, familiarity
def test_summaries_decompose_total_uncertainty():
    # Two confident samples that disagree: high mutual information; two identical uniform ones: none.
    disagree = torch.tensor([[[0.99, 0.01]], [[0.01, 0.99]]])
    uniform = torch.full((2, 1, 2), 0.5)
    a, b = summarise_samples(disagree), summarise_samples(uniform)
    assert float(a.mutual_information) > 0.6 and float(b.mutual_information) == pytest.approx(0.0, abs=1e-7)
    assert float(a.entropy) == pytest.approx(math.log(2), abs=1e-6) == float(b.entropy)
    assert float(a.entropy) == pytest.approx(float(a.expected_entropy + a.mutual_information), abs=1e-6)
    assert float(a.std) == pytest.approx(torch.tensor([0.99, 0.01]).std().item(), abs=1e-6)


def test_familiarity_autoencoder_scores_unfamiliar_inputs_higher():
    from xai_lightning.data import ConceptWorld

    world = ConceptWorld(400, seed=0)
    rng = torch.get_rng_state()
    untrained = fit_autoencoder(world.images[:300], steps=0, width=8, seed=0)
    autoencoder = fit_autoencoder(world.images[:300], steps=80, batch_size=32, width=8, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # private generator only
    familiar = reconstruction_error(autoencoder, world.images[300:])
    assert familiar.mean() < 0.5 * reconstruction_error(untrained, world.images[300:]).mean()
    noise = torch.rand(100, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ood_auroc(familiar, reconstruction_error(autoencoder, noise)) > 0.95  # 1.0 over 3 seeds
    flat = fit_autoencoder(torch.randn(256, 10), steps=20, seed=0)
    assert reconstruction_error(flat, torch.randn(7, 10)).shape == (7,)
