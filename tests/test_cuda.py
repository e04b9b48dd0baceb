"""On a CUDA GPU: every callback trains and logs finite values with the model left on the GPU, the
attribution methods give on the GPU what they give on the CPU, and ``max_batch=None`` becomes a
memory-aware cap there.

The whole module is marked ``cuda`` and skipped without a CUDA device. On a GPU machine::

    PYTHONPATH=. python -m pytest -m cuda tests/test_cuda.py -q

``XAI_TEST_DEVICE=cpu`` runs the same logic on the CPU: a dry run that checks the tests themselves
during development on a machine without a GPU (then the CPU-versus-device comparisons compare the
CPU with itself, and the memory-aware cap is the CPU's None). Without the variable the module
needs CUDA.

The callbacks are the cases of ``tests/callback_cases.py``, configured as there: every callback
``xai_lightning.callbacks`` exports, AdversarialTrainingCallback included (``test_every_callback_is_a_case``
in ``tests/test_lightning_integration.py`` keeps that list complete). Cases that train the same model on
the same data share one fit with all their callbacks attached at once, as a user would attach them.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

import pytest
import pytorch_lightning as pl
import torch
from callback_cases import CALLBACK_FACTORIES, CallbackCase
from conftest import quiet_trainer, small_datamodule
from pytorch_lightning.loggers import CSVLogger

from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.core.batching import CUDA_MEMORY_FRACTION, GRAPH_MEMORY_FACTOR, activation_bytes_per_row

DEVICE = os.environ.get("XAI_TEST_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"XAI_TEST_DEVICE must be 'cuda' (the default) or 'cpu' (a dry run); got {DEVICE!r}")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (XAI_TEST_DEVICE=cpu dry-runs the module on the CPU)",
    ),
]

TINY_DATA = dict(num_train=64, num_val=32, batch_size=16)  # 4 training steps an epoch
#: Largest |device - CPU| allowed, as a fraction of the largest |CPU attribution| (float32, TF32 off).
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def device() -> torch.device:
    """The device under test: CUDA, or the CPU in a dry run (``XAI_TEST_DEVICE=cpu``)."""
    return torch.device("cuda", torch.cuda.current_device()) if DEVICE == "cuda" else torch.device("cpu")


@pytest.fixture
def full_float32_precision():
    """cuDNN convolutions may use TF32 (10-bit mantissas) by default on Ampere and later GPUs: ~1e-3
    relative error, which a CPU comparison at 1e-4 would flag. Compare at float32's own precision."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------- callbacks
def group_key(case: CallbackCase) -> tuple:
    """Cases with equal keys train the same model on the same data (one fit serves them all)."""
    return (case.model, case.data, tuple(sorted(case.datamodule.items())))


def one_epoch_trainer(device: torch.device, root, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A quiet one-epoch trainer on ``device`` logging to CSV files under ``root``."""
    return quiet_trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        # Lightning's default: on CUDA, deterministic=True (the CPU tests' setting) makes PyTorch raise
        # on kernels without a deterministic implementation, which says nothing about the callbacks.
        deterministic=False,
        max_epochs=1,
        callbacks=callbacks,
        logger=CSVLogger(str(root)),
        default_root_dir=str(root),
        enable_checkpointing=False,
    )


@dataclass
class GroupFit:
    """One epoch of a group's model with all the group's callbacks, and what it left behind."""

    callbacks: dict[str, pl.Callback] = field(default_factory=dict)  # by case name
    metrics: dict[str, float] = field(default_factory=dict)  # trainer.callback_metrics as floats
    model: pl.LightningModule | None = None
    root_device: torch.device | None = None
    error: BaseException | None = None  # the fit's error, if it failed


@pytest.fixture(scope="module")
def group_fits(tmp_path_factory, device):
    """``get(case) -> GroupFit``, fitting each group once, on first use.

    When a group's fit fails, each of its cases is fitted alone to say which one is at fault: the
    culprit's test raises its own error, the others' that they pass alone but not together.
    """
    fits: dict[tuple, GroupFit] = {}

    def get(case: CallbackCase) -> GroupFit:
        key = group_key(case)
        if key not in fits:
            fits[key] = fit_group([c for c in CALLBACK_FACTORIES if group_key(c) == key], device, tmp_path_factory)
        together = fits[key]
        if together.error is None:
            return together
        alone = fit_group([case], device, tmp_path_factory)
        if alone.error is not None:
            raise alone.error
        group = [c.name for c in CALLBACK_FACTORIES if group_key(c) == key]
        raise AssertionError(
            f"{case.name} trains alone on {device.type}, but not together with {group}: {together.error!r}"
        ) from together.error

    return get


def fit_group(cases: list[CallbackCase], device: torch.device, tmp_path_factory) -> GroupFit:
    found = GroupFit()
    pl.seed_everything(0)
    for case in cases:
        callback = case.make()
        if isinstance(callback, ObserverCallback):
            callback.on_error = "raise"  # a failed observation must fail the test, not become a warning
        found.callbacks[case.name] = callback
    model = cases[0].build_model()
    root = tmp_path_factory.mktemp("_".join(case.name for case in cases)[:60])
    trainer = one_epoch_trainer(device, root, list(found.callbacks.values()))
    try:
        trainer.fit(model, cases[0].build_data(**TINY_DATA))
    except Exception as error:  # reported by the group's tests (see group_fits)
        found.error = error
        return found
    found.metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    found.model = model
    found.root_device = trainer.strategy.root_device
    return found


CASES = [pytest.param(case, id=case.name) for case in CALLBACK_FACTORIES]


@pytest.mark.parametrize("case", CASES)
def test_every_callback_trains_an_epoch_on_the_device_and_logs_finite_scalars(group_fits, case, device):
    found = group_fits(case)
    assert found.root_device is not None and found.root_device.type == device.type
    logged = {key: value for key, value in found.metrics.items() if key.startswith(case.namespace + "/")}
    assert logged, f"{case.name} logged no scalar under {case.namespace}/"
    bad = {
        key: value
        for key, value in logged.items()
        if not math.isfinite(value) and not any(part in key for part in case.may_be_nan)
    }
    assert not bad, f"non-finite values on {device.type}: {bad}"
    assert any(math.isfinite(value) for value in logged.values())
    callback = found.callbacks[case.name]
    if case.observes:
        assert len(callback.history) == 1 and not callback.failures


@pytest.mark.parametrize("case", CASES)
def test_the_model_stays_on_the_device_after_an_epoch_with_every_callback(group_fits, case, device):
    found = group_fits(case)
    elsewhere = {
        name: tensor.device
        for name, tensor in [*found.model.named_parameters(), *found.model.named_buffers()]
        if tensor.device.type != device.type
    }
    assert not elsewhere, f"moved off {device.type} after an epoch with {case.name}: {elsewhere}"
    assert found.model.device.type == device.type


def test_robustness_synthesis_runs_on_the_device(tmp_path, device):
    """The robustness case skips its synthesis epoch (slow on a CPU); on the device it runs: morphs,
    inversions and feature visualisations (optimised images on the device) log finite scalars."""
    case = next(case for case in CALLBACK_FACTORIES if case.name == "robustness")
    callback = case.make()
    callback.synthesis_epochs = [0]
    callback.on_error = "raise"
    pl.seed_everything(0)
    model = case.build_model()
    trainer = one_epoch_trainer(device, tmp_path, [callback])
    trainer.fit(model, case.build_data(**TINY_DATA))
    synthesis = ("morph_success_rate", "inversion_error", "feature_visualization_activation")
    logged = {key: float(trainer.callback_metrics[f"robustness/{key}"]) for key in synthesis}
    assert all(math.isfinite(value) for value in logged.values()), logged
    assert not callback.failures and model.device.type == device.type


# ---------------------------------------------------------------------------------------------- attributions
METHODS = {
    "saliency": {},
    "integrated_gradients": {"steps": 16},
    "gradcam": {"layer": "features.13"},
    "occlusion": {"window": 8, "stride": 4},
}


def smooth(network: SmallCNN) -> SmallCNN:
    """A copy of ``network`` with every ReLU a GELU and every max-pool an average pool: no kinks.

    At ReLU and max-pool near-ties any change of float rounding (another device's convolution
    algorithm, float64, folded BatchNorms) flips which input receives the gradient: on the CPU, float32
    against float64 Integrated Gradients of the trained SmallCNN on ConceptWorld images differ by 7e-2
    of the attribution scale, at 8 % of the pixels. That is the network's arithmetic, not the method's,
    and it would hide what this test looks for (a method computing something else on the device). The
    smoothed network differs there by under 1e-6 (saliency, IG, Grad-CAM, occlusion; 3 batches).
    """
    network = copy.deepcopy(network).eval()
    for index, module in enumerate(network.features):
        if isinstance(module, torch.nn.ReLU):
            network.features[index] = torch.nn.GELU()
        elif isinstance(module, torch.nn.MaxPool2d):
            network.features[index] = torch.nn.AvgPool2d(module.kernel_size, module.stride)
    return network


@pytest.fixture(scope="module")
def model_and_images(trained_shape_model):
    """The trained SmallCNN, smoothed (:func:`smooth`; trained weights make occlusion's score
    differences large against float32 rounding), and eight ConceptWorld images with their labels, on the CPU."""
    datamodule = small_datamodule(num_train=16, num_val=8, batch_size=8)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.val_dataloader()))[:2]
    return smooth(trained_shape_model.network), images, labels


@pytest.mark.parametrize("method", list(METHODS))
def test_attributions_on_the_device_match_the_cpu(model_and_images, method, device, full_float32_precision):
    model, images, labels = model_and_images
    on_cpu = attribute(model, images, labels, method, **METHODS[method])
    on_device = attribute(
        copy.deepcopy(model).to(device), images.to(device), labels.to(device), method, **METHODS[method]
    )
    assert on_device.device.type == device.type
    assert on_device.shape == on_cpu.shape and on_device.dtype == on_cpu.dtype == torch.float32
    scale = float(on_cpu.abs().max())
    assert scale > 0, f"{method}: an all-zero reference compares nothing"
    difference = float((on_device.cpu() - on_cpu).abs().max())
    assert difference <= RELATIVE_TOLERANCE * scale, f"{method}: |{device.type} - cpu| = {difference:.2e}"


def test_max_batch_none_becomes_a_memory_aware_cap_on_cuda(model_and_images, device, full_float32_precision):
    model, images, labels = model_and_images
    model, images, labels = copy.deepcopy(model).to(device), images.to(device), labels.to(device)
    # Integrated gradients at the default cap and cut into slices of 7 of its 64 path points: the same.
    capped = attribute(model, images, labels, "integrated_gradients", steps=16)
    sliced = attribute(model, images, labels, "integrated_gradients", steps=16, max_batch=7)
    assert float((capped - sliced).abs().max()) <= RELATIVE_TOLERANCE * float(capped.abs().max())
    cap = ExplainedModel(model, like=images).max_batch
    if device.type != "cuda":
        assert cap is None  # off CUDA, None stays "no cap" (CPU passes are cut to a cache-friendly size)
        return
    assert isinstance(cap, int) and cap >= 1
    # The cap's rows (activations, their gradients, temporaries) fit in the documented share of the memory.
    row_bytes = activation_bytes_per_row(model, images[:1])
    total = torch.cuda.get_device_properties(device).total_memory
    assert cap * GRAPH_MEMORY_FACTOR * row_bytes <= CUDA_MEMORY_FRACTION * total
