"""Perturbation methods: PDA, RISE, LIME, KernelSHAP, XRAI.

Independent evidence per method:
* KernelSHAP — closed form on a linear model (w ⊙ (x − x')), brute-force Shapley formula on a
  tiny non-linear model, Captum's KernelShap fed the same coalitions;
* LIME — Captum's Lime (scikit-learn Ridge, the lime kernel recomputed with scikit-learn's cosine
  distance) fed the same coalitions; the linear closed form with α = 0;
* RISE and PDA — an analytic model that reads only a known region;
* XRAI — the greedy order re-derived by brute force; the analytic region model;
* all — localisation on the ConceptWorld model trained to ~100 % (conftest), batching invariance.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from xai_lightning.attribution.kernel_shap import KernelShap, shapley_kernel
from xai_lightning.attribution.lime import Lime
from xai_lightning.attribution.prediction_difference import PredictionDifferenceAnalysis
from xai_lightning.attribution.registry import attribute, get_method
from xai_lightning.attribution.rise import Rise
from xai_lightning.attribution.xrai import Xrai, rank_regions
from xai_lightning.data import ConceptWorld
from xai_lightning.evaluation import energy_in_mask, uniform_energy_in_mask


class RegionModel(nn.Module):
    """Two classes; logit 0 = 8·(mean of the pixels in rows/cols [top, top+size) − 0.5), logit 1 = 0."""

    def __init__(self, top: int = 4, left: int = 4, size: int = 8) -> None:
        super().__init__()
        self.region = (slice(top, top + size), slice(left, left + size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x[:, :, self.region[0], self.region[1]].mean(dim=(1, 2, 3))
        return torch.stack([8 * (inside - 0.5), torch.zeros_like(inside)], dim=1)


def region_mask(size: int = 32, top: int = 4, left: int = 4, side: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.fixture(scope="module")
def world():
    data = ConceptWorld(num_samples=6, seed=321)
    images, labels = data.tensors()
    masks = torch.stack([data[i]["object_mask"] for i in range(len(data))])
    return images, labels, masks


@pytest.fixture(scope="module")
def random_cnn():
    """An untrained plain CNN whose class scores react strongly to removing superpixels.

    (An untrained SmallCNN's logits barely move — ~1e-5 — which would make a 1e-5 tolerance vacuous.)
    """
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
        nn.Identity(),
    ).eval()


def scaled(model: nn.Module, factor: float) -> nn.Module:
    return nn.Sequential(model, ScaleBy(factor)).eval()


class ScaleBy(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


# ----------------------------------------------------------------------------- KernelSHAP
def test_kernel_shap_recovers_linear_shapley_values():
    torch.manual_seed(1)
    model = nn.Linear(12, 3)
    x, baseline = torch.randn(5, 12), torch.randn(12)
    explainer = KernelShap(num_samples=120, baseline=baseline, seed=3)  # 2^12 > 120: sampled coalitions
    values = explainer.attribute(model, x, target=2)
    expected = model.weight[2].detach() * (x - baseline)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)


def brute_force_shapley(f, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """φ_i = Σ_{S ⊆ N∖i} |S|!(M−|S|−1)!/M! · (f(S ∪ i) − f(S)), absent features at the baseline."""
    m = x.shape[0]

    def value(subset) -> float:
        z = baseline.clone()
        z[list(subset)] = x[list(subset)]
        return float(f(z.unsqueeze(0)))

    phi = torch.zeros(m, dtype=torch.float64)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[i] += weight * (value(subset + (i,)) - value(subset))
    return phi


def test_kernel_shap_exhaustive_equals_shapley_formula_on_nonlinear_model():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double().eval()
    x, baseline = torch.randn(3, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    values = KernelShap(num_samples=32, baseline=baseline).attribute(model, x, target=1)  # 2^5 = 32: enumerated
    for row in range(3):
        expected = brute_force_shapley(lambda z: model(z)[0, 1], x[row], baseline)
        torch.testing.assert_close(values[row], expected, atol=1e-8, rtol=0)


def test_sampled_kernel_shap_converges_to_shapley_values():
    """The sampled estimator (sizes ∝ (M−1)/(k(M−k)), weight 1) against exact values of 11 features."""
    torch.manual_seed(5)
    m = 11
    model = nn.Sequential(nn.Linear(m, 16), nn.Tanh(), nn.Linear(16, 2)).double().eval()
    x, baseline = (
        3 * torch.randn(1, m, dtype=torch.float64),
        torch.zeros(m, dtype=torch.float64),
    )  # saturating tanh: interactions
    # exact Shapley values from all 2^M subset values at once
    subsets = torch.tensor(list(itertools.product((0, 1), repeat=m)), dtype=torch.float64)
    with torch.no_grad():
        value = model(subsets * x + (1 - subsets) * baseline)[:, 1]
    codes = (subsets.long() * (2 ** torch.arange(m - 1, -1, -1))).sum(1)
    lookup = torch.empty_like(value)
    lookup[codes] = value
    sizes = subsets.sum(1).long()
    weight = torch.tensor(
        [math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) for k in range(m)], dtype=torch.float64
    )
    exact = torch.zeros(m, dtype=torch.float64)
    for i in range(m):
        without = subsets[:, i] == 0
        bit = 2 ** (m - 1 - i)
        exact[i] = (weight[sizes[without]] * (lookup[codes[without] + bit] - lookup[codes[without]])).sum()
    estimate = KernelShap(num_samples=1500, baseline=baseline, seed=0).attribute(model, x, target=1)[0]
    assert 2**m > 1500  # sampled, not enumerated
    torch.testing.assert_close(estimate.sum(), exact.sum())  # efficiency holds exactly
    error = (estimate - exact).abs().max() / exact.abs().max()
    assert error < 0.15, f"relative error {error:.3f}"  # measured 0.065 at seed 0


def test_shapley_kernel_values():
    # π(M=4, k=1) = 3 / (4·1·3) = 1/4; π(4, 2) = 3 / (6·2·2) = 1/8; ends get 0 (handled by the constraint).
    weights = shapley_kernel(torch.tensor([0, 1, 2, 3, 4]), torch.tensor(4))
    torch.testing.assert_close(weights, torch.tensor([0, 0.25, 0.125, 0.25, 0], dtype=torch.float64))


def _captum_on_our_coalitions(captum_method, explanation, inputs, baselines, target):
    """Run a Captum LimeBase method per example on exactly our coalitions; ``(B, M)`` coefficients."""
    rows = []
    for b in range(inputs.shape[0]):
        coalitions = explanation.coalitions[b, :, : int(explanation.num_features[b])]

        def replay(original_input, coalitions=coalitions, **kwargs):
            for coalition in coalitions:
                yield coalition.view(1, -1)

        captum_method.perturb_func = replay
        mask = explanation.feature_masks[b : b + 1]
        mask = mask.unsqueeze(1) if inputs.dim() == 4 else mask
        coefficients = captum_method.attribute(
            inputs[b : b + 1],
            baselines=baselines[b : b + 1],
            target=target,
            feature_mask=mask,
            n_samples=coalitions.shape[0],
            perturbations_per_eval=coalitions.shape[0],
            return_input_shape=False,
        )
        rows.append(coefficients.view(-1))
    return rows


def test_kernel_shap_matches_captum_on_identical_coalitions(world, random_cnn):
    captum = pytest.importorskip("captum.attr")
    images, model = world[0][:3], scaled(random_cnn, 1000.0)
    explainer = KernelShap(num_samples=80, baseline="mean", segmentation="slic", seed=5)
    ours = explainer.explain(model, images, target=2)
    assert int(ours.num_features.min()) >= 7  # 2^M > 80: the sampled (not enumerated) estimator
    baselines = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    theirs = _captum_on_our_coalitions(captum.KernelShap(model), ours, images, baselines, 2)
    for b, coefficients in enumerate(theirs):
        m = int(ours.num_features[b])
        scale = float(ours.coefficients[b, :m].abs().max())
        assert scale > 0.1  # the comparison is not vacuous
        # Captum approximates the efficiency constraint by a weight of 1e6 on the two end coalitions
        # and fits in float32 through scikit-learn; ours solves the constraint exactly in float64. The
        # 1e6 weight leaves a residual of ~5e-5 of the scale (measured), hence 2e-4 · scale here.
        torch.testing.assert_close(ours.coefficients[b, :m], coefficients.float(), atol=2e-4 * scale, rtol=0)


def test_kernel_shap_tabular_matches_captum(random_cnn):
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 10)
    ours = KernelShap(num_samples=150, baseline="zero", seed=2).explain(model, x, target=0)
    theirs = _captum_on_our_coalitions(captum.KernelShap(model), ours, x, torch.zeros_like(x), 0)
    for b, coefficients in enumerate(theirs):
        torch.testing.assert_close(ours.coefficients[b], coefficients.float(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- LIME
def _lime_similarity(kernel_width):
    from sklearn.metrics.pairwise import cosine_distances

    def similarity(original_input, perturbed_input, perturbed_interpretable_input, **kwargs):
        z = perturbed_interpretable_input.double().numpy()
        d = float(cosine_distances(z, torch.ones_like(perturbed_interpretable_input).double().numpy())[0, 0])
        return torch.tensor([math.exp(-(d**2) / kernel_width**2)])

    return similarity


@pytest.mark.parametrize("tabular", [False, True])
def test_lime_matches_captum_on_identical_coalitions(world, random_cnn, tabular):
    captum = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnRidge

    if tabular:
        torch.manual_seed(6)
        model = nn.Sequential(nn.Linear(9, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
        inputs, target = torch.randn(2, 9), 1
        baselines = torch.zeros_like(inputs)
        explainer = Lime(num_samples=120, baseline="zero", kernel_width=0.25, alpha=1.0, seed=8)
    else:
        model, inputs, target = scaled(random_cnn, 1000.0), world[0][:2], 3
        baselines = inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)
        explainer = Lime(num_samples=120, baseline="mean", kernel_width=0.25, alpha=1.0, segmentation="slic", seed=8)
    ours = explainer.explain(model, inputs, target=target)
    lime = captum.Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=_lime_similarity(0.25))
    theirs = _captum_on_our_coalitions(lime, ours, inputs, baselines, target)
    for b, coefficients in enumerate(theirs):
        m = int(ours.num_features[b])
        scale = float(ours.coefficients[b, :m].abs().max())
        assert scale > 1e-2  # the comparison is not vacuous
        # scikit-learn fits in float32 (Captum hands it float32 tensors): 1e-5 relative to the scale
        torch.testing.assert_close(ours.coefficients[b, :m], coefficients.float(), atol=1e-5 * max(scale, 1.0), rtol=0)


def test_lime_without_penalty_recovers_linear_model():
    torch.manual_seed(3)
    model = nn.Linear(8, 2)
    x, baseline = torch.randn(4, 8), torch.randn(8)
    values = Lime(num_samples=100, baseline=baseline, alpha=0.0, seed=1).attribute(model, x, target=0)
    torch.testing.assert_close(values, model.weight[0].detach() * (x - baseline), atol=1e-5, rtol=0)


def test_lime_top_k_refits_the_k_largest_features():
    from sklearn.linear_model import LinearRegression

    torch.manual_seed(3)
    model = nn.Linear(8, 2)
    x = torch.randn(3, 8)
    fit = Lime(num_samples=100, baseline="zero", alpha=0.0, top_k=3, seed=1).explain(model, x, target=0)
    assert ((fit.coefficients != 0).sum(1) == 3).all()
    truth = model.weight[0].detach() * x  # the full fit is exact on a linear model
    for b in range(3):
        top = truth[b].abs().topk(3).indices.sort().values
        assert torch.equal(fit.coefficients[b].nonzero().squeeze(1), top)
        # the refit on those columns alone is scikit-learn's weighted least squares
        design = fit.coalitions[b][:, top].double().numpy()
        reference = LinearRegression().fit(
            design, fit.scores[b].double().numpy(), sample_weight=fit.weights[b].double().numpy()
        )
        torch.testing.assert_close(
            fit.coefficients[b, top].double(), torch.from_numpy(reference.coef_), atol=1e-5, rtol=0
        )


# ----------------------------------------------------------------------------- RISE and PDA: analytic region
def test_rise_mass_concentrates_on_the_region_the_model_reads():
    model, mask = RegionModel(), region_mask()
    x = torch.ones(2, 3, 32, 32)
    saliency = Rise(num_masks=600, grid_size=7, seed=0).attribute(model, x, target=0)
    assert saliency.shape == (2, 32, 32)
    far = torch.ones(32, 32, dtype=torch.bool)
    far[:18, :18] = False  # farther than two grid cells from the region
    inside, outside = saliency[:, mask], saliency[:, far]
    assert (inside.mean(1) > outside.mean(1) + 5 * outside.std(1)).all()
    assert (
        energy_in_mask(saliency - saliency.amin((1, 2), keepdim=True), mask.expand(2, -1, -1))
        > 2 * uniform_energy_in_mask(mask.expand(2, -1, -1))
    ).all()


@pytest.mark.parametrize("sampling", ["marginal", "conditional"])
def test_prediction_difference_is_zero_where_the_model_does_not_look(sampling):
    model, mask = RegionModel(), region_mask()
    torch.manual_seed(0)
    x = torch.full((2, 3, 32, 32), 0.9)
    explainer = PredictionDifferenceAnalysis(window_size=4, stride=4, num_samples=4, sampling=sampling, seed=0)
    explainer.fit(torch.rand(16, 3, 32, 32))
    evidence = explainer.attribute(model, x, target=0)
    assert evidence.shape == (2, 32, 32)
    # windows are 4-aligned, the region [4, 12)² is too: outside it nothing changes the output
    assert torch.equal(evidence[:, ~mask], torch.zeros_like(evidence[:, ~mask]))
    # inside, resampling lowers the 0.9-valued region's mean, so p(class 0) drops: positive evidence
    assert (evidence[:, mask] > 0).all()


def test_weight_of_evidence_formula():
    from xai_lightning.attribution.prediction_difference import weight_of_evidence

    # n = 8, K = 2: p = 0.5 → (4 + 1)/10 = 0.5 (odds 1); p = 1 → 9/10 (odds 9)
    value = weight_of_evidence(torch.tensor([1.0]), torch.tensor([0.5]), 8, 2)
    torch.testing.assert_close(value, torch.tensor([math.log2(9)], dtype=torch.float64))


# ----------------------------------------------------------------------------- XRAI
def test_rank_regions_is_the_greedy_gain_order():
    torch.manual_seed(0)
    attribution = torch.randn(10, 10)
    regions = torch.rand(12, 10, 10) < 0.3
    regions[0] = True  # guarantees full coverage
    ranking = rank_regions(attribution, regions)
    covered = torch.zeros(10, 10, dtype=torch.bool)
    used = set()
    for step, chosen in enumerate(ranking.order):
        gains = {}
        for r in range(len(regions)):  # brute force over the remaining candidates
            new = regions[r] & ~covered
            if r not in used and new.any():
                gains[r] = float(attribution[new].double().mean())
        assert chosen == max(gains, key=gains.get)
        assert math.isclose(ranking.gains[step], gains[chosen], rel_tol=1e-9)
        new = regions[chosen] & ~covered
        assert torch.all(ranking.saliency[new] == ranking.gains[step])
        covered |= new
        used.add(chosen)
    assert covered.all()


def test_xrai_ranks_the_region_the_model_reads_first():
    model, mask = RegionModel(top=8, left=8, size=12), region_mask(top=8, left=8, side=12)
    x = torch.full((1, 3, 32, 32), 0.2)
    x[:, :, 8:20, 8:20] = 0.8  # an object the segmentation can find
    saliency = Xrai(ig_steps=8, scales=(20, 50, 100), seed=0).attribute(model, x, target=0)
    top = saliency[0] >= saliency[0][mask].min()
    assert top[mask].all() and not top[~mask].any()


# ----------------------------------------------------------------------------- ConceptWorld localisation
LOCALISATION = {
    "rise": dict(num_masks=300, grid_size=6),
    "prediction_difference": dict(window_size=4, stride=4, num_samples=4, sampling="marginal"),
    "lime": dict(num_samples=150, segmentation="slic"),
    "kernel_shap": dict(num_samples=150, segmentation="slic"),
    "xrai": dict(ig_steps=8, scales=(20, 50, 100)),
}


@pytest.mark.parametrize("name", list(LOCALISATION))
def test_more_mass_inside_the_object_than_a_uniform_map(trained_shape_model, world, name):
    images, labels, masks = world
    method = get_method(name, seed=0, max_batch=256, **LOCALISATION[name])
    maps = method.to_map(method.attribute(trained_shape_model, images, "label", labels=labels))
    energy = energy_in_mask(maps, masks).nanmean()
    uniform = uniform_energy_in_mask(masks).mean()
    assert energy > uniform, f"{name}: {energy:.3f} vs uniform {uniform:.3f}"


# ----------------------------------------------------------------------------- batching, seeds, errors
BATCHING = {
    "rise": dict(num_masks=40),
    "prediction_difference": dict(stride=8, num_samples=2),
    "lime": dict(num_samples=30),
    "kernel_shap": dict(num_samples=30),
    "xrai": dict(ig_steps=4, scales=(50,)),
}


@pytest.mark.parametrize("name", list(BATCHING))
def test_batched_equals_unbatched_with_the_same_seed(world, random_cnn, name):
    # probability-based methods saturate on huge logits; the others get logits spread wide
    factor = 20.0 if name in ("rise", "prediction_difference") else 1000.0
    images, random_cnn = world[0][:3], scaled(random_cnn, factor)
    whole = attribute(random_cnn, images, 1, method=name, seed=11, **BATCHING[name])
    sliced = attribute(random_cnn, images, 1, method=name, seed=11, max_batch=7, **BATCHING[name])
    other_seed = attribute(random_cnn, images, 1, method=name, seed=12, **BATCHING[name])
    assert whole.abs().max() > 1e-2  # not vacuous
    torch.testing.assert_close(sliced, whole, atol=1e-5 * float(whole.abs().max()), rtol=1e-5)
    if name != "xrai":  # XRAI is deterministic
        assert not torch.allclose(other_seed, whole, atol=1e-3 * float(whole.abs().max()))


@pytest.mark.parametrize("name", list(BATCHING))
def test_an_example_gets_the_same_explanation_alone_or_in_a_batch(world, random_cnn, name):
    """Random draws are shared by the batch, so DDP shards and probe subsets explain alike."""
    factor = 20.0 if name in ("rise", "prediction_difference") else 1000.0
    images, model = world[0][:3], scaled(random_cnn, factor)
    method = get_method(name, seed=11, **BATCHING[name])
    if name == "prediction_difference":
        method.fit(world[0])  # fixed reference data (without it the batch itself is the reference)
    together = method.attribute(model, images, 1)
    alone = method.attribute(model, images[1:2], 1)
    torch.testing.assert_close(alone[0], together[1], atol=1e-5 * float(together.abs().max()), rtol=1e-5)


@pytest.mark.parametrize("name", ["rise", "prediction_difference", "xrai"])
def test_image_only_methods_reject_tabular_inputs(name):
    with pytest.raises(ValueError, match=r"explains images \(B, C, H, W\).*lime"):
        attribute(nn.Linear(4, 2), torch.randn(3, 4), 0, method=name)


def test_wrong_feature_mask_shape_names_both_shapes(random_cnn, world):
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(2, 3, 32, 32\).*\(2, 32, 32\)"):
        Lime(num_samples=10).explain(random_cnn, world[0][:2], feature_mask=torch.zeros(16, 16, dtype=torch.long))


def test_wrong_coalition_shape_and_missing_end_coalitions(random_cnn):
    x = torch.randn(2, 6)
    model = nn.Linear(6, 2)
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(N, 6\)"):
        KernelShap(num_samples=10).explain(model, x, coalitions=torch.ones(5, 4))
    with pytest.raises(ValueError, match="all-absent"):
        KernelShap(num_samples=10).explain(model, x, coalitions=torch.ones(5, 6))


def test_marginal_sampling_needs_reference_data():
    with pytest.raises(ValueError, match=r"fit\(images\)"):
        PredictionDifferenceAnalysis(sampling="marginal").attribute(RegionModel(), torch.rand(1, 3, 32, 32), 0)


def test_unknown_segmentation_lists_the_choices(random_cnn, world):
    with pytest.raises(ValueError, match="quickshift"):
        Lime(num_samples=10, segmentation="watershed").attribute(random_cnn, world[0][:1])
