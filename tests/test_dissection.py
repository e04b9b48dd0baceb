"""Network dissection algorithms against a plainly written brute-force reference, planted detectors,
the quantile sketch's error bound, the Broden round trip and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning import ConceptWorld, SmallCNN
from xai_lightning.dissection import (
    BrodenDataset,
    ConceptLabels,
    ConceptVocabulary,
    LayerDissection,
    QuantileSketch,
    TopQuantile,
    dissect,
    export_broden,
    quantile_position,
    strict_thresholds,
    unit_mask_pixels,
    upsample_activations,
    vocabulary_from_dataset,
)

# --------------------------------------------------------------------------- brute-force reference


def reference_thresholds(activations: np.ndarray, quantile: float) -> np.ndarray:
    """``activations (N, K, h, w)`` → per-unit ``np.quantile`` over every pixel of every image."""
    per_unit = activations.transpose(1, 0, 2, 3).reshape(activations.shape[1], -1).astype(np.float64)
    return np.array([np.quantile(values, 1.0 - quantile) for values in per_unit])


def reference_iou(
    activations: np.ndarray, masks: np.ndarray, labelled: np.ndarray, categories: list[int], quantile: float
) -> np.ndarray:
    """IoU_{k,c} of Bau et al. written out with loops: threshold, upsample, count per image.

    ``masks (N, C, H, W)`` bool, ``labelled (N, G)`` bool, ``categories[c]`` the category of c.
    """
    thresholds = reference_thresholds(activations, quantile)
    minima = activations.transpose(1, 0, 2, 3).reshape(activations.shape[1], -1).min(1)
    upsampled = F.interpolate(
        torch.from_numpy(activations).float(), size=masks.shape[-2:], mode="bilinear", align_corners=False
    ).numpy()
    units, concepts = activations.shape[1], masks.shape[1]
    iou = np.zeros((units, concepts))
    for k in range(units):
        if thresholds[k] <= minima[k]:
            unit_mask = upsampled[:, k] > thresholds[k]  # a unit constant over its top quantile
        else:
            unit_mask = upsampled[:, k] >= thresholds[k]
        for c in range(concepts):
            intersection = union = 0
            for image in range(masks.shape[0]):
                if not labelled[image, categories[c]]:
                    continue
                intersection += int(np.logical_and(unit_mask[image], masks[image, c]).sum())
                union += int(np.logical_or(unit_mask[image], masks[image, c]).sum())
            iou[k, c] = intersection / union if union else 0.0
    return iou


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1),
    ).eval()


def random_problem(seed: int = 0, n: int = 12, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=generator)
    vocabulary = ConceptVocabulary(("a/x", "a/y", "b/z", "b/w"), ("a", "a", "b", "b"))
    # Concepts are smooth regions where a colour channel is high, so that units overlap them.
    smooth = F.avg_pool2d(images, 5, 1, 2, count_include_pad=False)
    blobs = torch.cat([smooth, smooth[:, :1]], 1) > torch.tensor([0.53, 0.52, 0.5, 0.5]).view(1, 4, 1, 1)
    blobs[:, 3] = False  # concept b/w never occurs
    labelled = torch.ones(n, 2, dtype=torch.bool)
    # Every third image is not labelled in category b: its b-pixels must be ignored, not counted.
    labelled[::3, 1] = False
    return images, blobs, labelled, vocabulary


# --------------------------------------------------------------------------- quantiles


@pytest.mark.parametrize("quantile", [0.005, 0.05, 0.3])
def test_streamed_top_quantile_equals_numpy_quantile(quantile):
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(40, 3, 5, 7, generator=generator).relu() ** 2  # many exact zeros, ties
    values[:, 2] = torch.randn(40, 5, 7, generator=generator)  # signed unit
    metric = TopQuantile(3, values.shape[0] * 35, quantile)
    for chunk in values.split(7):  # uneven batches
        metric.update(chunk)
    thresholds, minima = metric.compute()
    expected = reference_thresholds(values.numpy(), quantile)
    # The threshold is the float32 ceiling of NumPy's float64 quantile: the same pixels pass.
    assert np.all(thresholds.double().numpy() >= expected)
    assert np.all(np.nextafter(thresholds.numpy(), -np.inf).astype(np.float64) < expected)
    flat = values.transpose(0, 1).reshape(3, -1)
    for k in range(3):
        assert torch.equal(flat[k] >= thresholds[k], torch.from_numpy(flat[k].double().numpy() >= expected[k]))
    assert torch.equal(minima, flat.amin(1))


def test_top_quantile_keeps_only_q_n_values_and_merges_like_one_stream():
    values = torch.randn(100, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    n = 100 * 64
    whole = TopQuantile(4, n, 0.005)
    whole.update(values)
    assert whole.top.shape == (4, n - quantile_position(n, 0.005)[0])  # 33 of 6,400 values per unit
    halves = [TopQuantile(4, n, 0.005) for _ in range(2)]
    halves[0].update(values[::2])
    halves[1].update(values[1::2])
    merged = TopQuantile(4, n, 0.005)
    merged.top = merged._merge_top(torch.stack([h.top for h in halves]))
    merged.minimum = torch.minimum(halves[0].minimum, halves[1].minimum)
    merged.count = halves[0].count + halves[1].count
    assert torch.equal(merged.compute()[0], whole.compute()[0])


@pytest.mark.parametrize("distribution", ["lognormal", "relu", "signed"])
def test_quantile_sketch_stays_within_its_stated_error(distribution):
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(200, 6, 10, 10, generator=generator)
    values = {"lognormal": base.exp() * 3.0, "relu": base.relu(), "signed": base * 50.0}[distribution]
    sketch = QuantileSketch(6, 0.005, relative_accuracy=0.01)
    for chunk in values.split(37):
        sketch.update(chunk)
    estimate, _ = sketch.compute()
    per_unit = values.transpose(0, 1).reshape(6, -1).double()
    ordered = per_unit.sort(1).values
    lower, _ = quantile_position(per_unit.shape[1], 0.005)
    exact = torch.from_numpy(reference_thresholds(values.numpy(), 0.005))
    bound = sketch.error_bound(ordered[:, lower], ordered[:, lower + 1])
    error = (estimate.double() - exact).abs()
    # float32 rounding of the estimate adds at most one ulp of the threshold.
    assert torch.all(error <= bound + exact.abs() * 2.0**-23), (error, bound)
    assert torch.all(error > 0) or distribution == "relu"  # it is an estimate, not a copy


def test_quantile_sketch_merges_by_adding_counts():
    values = torch.randn(60, 3, 6, 6, generator=torch.Generator().manual_seed(4)).exp()
    whole, a, b = (QuantileSketch(3) for _ in range(3))
    whole.update(values)
    a.update(values[:25])
    b.update(values[25:])
    a.counts += b.counts
    a.count += b.count
    a.minimum, a.maximum = torch.minimum(a.minimum, b.minimum), torch.maximum(a.maximum, b.maximum)
    assert torch.equal(a.compute()[0], whole.compute()[0])


# --------------------------------------------------------------------------- IoU vs brute force


@pytest.mark.parametrize("max_batch", [None, 5])
def test_dissection_iou_equals_brute_force_reference(max_batch):
    images, masks, labelled, vocabulary = random_problem()
    net = small_net()
    layers = ["1", "3"]
    results = dissect(
        net,
        layers,
        images,
        ConceptLabels.from_masks(masks, vocabulary, labelled),
        vocabulary,
        quantile=0.05,
        max_batch=max_batch,
    )
    categories = vocabulary.category_index.tolist()
    for name, module_index in zip(layers, (2, 4)):
        with torch.no_grad():
            activations = net[:module_index](images).numpy()
        expected = reference_iou(activations, masks.numpy(), labelled.numpy(), categories, 0.05)
        result = results[name]
        np.testing.assert_allclose(result.iou.numpy(), expected, rtol=0, atol=1e-12)
        assert int((result.iou > 0.02).sum()) >= 5  # the comparison is not between two zero matrices
        np.testing.assert_array_equal(
            result.thresholds.double().numpy() >= reference_thresholds(activations, 0.05), True
        )
        assert result.empty_concepts == ("b/w",)
        assert int(result.best_concept.max()) < 3  # an empty concept is never a unit's best


@pytest.mark.parametrize(
    "source, target",
    [
        ((8, 8), (32, 32)),
        ((16, 8), (32, 32)),
        ((7, 7), (112, 112)),
        ((2, 2), (64, 64)),
        ((5, 5), (15, 15)),
        ((8, 8), (24, 24)),
        ((3, 3), (4, 4)),
        ((6, 6), (6, 6)),
    ],
)
def test_unit_mask_pixels_equal_thresholding_the_whole_upsampled_maps(source, target):
    """Cells (power-of-two scales) and the whole-map fallback (other scales) find exactly the pixels of
    ``upsample(A) >= t``, each once — with ties, a dead unit at a strict threshold and chunking."""
    generator = torch.Generator().manual_seed(sum(source) + sum(target))
    activations = torch.relu(torch.randn(6, 5, *source, generator=generator))
    activations[:3] = (activations[:3] * 4).round() / 4  # ties between neighbouring sources
    activations[:, 2] = 0.0  # a dead unit
    activations[0, 2, 0, 0] = 1.0  # … that fires once, in a corner
    thresholds = torch.quantile(activations.transpose(0, 1).reshape(5, -1), 0.9, dim=1)
    minima = activations.transpose(0, 1).reshape(5, -1).amin(1)
    level = strict_thresholds(thresholds, minima)
    for max_values in (1 << 22, 300):
        found = torch.stack(unit_mask_pixels(activations, level, target, max_values=max_values), 1)
        upsampled = upsample_activations(activations, target)
        strict = (thresholds <= minima).view(1, -1, 1, 1)
        t = thresholds.view(1, -1, 1, 1)
        expected = torch.where(strict, upsampled > t, upsampled >= t).nonzero()
        assert len(found) == len(torch.unique(found, dim=0))  # every pixel once
        assert torch.equal(torch.unique(found, dim=0), expected)
        assert len(expected) > 20 and (expected[:, 1] == 2).any()


def test_the_result_does_not_depend_on_how_the_probe_set_is_batched():
    images, masks, labelled, vocabulary = random_problem(seed=5, n=30)
    labels = ConceptLabels.from_masks(masks, vocabulary, labelled)
    with torch.no_grad():
        activations = small_net(1)[:2](images)
    outcomes = []
    for batch in (30, 4, 1):
        layer = LayerDissection("1", 6, (16, 16), labels, vocabulary, quantile=0.01)
        for rows in torch.randperm(30, generator=torch.Generator().manual_seed(batch)).split(batch):
            layer.update(activations[rows], rows)
        assert layer.kept_bytes >= activations.numel() * 4  # exact: the activations are kept until counted
        result = layer.compute()
        assert layer.kept_bytes == 0
        outcomes.append(result)
    for other in outcomes[1:]:
        assert torch.equal(outcomes[0].iou, other.iou)
        assert torch.equal(outcomes[0].thresholds, other.thresholds)
    assert int((outcomes[0].iou > 0.005).sum()) >= 6  # not a comparison of zero matrices


def test_top_activating_images_are_those_with_the_largest_peak():
    images, masks, labelled, vocabulary = random_problem(n=20)
    net = small_net()
    result = dissect(net, "1", images, masks, vocabulary, max_batch=3, top_count=4)["1"]
    with torch.no_grad():
        peaks = net[:2](images).flatten(2).amax(2)  # (N, K)
    expected = peaks.double().topk(4, dim=0).indices.T
    assert torch.equal(result.top_images, expected)


# --------------------------------------------------------------------------- planted detectors


class PlantedDetectors(nn.Module):
    """Unit 0 fires exactly on red pixels; unit 1 on the pixels of circles (found by how much of
    its bounding box the object fills: π/4 for a circle, 1 for a square, about 1/2 otherwise);
    unit 2 is unit 0 at half resolution (dissection upsamples it bilinearly); unit 3 is dead."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Identity()
        self.coarse = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        red = (r - torch.maximum(g, b) > 0.4).float()
        colourful = (x.amax(1) - x.amin(1)) > 0.35
        rows, columns = colourful.any(2).float().sum(1), colourful.any(1).float().sum(1)
        fill = colourful.float().sum((1, 2)) / (rows * columns).clamp_min(1)
        circle = colourful & ((fill > 0.68) & (fill < 0.9)).view(-1, 1, 1)
        units = self.units(torch.stack([red, circle.float(), torch.zeros_like(red)], 1))
        self.coarse(F.avg_pool2d(red.unsqueeze(1), 2))
        return units.mean((2, 3))


def test_planted_detectors_get_iou_one_with_their_concept_and_category():
    world = ConceptWorld(120, seed=7, textures=("plain",))
    vocabulary, channels = vocabulary_from_dataset(world)
    masks = world.masks(torch.arange(len(world)))[:, channels]
    results = dissect(PlantedDetectors(), ["units", "coarse"], world.images, masks, vocabulary)
    units = results["units"]
    assert units.concept_of(0)[:2] == ("colour/red", "colour")
    assert units.concept_of(0)[2] == pytest.approx(1.0)
    assert units.concept_of(1)[:2] == ("shape/circle", "object")
    assert units.concept_of(1)[2] > 0.97
    assert not bool(units.interpretable[2]) and float(units.best_iou[2]) == 0.0  # dead unit: empty mask
    assert units.interpretable_by_category() == {"object": 1, "texture": 0, "colour": 1, "scene": 0, "part": 0}
    # At half resolution the unit is 1 inside red regions and fractional on their border; at the top
    # 0.5 % (red covers ~4 % of pixels) only the interior passes. With q = the red pixels' share,
    # the bilinearly upsampled mask recovers the region up to its border.
    assert results["coarse"].concept_of(0)[:2] == ("colour/red", "colour")
    red_share = float(masks[:, vocabulary.index("colour/red")].float().mean())
    coarse = dissect(PlantedDetectors(), "coarse", world.images, masks, vocabulary, quantile=red_share)["coarse"]
    assert coarse.concept_of(0)[:2] == ("colour/red", "colour")
    assert coarse.concept_of(0)[2] > 0.8


def test_trained_network_has_more_interpretable_units_than_at_initialisation(trained_shape_model):
    world = ConceptWorld(150, seed=11)
    vocabulary, channels = vocabulary_from_dataset(world)
    labels = ConceptLabels.from_masks(world.masks(torch.arange(len(world)))[:, channels], vocabulary)
    torch.manual_seed(0)
    initial = SmallCNN(num_classes=5, width=16).eval()
    layers = ["features.13", "features.20"]
    trained = dissect(trained_shape_model.network, layers, world.images, labels, vocabulary)
    untrained = dissect(initial, layers, world.images, labels, vocabulary)
    count = {
        name: (int(trained[name].interpretable.sum()), int(untrained[name].interpretable.sum())) for name in layers
    }
    assert sum(t for t, _ in count.values()) > sum(u for _, u in count.values()), count
    assert trained["features.20"].unique_concepts_by_category()["object"] >= 1, count


# --------------------------------------------------------------------------- Broden format


def test_broden_round_trip_gives_the_same_ious(tmp_path):
    world = ConceptWorld(24, seed=3, distractor_p=0.5)
    root = export_broden(world, tmp_path / "broden")
    broden = BrodenDataset(root)
    assert len(broden) == 24
    assert (root / "c_color.csv").is_file() and (root / "category.csv").is_file()
    vocabulary, channels = vocabulary_from_dataset(world)
    net = small_net(2)
    # The export stores 8-bit images; the reference sees the same quantised pixels.
    images = (world.images * 255).round().to(torch.uint8).float() / 255
    original = dissect(net, "1", images, world.masks(torch.arange(24))[:, channels], vocabulary, quantile=0.02)["1"]
    items = [broden[i] for i in range(len(broden))]
    read = dissect(
        net,
        "1",
        torch.stack([item["image"] for item in items]),
        torch.stack([item["masks"] for item in items]),
        broden.concept_vocabulary,
        quantile=0.02,
    )["1"]
    assert broden.concept_categories["colour/red"] == "color"
    order = [broden.concept_names.index(name) for name in vocabulary.names]
    assert torch.equal(read.iou[:, order], original.iou)
    assert original.iou.max() > 0.05
    # Segmentations decode to exactly the exported masks (part/corner overlaps edge: two layers).
    masks = world.masks(torch.arange(24))[:, channels]
    assert torch.equal(torch.stack([item["masks"] for item in items])[:, order], masks)
    labels = broden.concept_labels(range(24))
    assert torch.equal(labels.to_masks(len(broden.concept_vocabulary))[:, order], masks)


def test_broden_reader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.csv"):
        BrodenDataset(tmp_path)


# --------------------------------------------------------------------------- bad input


def test_masks_of_another_size_than_the_images_name_both_shapes():
    images, masks, _, vocabulary = random_problem()
    wrong = masks[..., :10]
    with pytest.raises(ValueError, match=r"\(12, 4, 16, 10\).*\(12, 3, 16, 16\)"):
        dissect(small_net(), "1", images, wrong, vocabulary)


def test_a_concept_without_pixels_is_reported_not_divided_by_zero():
    images, masks, labelled, vocabulary = random_problem()
    result = dissect(small_net(), "1", images, ConceptLabels.from_masks(masks, vocabulary, labelled), vocabulary)["1"]
    assert result.empty_concepts == ("b/w",)
    assert torch.isfinite(result.iou).all() and torch.all(result.iou[:, 3] == 0)


def test_a_layer_without_spatial_output_is_rejected_by_name():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    images, masks, _, vocabulary = random_problem()
    with pytest.raises(ValueError, match="Layer '2'.*no spatial"):
        dissect(net, "2", images, masks, vocabulary)
