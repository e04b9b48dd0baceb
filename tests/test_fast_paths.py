"""The fast paths of issue 21 give the numbers of their reference paths, and the hot paths make no
host synchronisation per batch (no timings here: experiments/benchmarks/ measures speed)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from tests.conftest import ViewsItsInput
from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.concepts import (
    TCAV,
    cav_similarity,
    directional_derivatives,
    layer_activations,
    train_cavs_indexed,
)
from xai_lightning.concepts.cav import combine_rows, problem_grams
from xai_lightning.core import BatchTargets, LayerCapture, observe, resolve_targets
from xai_lightning.core.batching import activation_bytes_per_row, memory_aware_max_batch
from xai_lightning.core.layer_activations import LayerActivations
from xai_lightning.core.layout import ChannelsLastForward
from xai_lightning.dissection import (
    QuantileSketch,
    TopQuantile,
    sketch_keeps_activations,
    threshold_estimator,
)
from xai_lightning.evaluation import average_ranks


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=4, width=4).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- ranks


def _searchsorted_ranks(values: torch.Tensor) -> torch.Tensor:
    """The previous implementation (two searchsorted passes), as a second reference."""
    ordered = values.sort(dim=-1).values.contiguous()
    below = torch.searchsorted(ordered, values.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, values.contiguous(), right=True)
    return (below + up_to + 1).double() / 2


@pytest.mark.parametrize("shape, levels", [((7, 50), 5), ((3, 1), 2), ((4, 300), 10**6), ((2, 9), 1), ((0, 4), 2)])
def test_sort_based_average_ranks_equal_scipy_rankdata_with_ties(shape, levels):
    values = torch.randint(0, levels, shape, generator=torch.Generator().manual_seed(2)).float()
    ranks = average_ranks(values)
    assert ranks.dtype == torch.float64 and ranks.shape == values.shape
    if values.numel():
        np.testing.assert_array_equal(ranks.numpy(), rankdata(values.numpy(), axis=-1))
        assert torch.equal(ranks, _searchsorted_ranks(values))


# --------------------------------------------------------------------------- targets and batching


def test_batch_targets_resolve_fixed_targets_once_and_predicted_per_slice():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([2, 0, 1, 1, 0])
    for target in (2, [0, 1, 2, 0, 1], torch.tensor([1, 1, 0, 2, 2]), "label", "predicted"):
        slices = BatchTargets(target, labels, 5)
        parts = torch.cat([slices(rows, logits[rows]) for rows in (slice(0, 2), slice(2, 5))])
        assert torch.equal(parts, resolve_targets(target, logits, labels))
    with pytest.raises(ValueError, match="Target class 7 is out of range"):
        BatchTargets([0, 7, 1, 1, 1], None, 5)(slice(0, 2), logits[:2])
    with pytest.raises(ValueError, match="Target class 3 is out of range"):
        resolve_targets(3, logits)


def test_memory_aware_max_batch_is_none_off_cuda_and_fits_the_free_memory_on_cuda(model, images):
    row_bytes = activation_bytes_per_row(model, images[:1])
    # SmallCNN(width=4) on 32×32: every leaf's output, the first stage (4 × 32 × 32 per layer) dominating.
    assert row_bytes > 6 * 4 * 32 * 32 * 4
    assert memory_aware_max_batch(row_bytes, "cpu") is None
    free = 1 << 30
    cap = memory_aware_max_batch(row_bytes, "cuda", free_memory=lambda device: free)
    assert cap == int(0.5 * free // (3.0 * row_bytes))
    assert memory_aware_max_batch(10**12, "cuda", free_memory=lambda device: free) == 1  # never below one row
    assert ExplainedModel(model, like=images).max_batch is None  # a CPU keeps one batch (cut per pass anyway)


def test_channels_last_forward_matches_nchw_and_steps_aside_for_models_that_view_their_input(model, images):
    layout = ChannelsLastForward()
    with torch.no_grad():
        assert torch.allclose(layout(model, images), model(images), atol=1e-5)
    assert layout.works is True
    viewing = ViewsItsInput(side=32).eval()
    fallback = ChannelsLastForward()
    with torch.no_grad():
        assert torch.equal(fallback(viewing, images), viewing(images))
    assert fallback.works is False


# --------------------------------------------------------------------------- TCAV


def test_truncated_forward_gives_the_full_forward_activations(model, images):
    layers = ["features.6", "features.13"]
    with torch.no_grad(), LayerCapture(model, layers) as capture:
        model(images)
    stopped = layer_activations(model, images, layers, max_batch=4)
    for layer in layers:
        assert torch.allclose(stopped[layer], capture.activations[layer].flatten(1), atol=1e-5)
    outputs = LayerActivations(model, ["features.6"])(images)  # stops there: the classifier never runs
    assert torch.allclose(outputs["features.6"], capture.activations["features.6"], atol=1e-5)


def test_per_problem_gram_entries_and_combinations_equal_the_full_gram_ones():
    generator = torch.Generator().manual_seed(4)
    flat = torch.randn(30, 50, generator=generator, dtype=torch.float64).float()
    for problems in (2, 40):  # 2 problems: gathered per problem; 40: the whole Gram matrix is cheaper
        train = torch.randint(0, 30, (problems, 6), generator=generator)
        test = torch.randint(0, 30, (problems, 3), generator=generator)
        gram = flat.double() @ flat.double().T
        fit, cross = problem_grams(flat, train, test)
        assert torch.allclose(fit, gram[train.unsqueeze(2), train.unsqueeze(1)], rtol=1e-5, atol=1e-4)
        assert torch.allclose(cross, gram[test.unsqueeze(2), train.unsqueeze(1)], rtol=1e-5, atol=1e-4)
        coefficients = torch.randn(problems, 6, generator=generator, dtype=torch.float64)
        expected = (coefficients.unsqueeze(-1) * flat.double()[train]).sum(1)
        assert torch.allclose(combine_rows(flat, train, coefficients), expected, rtol=1e-5, atol=1e-4)


def test_cavs_from_per_problem_gram_entries_equal_those_from_the_whole_gram_matrix():
    generator = torch.Generator().manual_seed(5)
    rows = torch.randn(200, 64, generator=generator)
    rows[:40] += 1.5  # a concept direction
    positives = torch.stack([torch.randperm(40, generator=generator)[:30] for _ in range(2)])
    negatives = torch.stack([torch.randperm(160, generator=generator)[:30] + 40 for _ in range(2)])
    # 2 problems of 30 + 30 rows read fewer Gram entries than 200²: computed per problem. Repeated
    # 30 times they read more: the whole Gram matrix is computed instead. Same CAVs either way.
    few = train_cavs_indexed(rows, positives, negatives)
    many = train_cavs_indexed(rows, positives.repeat(30, 1), negatives.repeat(30, 1))
    assert torch.allclose(few.vectors, many.vectors[:2], atol=1e-5)
    assert torch.equal(few.accuracy, many.accuracy[:2])


def test_streamed_probe_derivatives_equal_the_one_batch_reference(model, images):
    world = torch.rand(60, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    tcav = TCAV(layers=["features.13"], num_random=2, examples_per_concept=6, max_batch=None)
    cavs = tcav.fit_cavs(model, {"bright": world[:12] + 0.5}, world[12:], layers=["features.13"])
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    gradients = tcav.gradients(model, images, targets, cavs.layers)
    expected = directional_derivatives(gradients, cavs)["features.13"]
    similarity = cav_similarity(
        layer_activations(model, images, ["features.13"])["features.13"], cavs.mean_vector("features.13")
    )
    tcav.max_batch = 4  # two slices
    derivatives, similarities = tcav.probe_derivatives(model, images, targets, cavs, similarity=True)
    assert torch.allclose(derivatives["features.13"], expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(similarities["features.13"], similarity, atol=1e-5)


def test_one_streamed_probe_pass_serves_concept_and_relative_cavs(model, images):
    """TCAVCallback scores concept CAVs and relative CAVs from the same probe gradients: each set's
    derivatives equal those of the set alone, and the similarities those of the concept CAVs."""
    world = torch.rand(60, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    layers = ["features.6", "features.13"]
    tcav = TCAV(layers=layers, num_random=2, examples_per_concept=6, max_batch=None)
    cavs = tcav.fit_cavs(model, {"bright": world[:12] + 0.5}, world[24:], layers=layers)
    relative = tcav.fit_relative_cavs(
        model, {"bright vs dark": (world[:12] + 0.5, world[12:24] * 0.2)}, world[24:], layers=layers
    )
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    alone, similar_alone = tcav.probe_derivatives(model, images, targets, cavs, similarity=True)
    relative_alone, _ = tcav.probe_derivatives(model, images, targets, relative)
    tcav.max_batch = 4  # two slices
    (both, relative_both), similar = tcav.probe_derivative_sets(
        model, images, targets, [cavs, relative], similarity_cavs=cavs
    )
    for layer in layers:
        assert torch.allclose(both[layer], alone[layer], rtol=1e-5, atol=1e-7)
        assert torch.allclose(relative_both[layer], relative_alone[layer], rtol=1e-5, atol=1e-7)
        assert relative_both[layer].shape[1] == 2  # the pair and the random-vs-random null
        assert torch.allclose(similar[layer], similar_alone[layer], atol=1e-5)
    _, none = tcav.probe_derivative_sets(model, images, targets, [relative])
    assert none == {}


# --------------------------------------------------------------------------- dissection memory


@pytest.mark.parametrize("units, side", [(16, 16), (64, 8), (128, 4)])
def test_the_sketch_method_never_holds_more_than_the_exact_one_at_any_probe_count(units, side):
    """Memory by construction: the exact method keeps every activation (N·K·h·w float32) and each
    unit's top q·n values; the sketch method keeps the activations while they are under twice the
    sketches' size, else its first-pass estimator (top values or buckets, the smaller)."""
    for images in [1, 2, 5, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000]:
        values = images * side * side
        kept = values * units * 4
        exact = kept + TopQuantile.memory_bytes(units, values)
        if sketch_keeps_activations(images, [(units, side, side)], 0.005):
            sketch = exact
        else:
            estimator = threshold_estimator(units, values, 0.005, 0.005)
            sketch = estimator.state_bytes
            assert sketch <= QuantileSketch.memory_bytes(units)  # bounded: flat in the probe count
        assert sketch <= exact, (images, sketch, exact)
    assert QuantileSketch(units).state_bytes == QuantileSketch.memory_bytes(units)
    assert TopQuantile(units, 6400).state_bytes == TopQuantile.memory_bytes(units, 6400)


@pytest.mark.parametrize("kind", ["buckets", "top"])
def test_threshold_estimators_merged_across_processes_equal_one_stream(kind):
    values = torch.randn(60, 3, 6, 6, generator=torch.Generator().manual_seed(7)).exp()
    total = 60 * 36

    def make():
        return QuantileSketch(3) if kind == "buckets" else TopQuantile(3, total)

    whole, first, second = make(), make(), make()
    whole.update(values)
    first.update(values[:25])
    second.update(values[25:])

    def gather(tensor: torch.Tensor) -> torch.Tensor:  # what all_gather gives: every process's copy
        for name in ("counts", "minimum", "maximum", "count", "top"):
            if getattr(first, name, None) is tensor:
                return torch.stack([tensor, getattr(second, name)])
        raise AssertionError("merge_processes gathered a tensor that is not part of the state")

    first.merge_processes(gather)
    assert torch.equal(first.thresholds()[0], whole.thresholds()[0])
    assert torch.equal(first.thresholds()[1], whole.thresholds()[1])


# --------------------------------------------------------------------------- no host synchronisation


@contextlib.contextmanager
def host_conversions():
    """Count the ways a tensor's value reaches Python — what synchronises with an accelerator:
    ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()`` and ``bool``/``int``/``float`` of a tensor."""
    counts = {"n": 0}
    names = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counting(original):
        def wrapper(self, *args, **kwargs):
            counts["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


HOT_PATHS = {
    "gradcam": {"layer": "features.13"},
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 8, "stride": 8, "score": "logit"},  # incremental ("auto": this model allows it)
    "occlusion_plain": {"window": 8, "stride": 8, "score": "logit", "incremental": False},
}


@pytest.mark.parametrize("name", list(HOT_PATHS))
def test_hot_paths_make_no_host_synchronisation_per_batch(model, images, name):
    method = "occlusion" if name == "occlusion_plain" else name
    options = HOT_PATHS[name]
    counted = {}
    results = {}
    # Once per model and input shape, BatchNorm folding checks its folded pass against the plain one
    # (two conversions); that first call is not the steady state measured here.
    attribute(model, images, 1, method, max_batch=512, **options)
    for max_batch in (2, 512):  # 3+ slices vs one
        with host_conversions() as counts:
            results[max_batch] = attribute(model, images, 1, method, max_batch=max_batch, **options)
        counted[max_batch] = counts["n"]
    assert counted[2] == counted[512], counted  # whatever a call converts, it does not do it per batch
    assert torch.allclose(results[2], results[512], atol=1e-5)
    if method in ("gradcam", "integrated_gradients"):
        # An int target: one conversion in the whole call, attribute()'s check that the inputs are
        # finite (a clear error for NaN/Inf inputs needs their verdict on the host, once per call).
        assert counted[512] == 1


def test_sync_counting_guard_sees_a_conversion():
    with host_conversions() as counts:
        bool(torch.ones(1) > 0)
        torch.ones(2).tolist()
    assert counts["n"] == 2


# --------------------------------------------------------------------------- noise on the device


def test_noise_on_a_cpu_is_the_seeded_global_stream_as_before(model, images):
    seeded = attribute(model, images, 0, "smoothgrad", n_samples=4, seed=11)
    with observe(model, seed=11):
        standard = torch.randn((4, 3, 32, 32), dtype=torch.float32)
    flat = images.flatten(1)
    sigma = 0.15 * (flat.amax(1) - flat.amin(1))
    noise = sigma.view(-1, 1, 1, 1, 1) * standard.unsqueeze(0)
    explicit = attribute(model, images, 0, "smoothgrad", n_samples=4, noise=noise)
    assert torch.allclose(seeded, explicit, atol=1e-6)
    assert math.isfinite(float(seeded.abs().sum()))


# --------------------------------------------------------------------------- BatchNorm folding


def _with_nontrivial_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(8)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)
    return model.eval()


def _input_gradient(model: torch.nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return gradient


class ReadsItsConvolutionTwice(torch.nn.Module):
    """``bn(conv(x)) + conv(x)`` with the second read outside any module: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.head((self.bn(z) + z).mean((2, 3)))


@pytest.mark.parametrize(
    "build, folded",
    [
        (lambda: SmallCNN(num_classes=4, width=4), 6),
        (lambda: __import__("xai_lightning").models.resnet20(num_classes=4), 21),
        (ReadsItsConvolutionTwice, 0),
    ],
)
def test_folded_batchnorm_passes_give_the_plain_model_gradients(images, build, folded):
    from xai_lightning.core.batchnorm_folding import _CHECKED

    torch.manual_seed(0)
    model = _with_nontrivial_batchnorm(build())
    ours = attribute(model, images, 2, "saliency", abs=False)
    assert len(_CHECKED[model][tuple(images.shape[1:])]) == folded  # the check pass refuses the third model
    reference = _input_gradient(model, images, 2)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
    assert all("forward" not in module.__dict__ for module in model.modules())  # restored after the pass


def test_a_captured_convolution_is_not_folded_into_its_batchnorm(images):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = _with_nontrivial_batchnorm(SmallCNN(num_classes=4, width=4))
    ours = attribute(model, images, 1, "gradcam", layer="features.4", upsample=False, relu=False)
    reference = LayerGradCam(model, model.features[4]).attribute(images, target=1).squeeze(1)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6)


class NeedsThreeRows(torch.nn.Module):
    """A SmallCNN that refuses batches of fewer than three rows: folding's two-row trace always fails."""

    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(num_classes=4, width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 3:
            raise RuntimeError("this model needs at least three rows")
        return self.network(x)


def test_a_pass_that_cannot_be_traced_on_two_rows_runs_unfolded(images):
    """The trace fails again on a retry, so the failure is the trace's, not a one-off of the model's:
    the pass runs as it is (unfolded) and gives the plain gradients. (A one-off failure is raised:
    tests/test_first_contact_failures.py.)"""
    from xai_lightning.core.batchnorm_folding import _CHECKED

    torch.manual_seed(0)
    model = NeedsThreeRows()
    _with_nontrivial_batchnorm(model.network)
    model.eval()
    ours = attribute(model, images, 2, "saliency", abs=False, max_batch=6)
    assert _CHECKED[model][tuple(images.shape[1:])] == []
    reference = _input_gradient(model, images, 2)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
