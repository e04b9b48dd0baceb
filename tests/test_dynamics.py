"""xai_lightning.dynamics against independent references: numpy/scipy FFT and DCT, scikit-learn's PCA,
silhouette, logistic regression and nearest neighbours, closed-form margins of linear classifiers,
and information-theoretic identities. Pure torch: the package never imports Lightning."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from xai_lightning.core import LayerNotFoundError
from xai_lightning.dynamics import (
    DCTSubspace,
    InformationPlane,
    check_radii,
    check_tsne_points,
    credibility,
    dct_matrix,
    entropy_bits,
    frequency_accuracy,
    frequency_split,
    image_targets,
    kernel_roughness,
    knn_conformity,
    largest_radius,
    layer_features,
    linear_probe_accuracy,
    low_pass,
    neighbour_label_counts,
    nonconformity,
    pca,
    radial_mask,
    resolve_feature_sites,
    silhouette_score,
    subspace_margins,
    tsne,
    tsne_min_points,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- layering
def test_dynamics_imports_no_lightning():
    """Through the real (lazy) package root, the pure-torch dynamics package pulls in no Lightning."""
    code = (
        "import sys\n"
        "import xai_lightning.dynamics\n"
        "lightning = ('pytorch_lightning', 'lightning', 'lightning_fabric')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in lightning]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_four_callbacks_are_exported_from_the_package_root():
    code = (
        "import xai_lightning, xai_lightning.callbacks as callbacks\n"
        "names = ['FrequencyCallback', 'EmbeddingCallback', 'MarginCallback', 'InformationPlaneCallback']\n"
        "from xai_lightning import FrequencyCallback, EmbeddingCallback, MarginCallback, InformationPlaneCallback\n"
        "assert all(n in xai_lightning.__all__ and getattr(xai_lightning, n) is getattr(callbacks, n) for n in names)\n"
        "assert all(issubclass(getattr(xai_lightning, n), xai_lightning.ObserverCallback) for n in names)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------- frequency
def numpy_split(x: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Wang et al.'s definition written with numpy, both parts from the spectrum (no subtraction)."""
    h, w = x.shape[-2:]
    ky, kx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    mask = ky**2 + kx**2 <= radius**2
    spectrum = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    low = np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(-2, -1))).real
    high = np.fft.ifft2(np.fft.ifftshift(spectrum * ~mask, axes=(-2, -1))).real
    return low, high


@pytest.mark.parametrize("size", [(32, 32), (31, 24)])
def test_low_plus_high_is_the_image_and_matches_a_numpy_split(size):
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(0))
    for radius in (1, 4, 8, largest_radius(*size)):
        low, high = frequency_split(x, radius)
        assert low.dtype == x.dtype and low.shape == x.shape
        torch.testing.assert_close(low + high, x, atol=1e-6, rtol=0)
        ref_low, ref_high = numpy_split(x.double().numpy(), radius)
        np.testing.assert_allclose(low.numpy(), ref_low, atol=1e-5)
        np.testing.assert_allclose(high.numpy(), ref_high, atol=1e-5)


def test_low_part_is_band_limited_and_low_pass_is_a_projection():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    low, high = frequency_split(x, 6)
    mask = radial_mask(32, 32, 6)

    def spectrum(z: torch.Tensor) -> torch.Tensor:
        return torch.fft.fftshift(torch.fft.fft2(z), dim=(-2, -1)).abs()

    assert float(spectrum(low)[..., ~mask].max()) < 1e-9
    assert float(spectrum(high)[..., mask].max()) < 1e-9
    torch.testing.assert_close(low_pass(low, 6), low)
    assert mask.sum() == sum(1 for i in range(-16, 16) for j in range(-16, 16) if i * i + j * j <= 36)


def test_radii_outside_the_image_name_the_largest_valid_radius():
    with pytest.raises(ValueError, match="largest valid radius is 16"):
        check_radii([4, 20], 32, 32)
    with pytest.raises(ValueError, match="largest valid radius is 12"):
        frequency_accuracy(nn.Flatten(), torch.zeros(1, 3, 24, 40), torch.zeros(1, dtype=torch.long), [13])
    with pytest.raises(ValueError, match="> 0"):
        check_radii([0], 32, 32)


def test_frequency_accuracy_scores_each_part_like_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    x = torch.rand(10, 3, 16, 16)
    labels = torch.randint(0, 4, (10,))
    result = frequency_accuracy(model, x, labels, [2, 5], max_batch=7)
    for index, radius in enumerate((2, 5)):
        low, high = frequency_split(x, radius)
        assert torch.equal(result.low[:, index], model(low).argmax(1) == labels)
        assert torch.equal(result.high[:, index], model(high).argmax(1) == labels)
    assert torch.equal(result.clean, model(x).argmax(1) == labels)


def test_kernel_roughness_closed_forms_and_a_loop():
    constant = torch.ones(2, 3, 3, 3)
    assert float(kernel_roughness(constant)) == pytest.approx(0.0)
    checkerboard = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]]).expand(1, 1, 3, 3)
    assert float(kernel_roughness(checkerboard)) == pytest.approx(12 * 4 / 9)  # 12 neighbour pairs, |Δ| = 2
    weight = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    weight[0, 0] = 0  # skipped: no energy
    values = []
    for o in range(4):
        for i in range(2):
            w = weight[o, i].double().numpy()
            if not w.any():
                continue
            squared_steps = np.square(np.diff(w, axis=1)).sum() + np.square(np.diff(w, axis=0)).sum()
            values.append(squared_steps / np.square(w).sum())
    assert float(kernel_roughness(weight)) == pytest.approx(float(np.mean(values)), rel=1e-6)
    smoothed = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(weight.flatten(0, 1).unsqueeze(1), (1, 1, 1, 1), mode="replicate"), 3, 1
    )
    assert float(kernel_roughness(smoothed.view_as(weight))) < float(kernel_roughness(weight))


# ---------------------------------------------------------------------------------------- embeddings
def low_rank_features(n: int = 300, d: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(5, 0.5, 6, dtype=torch.float64)
    latent = torch.randn(n, 6, generator=g, dtype=torch.float64) * scales
    mixing = torch.randn(6, d, generator=g, dtype=torch.float64)
    return latent @ mixing + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0


@pytest.mark.parametrize("oversample", [100, 4])  # 100: the full range (exact); 4: a truly randomised range
def test_pca_agrees_with_scikit_learn(oversample):
    from sklearn.decomposition import PCA

    features = low_rank_features()
    ours = pca(features, 3, oversample=oversample)
    reference = PCA(3, svd_solver="full").fit(features.numpy())
    tolerance = 1e-9 if oversample == 100 else 1e-6
    np.testing.assert_allclose(ours.explained_variance.numpy(), reference.explained_variance_, rtol=tolerance)
    np.testing.assert_allclose(
        ours.explained_variance_ratio.numpy(), reference.explained_variance_ratio_, rtol=tolerance
    )
    # Sign-aligned: both make each component's largest-magnitude entry positive.
    np.testing.assert_allclose(ours.components.numpy(), reference.components_, atol=1e-6)
    np.testing.assert_allclose(ours.projected.numpy(), reference.transform(features.numpy()), atol=1e-5)


def test_pca_is_seeded_and_leaves_the_global_generator_alone():
    features = low_rank_features(seed=3).float()
    before = torch.get_rng_state()
    first, second = pca(features, 2, oversample=2, seed=5), pca(features, 2, oversample=2, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first.components, second.components)


def test_silhouette_matches_scikit_learn_including_singletons():
    from sklearn.metrics import silhouette_score as reference

    features = low_rank_features(120, 8)
    labels = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(0))
    labels[0] = 9  # a class with one member: its silhouette is 0 in both
    assert silhouette_score(features, labels) == pytest.approx(reference(features.numpy(), labels.numpy()), abs=1e-10)
    assert math.isnan(silhouette_score(features, torch.zeros(120, dtype=torch.long)))


def test_linear_probe_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    y = (
        x @ torch.randn(12, 3, generator=g, dtype=torch.float64)
        + 0.8 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    ).argmax(1)
    ours = linear_probe_accuracy(x, y, train_fraction=0.5, l2=1e-2, seed=7, max_iter=500)
    order = torch.randperm(400, generator=torch.Generator().manual_seed(7))
    train, test = order[:200].numpy(), order[200:].numpy()
    mean, std = x[train].mean(0).numpy(), x[train].std(0, unbiased=False).numpy()
    xs = (x.numpy() - mean) / std
    classifier = LogisticRegression(C=1 / (1e-2 * 200), tol=1e-10, max_iter=5000).fit(xs[train], y[train].numpy())
    assert ours == pytest.approx(classifier.score(xs[test], y[test].numpy()), abs=0.01)
    assert ours > 0.7


def test_tsne_needs_more_than_three_perplexities_of_points():
    assert tsne_min_points(30) == 91
    with pytest.raises(ValueError, match="at least 91 probe images.*got 50.*at most 16.33"):
        check_tsne_points(50, 30, "probe images")
    features = torch.cat([torch.randn(40, 5) + 10, torch.randn(40, 5) - 10])
    embedded = tsne(features, perplexity=10, seed=0, max_iter=300)
    assert embedded.shape == (80, 2)
    labels = torch.tensor([0] * 40 + [1] * 40)
    assert silhouette_score(embedded, labels) > 0.5  # two far-apart clusters stay apart
    with pytest.raises(ValueError, match="at least 31"):
        tsne(features[:20], perplexity=10)


# ---------------------------------------------------------------------------------------- deep k-NN
def test_neighbour_counts_match_scikit_learn_nearest_neighbours():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(200, 6, generator=g, dtype=torch.float64)
    reference_labels = torch.randint(0, 4, (200,), generator=g)
    query = torch.randn(30, 6, generator=g, dtype=torch.float64)
    counts = neighbour_label_counts(query, reference, reference_labels, k=9, num_classes=4, max_batch=7)
    neighbours = NearestNeighbors(n_neighbors=9).fit(reference.numpy()).kneighbors(query.numpy(), return_distance=False)
    expected = np.stack([np.bincount(reference_labels.numpy()[row], minlength=4) for row in neighbours])
    np.testing.assert_array_equal(counts.numpy(), expected)
    predictions = torch.randint(0, 4, (30,), generator=g)
    np.testing.assert_allclose(
        knn_conformity(counts, predictions).numpy(), expected[np.arange(30), predictions.numpy()] / 9
    )
    # k larger than the reference: capped
    assert neighbour_label_counts(query, reference[:5], reference_labels[:5], k=75).sum(1).eq(5).all()


def test_nonconformity_and_credibility_follow_papernot():
    counts = [torch.tensor([[3, 1], [0, 4]]), torch.tensor([[2, 2], [1, 3]])]
    alpha = nonconformity(counts, torch.tensor([0, 1]))
    assert alpha.tolist() == [1 + 2, 0 + 1]
    assert credibility(torch.tensor([2.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])).tolist() == [0.5]


def memorising_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained full-batch on 60 ConceptWorld images until it fits every label."""
    from xai_lightning import ConceptWorld, SmallCNN

    world = ConceptWorld(60, image_size=16, seed=4 + seed)
    images, labels = world.tensors()
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=5, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), labels), "the model did not memorise its training images"
    return model, images, labels


def test_deep_knn_conformity_of_a_memorising_model_is_one():
    """Probes = the memorised training images = the reference set; seeds 0-4 × 1, 2 threads: conformity 1 for
    every probe in both layers."""
    model, images, labels = memorising_model()
    sites = resolve_feature_sites(model, ["penultimate", "classifier"], forward=lambda: model(images[:1]))
    with torch.no_grad():
        features, logits = layer_features(model, images, sites, max_batch=25)
    from xai_lightning.dynamics import deep_knn_conformity

    conformity = deep_knn_conformity(features, logits.argmax(1), features, labels, k=5, num_classes=5)
    for layer, values in conformity.items():
        assert torch.equal(values, torch.ones(60, dtype=torch.float64)), layer
    # A label-shuffled reference breaks it: conformity is an honest measurement, not a constant.
    shuffled = labels[torch.randperm(60, generator=torch.Generator().manual_seed(0))]
    broken = deep_knn_conformity(features, logits.argmax(1), features, shuffled, k=5, num_classes=5)
    assert float(broken["penultimate"].mean()) < 0.6


def test_feature_sites_validate_names_and_read_the_penultimate_input():
    from xai_lightning import SmallCNN

    model = SmallCNN(num_classes=5, width=4).eval()
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(LayerNotFoundError, match="features.13"):
        resolve_feature_sites(model, ["penultimate", "features.99"], forward=lambda: model(x[:1]))
    sites = resolve_feature_sites(model, ["penultimate", "features.13"], forward=lambda: model(x[:1]))
    features, logits = layer_features(model, x, sites, pool=2)
    assert features["penultimate"].shape == (3, 16)
    assert features["features.13"].shape == (3, 8 * 2 * 2)
    torch.testing.assert_close(model.classifier(features["penultimate"]), logits)


# ---------------------------------------------------------------------------------------- margins
def test_dct_matrix_is_scipys_orthonormal_dct_and_projections_are_orthogonal():
    matrix = dct_matrix(12)
    np.testing.assert_allclose(matrix.numpy(), scipy.fft.dct(np.eye(12), norm="ortho", axis=0), atol=1e-12)
    v = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    low, high = DCTSubspace(12, 12, "low", 4), DCTSubspace(12, 12, "high", 4)
    coefficients = scipy.fft.dctn(v.numpy(), axes=(-2, -1), norm="ortho")
    kept = np.zeros_like(coefficients)
    kept[..., :4, :4] = coefficients[..., :4, :4]
    np.testing.assert_allclose(low.project(v).numpy(), scipy.fft.idctn(kept, axes=(-2, -1), norm="ortho"), atol=1e-12)
    torch.testing.assert_close(low.project(low.project(v)), low.project(v))
    assert float((low.project(v) * high.project(v)).sum()) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="use 1..6"):
        DCTSubspace(12, 12, "low", 7)


def analytic_linear_margin(model: nn.Linear, x: torch.Tensor, subspace: DCTSubspace) -> torch.Tensor:
    """min over k ≠ p of |f_k − f_p| / ‖P(w_k − w_p)‖: the exact distance to the boundary within the subspace."""
    with torch.no_grad():
        logits = model(x.flatten(1)).double()
    predicted = logits.argmax(1)
    weight = model.weight.detach().double().view(model.out_features, *x.shape[1:])
    distances = torch.full((x.shape[0],), torch.inf, dtype=torch.float64)
    for k in range(model.out_features):
        direction = subspace.project(weight[k] - weight[predicted])  # (B, C, H, W)
        gap = (logits[:, k] - logits.gather(1, predicted.view(-1, 1)).squeeze(1)).abs()
        candidate = gap / direction.flatten(1).norm(dim=1)
        distances = torch.where(predicted == k, distances, torch.minimum(distances, candidate))
    return distances


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("kind", ["low", "high", "full"])
def test_margin_of_a_linear_classifier_is_the_analytic_distance_within_the_subspace(classes, kind):
    torch.manual_seed(classes)
    linear = nn.Linear(3 * 16 * 16, classes)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    x = torch.rand(24, 3, 16, 16)
    subspace = DCTSubspace(16, 16, kind, 4)
    result = subspace_margins(model, x, subspace, candidates=classes, max_batch=10)
    expected = analytic_linear_margin(linear, x, subspace)
    relative = (result.margin.double() - expected).abs() / expected
    assert float(relative.max()) <= 0.01, relative
    assert bool((result.upper.double() >= expected * (1 - 1e-4)).all())  # verified adversarial: never below
    assert result.iterations.eq(1).all()  # DeepFool lands on an affine boundary in one step


def test_margin_perturbation_really_changes_the_prediction_and_stays_in_the_subspace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(16, 3, 8, 8)
    subspace = DCTSubspace(8, 8, "high", 3)
    result = subspace_margins(model, x, subspace, candidates=3, max_iter=30)
    assert bool((~result.margin.isnan()).all())
    assert bool((result.margin <= result.upper + 1e-6).all())


# ---------------------------------------------------------------------------------------- information plane
def test_entropy_and_gaussian_identities():
    from scipy.stats import entropy

    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert entropy_bits(labels) == pytest.approx(entropy([2, 1, 3], base=2))
    assert image_targets(torch.rand(2, 3, 32, 32), 8).shape == (2, 192)


def test_information_bounds_are_near_zero_for_noise_and_near_the_entropy_for_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=g)
    images = torch.rand(600, 3, 8, 8, generator=g)
    targets = image_targets(images, 4)
    informative = torch.cat([nn.functional.one_hot(labels, 4).float() * 3, targets], 1)
    informative = informative + 0.05 * torch.randn(600, 52, generator=g)
    noise = torch.randn(600, 128, generator=g)
    plane = InformationPlane({"informative": 52, "noise": 128}, num_classes=4, target_dim=targets.shape[1], seed=0)
    before = torch.get_rng_state()
    train, test = slice(0, 400), slice(400, 600)
    plane.fit({"informative": informative[train], "noise": noise[train]}, labels[train], targets[train], steps=300)
    bounds = plane.bounds({"informative": informative[test], "noise": noise[test]}, labels[test], targets[test])
    assert torch.equal(torch.get_rng_state(), before)  # own generator only
    entropy = entropy_bits(labels[test])
    informative_x, informative_y = bounds["informative"]
    noise_x, noise_y = bounds["noise"]
    assert informative_y == pytest.approx(entropy, abs=0.1)  # labels decodable: the bound reaches H(y)
    assert informative_y <= entropy + 1e-9  # and never exceeds it on held-out data
    # Nothing to decode: ≈ 0 bits (early stopping keeps 128 noise dimensions from overfitting 320 examples).
    assert abs(noise_y) < 0.05 and abs(noise_x) < 1
    # The features carry g(x) through a Gaussian channel (noise σ = 0.05 on each of 48 pooled pixels of
    # variance 1/48): per dimension ½·log2(1 + (1/48) / 0.05²) bits for Gaussian decoders.
    channel = targets.shape[1] * 0.5 * math.log2(1 + (1 / 48) / 0.05**2)
    assert 0.85 * channel < informative_x < 1.02 * channel


# ---------------------------------------------------------------------------------------- fast passes (issue 19)
def trained_looking_cnn(seed: int = 0) -> nn.Module:
    """A tiny SmallCNN in eval mode whose BatchNorms have non-trivial running statistics and affine
    parameters (so folding them into the convolutions is really exercised)."""
    from xai_lightning import SmallCNN

    torch.manual_seed(seed)
    model = SmallCNN(num_classes=4, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize(("total", "max_batch"), [(256, None), (10, 4), (300, 7), (3, 5), (0, None), (1, None)])
def test_pass_slices_cover_every_row_once_within_the_cap_and_evenly(total, max_batch):
    from xai_lightning.core.fast_forward import pass_slices, rows_per_pass

    x = torch.zeros(total, 3, 32, 32)
    slices = list(pass_slices(x, max_batch))
    covered = [row for part in slices for row in range(total)[part]]
    assert covered == list(range(total))
    sizes = [part.stop - part.start for part in slices]
    cap = rows_per_pass(x, max_batch)
    assert all(0 < size <= (cap or total) for size in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert rows_per_pass(torch.zeros(1, 3, 32, 32), None) == 85  # 2**18 input elements on a CPU
    assert rows_per_pass(torch.zeros(1, 3, 32, 32), 16) == 16


def test_layer_features_through_the_fast_path_equal_a_plain_hooked_forward():
    model = trained_looking_cnn()
    x = torch.rand(37, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sites = resolve_feature_sites(model, ["penultimate", "features.13"], forward=lambda: model(x[:1]))
    features, logits = layer_features(model, x, sites, pool=2, max_batch=10)
    with torch.no_grad():
        stage = model.features[:14](x)
        pooled = model.pool(model.features(x)).flatten(1)
        expected_logits = model(x)
    torch.testing.assert_close(features["features.13"], nn.functional.adaptive_avg_pool2d(stage, 2).flatten(1))
    torch.testing.assert_close(features["penultimate"], pooled)
    torch.testing.assert_close(logits, expected_logits)


def test_frequency_variant_cache_reuses_the_split_until_the_images_or_radii_change():
    from xai_lightning.dynamics import FrequencyVariantCache, frequency_variants

    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cache = FrequencyVariantCache()
    first = cache(x, [4, 6], include_clean=False)
    low4, high4 = frequency_split(x, 4)
    low6, high6 = frequency_split(x, 6)
    assert torch.equal(first, torch.cat([low4, low6, high4, high6]))
    assert cache(x.clone(), [4, 6], include_clean=False) is first  # same images (a new tensor): no new split
    with_clean = cache(x, [4, 6])
    assert torch.equal(with_clean, frequency_variants(x, [4, 6]))  # the clean images too: a new split
    x[2, 0, 3, 3] += 0.5  # an image changed in place
    changed = cache(x, [4, 6])
    assert torch.equal(changed, frequency_variants(x, [4, 6])) and not torch.equal(changed, with_clean)
    assert torch.equal(cache(x, [4]), frequency_variants(x, [4]))  # other radii
    assert torch.equal(cache(x[:3], [4]), frequency_variants(x[:3], [4]))  # another probe (shard)
    # frequency_accuracy with the cache scores exactly what it scores without it.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    labels = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        cached = frequency_accuracy(model, x, labels, [4, 6], cache=cache)
        plain = frequency_accuracy(model, x, labels, [4, 6])
        assert all(torch.equal(getattr(cached, f), getattr(plain, f)) for f in ("clean", "low", "high"))


def test_margins_in_shared_passes_equal_separate_calls_and_share_the_first_pass():
    from xai_lightning.dynamics import margins_in_subspaces

    model = trained_looking_cnn(1)
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    subspaces = [DCTSubspace(16, 16, kind, 4) for kind in ("low", "high", "full")]
    rows_with_gradients = []
    handle = model.register_forward_pre_hook(
        lambda _m, args: rows_with_gradients.append(args[0].shape[0]) if torch.is_grad_enabled() else None
    )
    try:
        shared = margins_in_subspaces(model, x, subspaces, candidates=3, max_iter=20, max_batch=5)
        shared_rows = sum(rows_with_gradients)
        assert max(rows_with_gradients) <= 5  # max_batch caps the stacked passes too
        rows_with_gradients.clear()
        separate = [
            subspace_margins(model, x, subspace, candidates=3, max_iter=20, max_batch=5) for subspace in subspaces
        ]
        separate_rows = sum(rows_with_gradients)
    finally:
        handle.remove()
    assert shared_rows == separate_rows - 2 * 12  # one first step at the clean images serves all three subspaces
    for one, alone in zip(shared, separate):
        assert torch.equal(one.iterations, alone.iterations) and torch.equal(one.predictions, alone.predictions)
        assert torch.equal(one.margin.isnan(), alone.margin.isnan())
        torch.testing.assert_close(one.margin, alone.margin, rtol=1e-3, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(one.upper, alone.upper, rtol=1e-3, atol=1e-5, equal_nan=True)
    assert bool((~shared[2].margin.isnan()).any())  # the comparison is not vacuous


def test_fused_decoder_steps_give_the_bounds_of_the_per_parameter_adam_loop():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (300,), generator=g)
    targets = image_targets(torch.rand(300, 3, 8, 8, generator=g), 4)
    features = torch.cat([nn.functional.one_hot(labels, 3).float(), targets], 1) + 0.1 * torch.randn(
        300, 51, generator=g
    )
    bounds = []
    for fused in (True, False):
        plane = InformationPlane({"h": 51}, num_classes=3, target_dim=targets.shape[1], seed=0)
        if not fused:
            groups = [{k: v for k, v in group.items() if k != "fused"} for group in plane.optimizer.param_groups]
            plane.optimizer = torch.optim.Adam(groups)
        assert bool(plane.optimizer.defaults.get("fused")) == fused
        for _ in range(2):  # warm-started, as epoch after epoch
            plane.fit({"h": features[:200]}, labels[:200], targets[:200], steps=60)
        bounds.append(plane.bounds({"h": features[200:]}, labels[200:], targets[200:])["h"])
    (fused_x, fused_y), (plain_x, plain_y) = bounds
    assert fused_y == pytest.approx(plain_y, abs=1e-4) and fused_x == pytest.approx(plain_x, rel=1e-3, abs=1e-3)
    assert fused_y > 1.0  # the labels are decodable: the comparison is not of two trivial zeros


def test_frequency_accuracy_through_the_fast_path_scores_like_the_plain_model():
    """Channels-last, folded BatchNorms and cache-sized passes: the plain forward's predictions (bar
    float ties, which the seeded data does not have)."""
    model = trained_looking_cnn(2)
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        predictions = model(x).argmax(1)
    labels = torch.where(torch.arange(40) % 2 == 0, predictions, (predictions + 1) % 4)  # half right, half wrong
    result = frequency_accuracy(model, x, labels, [3, 6], max_batch=9)
    with torch.no_grad():
        assert torch.equal(result.clean, model(x).argmax(1) == labels)
        for index, radius in enumerate((3, 6)):
            low, high = frequency_split(x, radius)
            assert torch.equal(result.low[:, index], model(low).argmax(1) == labels)
            assert torch.equal(result.high[:, index], model(high).argmax(1) == labels)
