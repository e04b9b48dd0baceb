"""AttributionCallback end to end: bit-identical training, what W&B gets (read back), YAML, setup errors, DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    assert_bit_identical,
    quiet_trainer,
    read_wandb_history,
    small_classifier,
    small_datamodule,
    train_weights,
    wandb_run_dir,
)
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn

from xai_lightning import AttributionCallback, ImageClassifier, LayerNotFoundError
from xai_lightning.attribution import available_methods, get_method

FAST = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"n_samples": 4},
    "occlusion": {"window": 8, "stride": 8},
}
DEFAULTS = ["saliency", "integrated_gradients", "smoothgrad", "guided_backprop", "gradcam", "occlusion"]
SCORES = ("energy_in_mask", "energy_in_mask_uniform", "pointing_game", "empty_maps")


def fast_callback(**kwargs) -> AttributionCallback:
    methods = [m for m in kwargs.get("methods", DEFAULTS)]
    kwargs.setdefault("method_options", {k: v for k, v in FAST.items() if k in methods})
    kwargs.setdefault("num_probe", 6)
    return AttributionCallback(**kwargs)


def test_the_default_methods_are_the_issues_list():
    assert AttributionCallback().methods == DEFAULTS
    assert AttributionCallback().num_probe == 16


def test_integrated_gradients_runs_the_callbacks_16_steps_unless_method_options_say_otherwise():
    # 16 Gauss-Legendre steps (measured against 50 and 256 in CALLBACK_METHOD_DEFAULTS' comment).
    assert AttributionCallback()._build("integrated_gradients").steps == 16
    chosen = AttributionCallback(method_options={"integrated_gradients": {"steps": 50, "rule": "trapezoid"}})
    built = chosen._build("integrated_gradients")
    assert (built.steps, built.rule) == (50, "trapezoid")
    partly = AttributionCallback(method_options={"integrated_gradients": {"baseline": "blur"}})
    built = partly._build("integrated_gradients")
    assert (built.steps, built.baseline) == (16, "blur")  # other options keep the callback's step count
    assert AttributionCallback()._build("smoothgrad").n_samples == get_method("smoothgrad").n_samples  # untouched


def test_training_with_the_callback_gives_bit_identical_weights(tmp_path):
    """Dropout draws from the global RNG every step, so SmoothGrad's noise or any RNG leak would show."""
    data = dict(num_train=96, num_val=32)
    reference = train_weights(tmp_path / "plain", [], epochs=2, dropout=0.5, **data)
    observed = train_weights(
        tmp_path / "observed",
        [fast_callback(methods=DEFAULTS + ["deeplift", "score_cam"], num_probe=4)],
        epochs=2,
        dropout=0.5,
        **data,
    )
    assert_bit_identical(reference, observed)


def test_wandb_offline_run_has_the_grid_and_every_methods_scalars(tmp_path):
    pl.seed_everything(0)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="attribution-test")
    callback = fast_callback(methods=DEFAULTS)
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[callback], logger=logger, default_root_dir=str(tmp_path), limit_train_batches=2
    )
    trainer.fit(small_classifier(width=4), small_datamodule())
    logger.experiment.finish()
    run = wandb_run_dir(tmp_path)
    history = read_wandb_history(run)
    grids = [h for h in history if "attribution/grid.filenames" in h]
    assert [g["trainer/global_step"] for g in grids] == [1, 3]  # the steps of the epochs' metrics
    grid = np.asarray(Image.open(run / "files" / grids[-1]["attribution/grid.filenames"][0]))
    assert grid.dtype == np.uint8 and grid.shape[1] > 7 * 32  # image + 6 method columns
    scalars = [h for h in history if "attribution/saliency/energy_in_mask" in h]
    assert len(scalars) == 2
    for method in DEFAULTS:
        for score in SCORES:
            assert all(f"attribution/{method}/{score}" in h for h in scalars), (method, score)
        assert f"attribution/{method}/stability" not in scalars[0]
        assert -1 <= scalars[1][f"attribution/{method}/stability"] <= 1


def test_logged_scores_are_the_scores_of_the_methods_maps(tmp_path):
    """The callback's numbers equal score_maps on maps computed directly with attribute()."""
    from xai_lightning.attribution import get_method
    from xai_lightning.evaluation import score_maps

    pl.seed_everything(0)
    callback = fast_callback(methods=["integrated_gradients", "gradcam", "occlusion"], num_probe=8)
    model = small_classifier(width=4)
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)), limit_train_batches=2)
    trainer.fit(model, small_datamodule())
    probe = callback.probe
    assert probe.object_masks is not None
    for name in callback.methods:
        method = get_method(name, seed=0, max_batch=256, **FAST.get(name, {}))
        maps = method.to_map(method.attribute(model, probe.images, probe.labels))
        expected = score_maps(maps, probe.object_masks)
        for key, value in expected.items():
            assert callback.history[0][f"attribution/{name}/{key}"] == pytest.approx(value, abs=1e-5, nan_ok=True)


def test_yaml_config_trains_and_logs(tmp_path, monkeypatch):
    from xai_lightning.cli import build_cli

    config = Path(__file__).resolve().parents[1] / "xai_lightning" / "configs" / "concept_world_attribution.yaml"
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.init_args.num_train=64",
            "--data.init_args.num_val=16",
            "--model.init_args.network.init_args.width=4",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            '--trainer.callbacks=[{"class_path": "xai_lightning.AttributionCallback", "init_args": {"methods": '
            '["saliency", "occlusion"], "num_probe": 4, '
            '"method_options": {"occlusion": {"window": 16, "stride": 16}}}}]',
        ]
    )
    cli.trainer.logger.experiment.finish()
    callback = cli.trainer.callbacks[0]
    assert isinstance(callback, AttributionCallback)
    assert callback.methods == ["saliency", "occlusion"] and callback.method_options["occlusion"]["window"] == 16
    history = read_wandb_history(wandb_run_dir(tmp_path))
    assert any("attribution/occlusion/pointing_game" in h for h in history)


class CountingClassifier(ImageClassifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


def expect_setup_error(tmp_path, callback, match, model=None):
    from xai_lightning import SmallCNN

    CountingClassifier.steps = 0
    model = model or CountingClassifier(SmallCNN(num_classes=5, width=4))
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(Exception, match=match) as error:
        trainer.fit(model, small_datamodule())
    assert CountingClassifier.steps == 0
    return error.value


def test_unknown_method_fails_at_construction_listing_the_available_ones():
    with pytest.raises(ValueError, match="Unknown attribution method 'integrated_gradient'") as error:
        AttributionCallback(methods=["saliency", "integrated_gradient"])
    assert "Did you mean 'integrated_gradients'" in str(error.value)
    for name in available_methods():
        assert name in str(error.value)
    with pytest.raises(ValueError, match="not among methods"):
        AttributionCallback(methods=["saliency"], method_options={"occlusion": {"window": 4}})


def test_unknown_method_option_fails_at_setup_listing_valid_options(tmp_path):
    error = expect_setup_error(
        tmp_path,
        fast_callback(methods=["integrated_gradients"], method_options={"integrated_gradients": {"n_steps": 8}}),
        "integrated_gradients has no option 'n_steps'",
    )
    assert "steps" in str(error) and "baseline" in str(error)


def test_wrong_cam_layer_fails_at_setup(tmp_path):
    error = expect_setup_error(
        tmp_path, fast_callback(methods=["gradcam"], layer="network.features.99"), "Unknown layer"
    )
    assert isinstance(error, LayerNotFoundError) and "network.features.13" in str(error)


def test_target_out_of_range_fails_at_setup(tmp_path):
    expect_setup_error(tmp_path, fast_callback(methods=["saliency"], target=9), "out of range: the model has 5 classes")


def test_image_only_method_on_a_tabular_probe_fails_at_setup(tmp_path):
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    CountingClassifier.steps = 0
    callback = fast_callback(methods=["saliency", "gradcam"]).set_probe(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]))
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(ValueError, match=r"GradCAM explains images \(B, C, H, W\); got inputs of shape \(1, 6\)"):
        callback.setup(trainer, CountingClassifier(mlp, num_classes=5), "fit")


def test_constructor_validation():
    with pytest.raises(ValueError, match="at least one method"):
        AttributionCallback(methods=[])
    with pytest.raises(ValueError, match="once"):
        AttributionCallback(methods=["saliency", "Saliency"])
    with pytest.raises(ValueError, match="target"):
        AttributionCallback(target="biggest")


# ------------------------------------------------------------------ DDP
def _frozen_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def _logged(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    pl.seed_everything(0)
    model = ImageClassifier(_frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    callback = fast_callback(methods=["saliency", "smoothgrad", "gradcam", "occlusion"], num_probe=7, layer="network.3")
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=2,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        deterministic=False,
        limit_train_batches=2,
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=24))
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    figures = [{k: float(v) for k, v in row.items() if k.startswith("attribution/") and v} for row in rows]
    return [f for f in figures if f]


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_scores_as_one_process(tmp_path):
    single = _logged(tmp_path / "single", devices=1)
    double = _logged(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 2
    for one, two in zip(single, double):
        assert one.keys() == two.keys() and "attribution/smoothgrad/stability" in single[1]
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert len(list((tmp_path / "ddp").glob("**/attribution/grid/*.png"))) == 2
