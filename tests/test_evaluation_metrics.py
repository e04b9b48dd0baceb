"""Explanation metrics against closed forms: hand-computed AUCs, perfect vs random maps, IG's zero
infidelity on a linear model, exact imputation of linear images; plus batching invariance, the
torchmetrics form (DDP sync included), degenerate maps and bad-input errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from xai_lightning.attribution import IntegratedGradients, Saliency
from xai_lightning.evaluation import (
    ROAD,
    DeletionAUC,
    FaithfulnessCorrelation,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    PointingGame,
    RandomMapReference,
    RelevanceMass,
    available_metrics,
    build_metric,
    deletion_auc,
    faithfulness_correlation,
    infidelity,
    insertion_auc,
    max_sensitivity,
    noisy_linear_imputation,
    perturbation_curve,
    pointing_game_score,
    random_map_reference,
    relevance_mass,
    road,
)

ROOT = Path(__file__).resolve().parents[1]


class RegionSum(nn.Module):
    """Logit 0 = Σ of the pixels (all channels) inside a fixed region; logit 1 = 0."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x * self.region).flatten(1).sum(1)
        return torch.stack([inside, torch.zeros_like(inside)], dim=1)


def region_setup():
    """A 4×4 one-channel image whose region holds 4, 3, 2, 1 (sum 10) and whose background is 5."""
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1, 1], region[1, 2], region[2, 1], region[2, 2] = True, True, True, True
    x = torch.full((1, 1, 4, 4), 5.0)
    x[0, 0, 1, 1], x[0, 0, 1, 2], x[0, 0, 2, 1], x[0, 0, 2, 2] = 4.0, 3.0, 2.0, 1.0
    perfect = (x[:, 0] * region).clone()  # each pixel's contribution to the logit
    return RegionSum(region).eval(), x, perfect


def test_deletion_and_insertion_aucs_equal_hand_values():
    model, x, perfect = region_setup()
    common = {"score": "logit", "baseline": "zero", "max_batch": 5}
    deletion = perturbation_curve(model, x, perfect, 0, mode="deletion", steps=16, **common)
    assert deletion.scores[0, :6].tolist() == [10.0, 6.0, 3.0, 1.0, 0.0, 0.0]
    # trapezoid over the fraction axis, 1/16 per step: ((10+6) + (6+3) + (3+1) + (1+0)) / 2 / 16
    assert float(deletion.auc) == pytest.approx(15 / 16)
    insertion = perturbation_curve(model, x, perfect, 0, mode="insertion", steps=16, **common)
    assert insertion.scores[0, :6].tolist() == [0.0, 4.0, 7.0, 9.0, 10.0, 10.0]
    assert float(insertion.auc) == pytest.approx((2 + 5.5 + 8 + 9.5 + 12 * 10) / 16)
    # four pixels per step: the whole region goes at once
    assert float(deletion_auc(model, x, perfect, 0, steps=4, **common)) == pytest.approx(10 / 2 / 4)
    assert float(insertion_auc(model, x, perfect, 0, steps=4, **common)) == pytest.approx((5 + 3 * 10) / 4)


def test_a_perfect_map_beats_random_maps_on_every_metric():
    torch.manual_seed(0)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:5, 3:6] = True
    model = RegionSum(region).eval()
    x = torch.rand(5, 1, 8, 8) + 0.5
    perfect = x[:, 0] * region
    masks = region.expand(5, 8, 8)
    logit = {"score": "logit"}
    better_when_lower = {
        "deletion_auc": DeletionAUC(model, steps=16, **logit),
        "infidelity": Infidelity(model, perturbation="subset", normalize=False, multiply_by_inputs=True),
        "road_morf": ROAD(model, order="morf", noise=0.0, **logit),
    }
    better_when_higher = {
        "insertion_auc": InsertionAUC(model, steps=16, baseline="zero", **logit),
        "faithfulness_correlation": FaithfulnessCorrelation(model, draws=30, subset_size=0.2),
        "road_lerf": ROAD(model, order="lerf", noise=0.0, **logit),
        "pointing_game": PointingGame(),
        "relevance_mass": RelevanceMass(),
    }
    for name, metric in {**better_when_lower, **better_when_higher}.items():
        ours = metric.values(x, perfect, 0, masks).mean()
        chance = random_map_reference(metric, x, perfect, 0, num_maps=4, seed=1, masks=masks).mean()
        assert (ours < chance) if name in better_when_lower else (ours > chance), (name, float(ours), float(chance))
    # The perfect map's subset sums are the logit drops: correlation 1, infidelity 0.
    assert faithfulness_correlation(model, x, perfect, 0).tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    assert better_when_lower["infidelity"].values(x, perfect, 0).max() < 1e-9


@pytest.mark.parametrize("perturbation", ["subset", "square"])
def test_integrated_gradients_on_a_linear_model_has_zero_infidelity(perturbation):
    """IG (zero baseline) of f(x) = Wx + b is W_c ⊙ x; removing features to the baseline changes f by
    exactly the IG of the removed features, which is what infidelity measures with multiply_by_inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double().eval()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    ig = IntegratedGradients(steps=4).attribute(model, x, target)
    scale = float(ig.abs().sum(dim=(1, 2, 3)).mean())
    value = infidelity(
        model, x, ig, target, perturbation=perturbation, multiply_by_inputs=True, normalize=False, samples=20, square=3
    )
    assert value.max() < 1e-20 * max(scale, 1.0) ** 2 + 1e-24
    # Under a mismatched perturbation (noise, no input factor) IG is not exact: the test can fail.
    mismatched = infidelity(model, x, ig, target, perturbation="noise", normalize=False, samples=20)
    assert mismatched.min() > 1e-6
    # ... while the gradient is exact there: f(x) − f(x − I) = Wᵀ I.
    gradient = Saliency(abs=False).attribute(model, x, target)
    assert infidelity(model, x, gradient, target, perturbation="noise", normalize=False).max() < 1e-20


def test_noisy_linear_imputation_reproduces_a_linear_image():
    """The 8-neighbour weights are symmetric, so a linear ramp is its own neighbour mean."""
    rows, cols = torch.meshgrid(
        torch.arange(12.0, dtype=torch.float64), torch.arange(10.0, dtype=torch.float64), indexing="ij"
    )
    image = torch.stack([0.3 * rows + 0.1 * cols, -0.2 * rows + 0.5 * cols + 1]).unsqueeze(0)
    removed = torch.zeros(1, 12, 10, dtype=torch.bool)
    removed[0, 2:9, 3:8] = True  # an interior block: every removed pixel has all 8 neighbours in the image
    removed[0, 5, 1] = True
    filled = noisy_linear_imputation(image, removed, noise=0.0)
    torch.testing.assert_close(filled, image, atol=1e-9, rtol=0)
    noisy = noisy_linear_imputation(image, removed, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, ~removed[0]], image[:, :, ~removed[0]])
    assert 0.005 < float((noisy - image)[:, :, removed[0]].std()) < 0.02


# ------------------------------------------------------------------ batching and the torchmetrics form
def trained_like_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4)
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(3.0)
    return net.eval()


def all_metrics(model):
    return {
        "deletion_auc": DeletionAUC(model, steps=8),
        "insertion_auc": InsertionAUC(model, steps=8),
        "faithfulness_correlation": FaithfulnessCorrelation(model, draws=8),
        "infidelity": Infidelity(model, samples=4),
        "max_sensitivity": MaxSensitivity(model, method="saliency", samples=3),
        "road_morf": ROAD(model, order="morf", fractions=[0.2, 0.6]),
        "road_lerf": ROAD(model, order="lerf", fractions=[0.2, 0.6]),
        "pointing_game": PointingGame(),
        "relevance_mass": RelevanceMass(),
    }


def test_every_metric_is_the_same_in_any_batch_and_slice():
    """An example's value depends on nothing but the example: not on max_batch, not on its batch-mates
    (which is what makes a 2-process DDP run give a 1-process run's figures)."""
    model = trained_like_model()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 12, 12, generator=generator)
    maps = Saliency().to_map(Saliency().attribute(model, x, "predicted"))
    masks = torch.zeros(6, 12, 12, dtype=torch.bool)
    masks[:, 3:9, 2:7] = True
    assert sorted(all_metrics(model)) == sorted(available_metrics())
    for name, metric in all_metrics(model).items():
        whole = metric.values(x, maps, "predicted", masks)
        assert torch.isfinite(whole).all(), name
        halves = torch.cat(
            [metric.values(x[rows], maps[rows], "predicted", masks[rows]) for rows in (slice(0, 2), slice(2, 6))]
        )
        torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5, msg=name)
        if "max_batch" in getattr(metric, "options", {}):
            metric.options["max_batch"] = 5
            torch.testing.assert_close(
                metric.values(x, maps, "predicted", masks), whole, atol=1e-5, rtol=1e-5, msg=name
            )
        chance = random_map_reference(metric, x, maps, "predicted", num_maps=2, masks=masks)
        chance_halves = torch.cat(
            [
                random_map_reference(metric, x[rows], maps[rows], "predicted", num_maps=2, masks=masks[rows])
                for rows in (slice(0, 3), slice(3, 6))
            ]
        )
        torch.testing.assert_close(chance_halves, chance, atol=1e-5, rtol=1e-5, msg=name)


def test_random_maps_per_example_depend_on_the_example_seed_only():
    from xai_lightning.evaluation import random_maps

    like = torch.zeros(4, 6, 6)
    shared = random_maps(like, 2, seed=3)
    assert torch.equal(shared[:, 0], shared[:, 3]) and not torch.equal(shared[0], shared[1])
    own = random_maps(like, 2, seed=3, example_seeds=torch.tensor([10, 11, 12, 13]))
    assert not torch.equal(own[:, 0], own[:, 1])
    alone = random_maps(like[:1], 2, seed=3, example_seeds=torch.tensor([12]))
    assert torch.equal(alone[:, 0], own[:, 2])
    assert torch.equal(random_maps(like, 2, seed=3, example_seeds=torch.tensor([10, 11, 12, 13])), own)
    assert not torch.equal(random_maps(like, 2, seed=4, example_seeds=torch.tensor([10, 11, 12, 13])), own)


def test_torchmetric_accumulates_the_function_mean_and_never_owns_the_model():
    model = trained_like_model()
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(5, 12, 12, generator=torch.Generator().manual_seed(2))
    metric = DeletionAUC(model, steps=8)
    metric.update(x[:2], maps[:2], "predicted")
    metric.update(x[2:], maps[2:], "predicted")
    expected = deletion_auc(model, x, maps, "predicted", steps=8).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-6)
    assert list(metric.children()) == [] and set(metric.state_dict()) <= {"total", "count"}
    assert metric.higher_is_better is False and InsertionAUC(model).higher_is_better is True
    metric.reset()
    metric.update(x[:1], maps[:1], "predicted")
    assert float(metric.compute()) == pytest.approx(float(deletion_auc(model, x[:1], maps[:1], "predicted", steps=8)))
    reference = RandomMapReference(metric, num_maps=2, seed=3)
    reference.update(x, maps, "predicted")
    assert float(reference.compute()) == pytest.approx(
        float(random_map_reference(metric, x, maps, "predicted", num_maps=2, seed=3).mean()), abs=1e-6
    )


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = trained_like_model()
        x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        maps = torch.rand(6, 12, 12, generator=torch.Generator().manual_seed(2))
        metric = FaithfulnessCorrelation(model, draws=6)
        metric.update(x[rank::world], maps[rank::world], "predicted")
        value = float(metric.compute())
        if rank == 0:
            queue.put(value)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_metric_states_sync_across_two_gloo_processes():
    import torch.multiprocessing as mp

    # spawn, not fork: a child forked from a parent whose OpenMP pool is running can hang in it
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    workers = mp.start_processes(_ddp_worker, args=(2, port, queue), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 600
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("the 2-process metric sync did not finish within 10 minutes")
    synced = queue.get()
    model = trained_like_model()
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(6, 12, 12, generator=torch.Generator().manual_seed(2))
    assert synced == pytest.approx(
        float(faithfulness_correlation(model, x, maps, "predicted", draws=6).mean()), abs=1e-6
    )


# ------------------------------------------------------------------ degenerate maps and bad input
def test_all_zero_and_nan_maps_get_defined_values():
    model = trained_like_model()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(3, 12, 12, dtype=torch.bool)
    masks[:, :6] = True
    for maps in (torch.zeros(3, 12, 12), torch.full((3, 12, 12), float("nan"))):
        for name, metric in all_metrics(model).items():
            assert torch.isfinite(metric.values(x, maps, "predicted", masks)).all(), name
        assert faithfulness_correlation(model, x, maps, "predicted").tolist() == [0.0, 0.0, 0.0]
        assert pointing_game_score(x, maps, masks).tolist() == [0.5, 0.5, 0.5]  # chance: the mask's area
        assert relevance_mass(x, maps, masks).tolist() == [0.5, 0.5, 0.5]
    zero = torch.zeros(3, 12, 12)
    assert max_sensitivity(
        model, x, zero, "predicted", explain=lambda m, i, t: torch.zeros(i.shape[0], 12, 12)
    ).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "name",
    [
        "deletion_auc",
        "insertion_auc",
        "faithfulness_correlation",
        "infidelity",
        "max_sensitivity",
        "road_morf",
        "pointing_game",
        "relevance_mass",
    ],
)
def test_maps_that_do_not_match_the_inputs_name_both_shapes(name):
    model = trained_like_model()
    metric = all_metrics(model)[name]
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(ValueError, match=r"Maps of shape \(2, 6, 6\) do not match inputs of shape \(2, 3, 12, 12\)"):
        metric.values(x, torch.rand(2, 6, 6), "predicted", torch.ones(2, 12, 12, dtype=torch.bool))


def test_localisation_metrics_without_masks_say_what_is_missing():
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        PointingGame().update(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), "predicted")


def test_registry_names_metrics_and_options():
    model = trained_like_model()
    assert isinstance(build_metric("road_lerf", model, fractions=[0.5]), ROAD)
    with pytest.raises(ValueError, match="Did you mean 'deletion_auc'"):
        build_metric("deletion_au", model)
    with pytest.raises(TypeError, match="deletion_auc has no option 'step'; valid options: steps"):
        build_metric("deletion_auc", model, step=3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        DeletionAUC(model, steps=0)
    with pytest.raises(ValueError, match="Unknown score"):
        faithfulness_correlation(model, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), 0, score="loss")


def test_road_on_tabular_inputs_explains_what_it_needs():
    model = nn.Linear(6, 2)
    with pytest.raises(ValueError, match=r"ROAD imputes pixels of images \(B, C, H, W\)"):
        road(model, torch.rand(3, 6), torch.rand(3, 6), 0)


def test_the_evaluation_package_imports_without_lightning():
    """Algorithm packages are pure torch. The package root still imports the callbacks, and
    ``xai_lightning.models/__init__`` the LightningModule (reached through attribution's incremental
    forward, which needs only ``models.normalize``), so both load as bare stand-ins here."""
    stand_ins = "".join(
        f"m = types.ModuleType({name!r}); m.__path__ = [{str(path)!r}]; sys.modules[{name!r}] = m; "
        for name, path in (
            ("xai_lightning", ROOT / "xai_lightning"),
            ("xai_lightning.models", ROOT / "xai_lightning" / "models"),
        )
    )
    code = (
        f"import sys, types; {stand_ins}"
        "import xai_lightning.evaluation, xai_lightning.evaluation.sanity; "
        "print('pytorch_lightning' in sys.modules, 'lightning' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "False False"
