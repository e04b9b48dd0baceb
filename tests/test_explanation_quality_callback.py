"""ExplanationQualityCallback end to end: bit-identical training with both evaluation callbacks, the logged keys
(read back from W&B) equal the metric functions, degenerate maps, setup errors, YAML, DDP."""

from __future__ import annotations

import csv
import math
from pathlib import Path

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
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning import (
    ExplanationQualityCallback,
    GradCAMCallback,
    ImageClassifier,
    SanityCheckCallback,
    SmallCNN,
)
from xai_lightning.attribution import get_method
from xai_lightning.evaluation import (
    DegenerateMapWarning,
    available_metrics,
    build_metric,
    uniform_energy_in_mask,
)

FAST_METRICS = {"deletion_auc": {"steps": 8}, "insertion_auc": {"steps": 8}, "faithfulness_correlation": {"draws": 8}}


def fast_quality(**kwargs) -> ExplanationQualityCallback:
    metrics = kwargs.setdefault("metrics", list(FAST_METRICS))
    kwargs.setdefault("metric_options", {k: v for k, v in FAST_METRICS.items() if k in metrics})
    kwargs.setdefault("num_probe", 6)
    return ExplanationQualityCallback(**kwargs)


def test_defaults_are_cheap_study_metrics():
    callback = ExplanationQualityCallback()
    assert callback.methods == ["saliency", "gradcam"] and callback.num_probe == 16
    assert {"deletion_auc", "insertion_auc", "faithfulness_correlation"} <= set(callback.metrics)


def test_training_with_both_evaluation_callbacks_gives_bit_identical_weights(tmp_path):
    """Dropout draws from the global RNG every step: any leak from random maps, subsets, noise or the
    randomised copies' re-initialisation would change the weights."""
    data = {"num_train": 96, "num_val": 32}
    reference = train_weights(tmp_path / "plain", [], epochs=2, dropout=0.5, **data)
    callbacks = [
        fast_quality(
            methods=["saliency", "smoothgrad"],
            metrics=list(available_metrics()),
            num_probe=4,
            method_options={"smoothgrad": {"n_samples": 3}},
            metric_options={
                "deletion_auc": {"steps": 4},
                "insertion_auc": {"steps": 4},
                "faithfulness_correlation": {"draws": 4},
                "infidelity": {"samples": 3},
                "max_sensitivity": {"samples": 2},
                "road_morf": {"fractions": [0.5]},
                "road_lerf": {"fractions": [0.5]},
            },
        ),
        SanityCheckCallback(methods=["saliency", "gradcam"], num_probe=3, similarities=["spearman_abs", "ssim"]),
    ]
    observed = train_weights(tmp_path / "observed", callbacks, epochs=2, dropout=0.5, **data)
    assert_bit_identical(reference, observed)
    assert all(len(callback.history) == 2 and not callback.failures for callback in callbacks)


def test_wandb_run_has_every_methods_metrics_and_the_random_reference(tmp_path):
    pl.seed_everything(0)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="quality-test")
    callback = fast_quality(methods=["saliency", "gradcam"], metrics=[*FAST_METRICS, "pointing_game"])
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[callback], logger=logger, default_root_dir=str(tmp_path), limit_train_batches=2
    )
    model = small_classifier(width=4)
    trainer.fit(model, small_datamodule())
    logger.experiment.finish()
    history = [h for h in read_wandb_history(wandb_run_dir(tmp_path)) if "quality/saliency/deletion_auc" in h]
    assert len(history) == 2
    for name in ("saliency", "gradcam", "random"):
        for metric in [*FAST_METRICS, "pointing_game"]:
            assert all(f"quality/{name}/{metric}" in h for h in history), (name, metric)
    # The logged numbers are the metric functions' means on the probe set (last epoch, same model).
    probe = callback.probe
    targets = probe.labels
    for name in ("saliency", "gradcam"):
        method = get_method(name, seed=0, max_batch=256)
        maps = method.to_map(method.attribute(model, probe.images, targets))
        for metric_name, options in FAST_METRICS.items():
            metric = (
                build_metric(metric_name, model, seed=0, **options)
                if metric_name == "faithfulness_correlation"
                else build_metric(metric_name, model, **options)
            )
            expected = float(metric.values(probe.images, maps, targets).mean())
            assert callback.history[-1][f"quality/{name}/{metric_name}"] == pytest.approx(expected, abs=1e-5)
    assert 0 <= history[-1]["quality/random/pointing_game"] <= 1


def test_all_zero_gradcam_maps_get_defined_values_and_one_warning_naming_method_and_layer(tmp_path):
    """A classifier with negative weights on non-negative features: every Grad-CAM map is ReLU(negative) = 0."""
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=4)
    with torch.no_grad():
        network.classifier.weight.copy_(-network.classifier.weight.abs() - 0.1)
    model = ImageClassifier(network, lr=0.0, weight_decay=0.0)
    quality = fast_quality(methods=["gradcam"], metrics=[*FAST_METRICS, "relevance_mass"])
    gradcam = GradCAMCallback(layers="auto", num_probe=6)
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[quality, gradcam], logger=CSVLogger(str(tmp_path)), limit_train_batches=1
    )
    with pytest.warns(UserWarning) as records:
        trainer.fit(model, small_datamodule())
    messages = [str(r.message) for r in records if "all zero" in str(r.message)]
    assert len([m for m in messages if "ExplanationQualityCallback" in m]) == 1
    assert len([m for m in messages if "GradCAMCallback" in m]) == 1
    assert any("'gradcam' (layer 'network.features')" in m for m in messages)
    assert any("Grad-CAM at layer 'network.features'" in m for m in messages)
    for record in quality.history:
        assert not any(math.isnan(value) for value in record.values())  # no NaN anywhere
        assert record["quality/gradcam/faithfulness_correlation"] == 0.0
    chance = float(uniform_energy_in_mask(gradcam.probe.object_masks).mean())
    for record in gradcam.history:
        assert record["gradcam/network.features/empty_maps"] == 1.0
        assert record["gradcam/network.features/energy_in_mask"] == pytest.approx(chance)
        assert record["gradcam/network.features/pointing_game"] == pytest.approx(chance)
    assert issubclass(DegenerateMapWarning, UserWarning)


def test_history_survives_a_checkpoint_resume(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    first = fast_quality(methods=["saliency"], metrics=["deletion_auc"], num_probe=3)
    sanity = SanityCheckCallback(
        methods=["saliency"], similarities=["spearman_abs"], num_probe=2, layers=["network.classifier"]
    )
    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[first, sanity, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        logger=CSVLogger(str(tmp_path)),
        limit_train_batches=1,
    )
    trainer.fit(small_classifier(width=4), small_datamodule(num_train=32, num_val=8))
    resumed = fast_quality(methods=["saliency"], metrics=["deletion_auc"], num_probe=3)
    resumed_sanity = SanityCheckCallback(
        methods=["saliency"], similarities=["spearman_abs"], num_probe=2, layers=["network.classifier"]
    )
    trainer = quiet_trainer(
        max_epochs=2,
        callbacks=[resumed, resumed_sanity],
        logger=CSVLogger(str(tmp_path)),
        limit_train_batches=1,
        enable_checkpointing=False,
    )
    trainer.fit(
        small_classifier(width=4),
        small_datamodule(num_train=32, num_val=8),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0]
    assert [h["epoch"] for h in resumed_sanity.history] == [0.0, 1.0]


class CountingClassifier(ImageClassifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


def test_a_mask_metric_on_data_without_masks_fails_at_setup(tmp_path):
    CountingClassifier.steps = 0
    callback = fast_quality(metrics=["deletion_auc", "pointing_game"], metric_options={})
    callback.set_probe(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(ValueError, match=r"metric\(s\) \['pointing_game'\] need ground-truth object masks"):
        trainer.fit(CountingClassifier(SmallCNN(num_classes=5, width=4)), small_datamodule())
    assert CountingClassifier.steps == 0


def test_wrong_layer_fails_at_setup_and_bad_arguments_at_construction(tmp_path):
    CountingClassifier.steps = 0
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[fast_quality(methods=["gradcam"], layer="network.nope")],
        logger=CSVLogger(str(tmp_path)),
    )
    with pytest.raises(ValueError, match="Unknown layer 'network.nope'"):
        trainer.fit(CountingClassifier(SmallCNN(num_classes=5, width=4)), small_datamodule())
    assert CountingClassifier.steps == 0
    with pytest.raises(ValueError, match="Unknown explanation metric 'deletion'"):
        ExplanationQualityCallback(metrics=["deletion"])
    with pytest.raises(ValueError, match=r"deletion_auc has no option\(s\) \['step'\]; valid options: steps"):
        ExplanationQualityCallback(metrics=["deletion_auc"], metric_options={"deletion_auc": {"step": 3}})
    with pytest.raises(ValueError, match="not among metrics"):
        ExplanationQualityCallback(metrics=["deletion_auc"], metric_options={"infidelity": {}})
    with pytest.raises(ValueError, match="Unknown attribution method"):
        ExplanationQualityCallback(methods=["salency"])
    with pytest.raises(ValueError, match="random_maps"):
        ExplanationQualityCallback(random_maps=0)


def test_yaml_config_with_both_callbacks(tmp_path, monkeypatch):
    from xai_lightning.cli import build_cli

    config = Path(__file__).resolve().parents[1] / "xai_lightning" / "configs" / "concept_world_attribution.yaml"
    monkeypatch.chdir(tmp_path)
    callbacks = (
        '[{"class_path": "xai_lightning.ExplanationQualityCallback", "init_args": {"methods": ["saliency"], '
        '"metrics": ["deletion_auc", "road_morf"], "num_probe": 3, "metric_options": {"deletion_auc": {"steps": 4}, '
        '"road_morf": {"fractions": [0.5]}}}}, {"class_path": "xai_lightning.SanityCheckCallback", "init_args": '
        '{"methods": ["saliency"], "similarities": ["spearman_abs"], "num_probe": 2, "at_epochs": [0]}}]'
    )
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--data.init_args.num_train=32",
            "--data.init_args.num_val=8",
            "--model.init_args.network.init_args.width=4",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks={callbacks}",
        ]
    )
    cli.trainer.logger.experiment.finish()
    quality, sanity = cli.trainer.callbacks[:2]
    assert isinstance(quality, ExplanationQualityCallback) and isinstance(sanity, SanityCheckCallback)
    assert quality.metric_options["road_morf"] == {"fractions": [0.5]} and sanity.at_epochs == [0]
    history = read_wandb_history(wandb_run_dir(tmp_path))
    assert any("quality/random/road_morf" in h for h in history)
    assert any("sanity/saliency/cascading/spearman_abs/mean" in h for h in history)


# ------------------------------------------------------------------ DDP
def _frozen_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )


def _logged(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    pl.seed_everything(0)
    model = ImageClassifier(_frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    callbacks = [
        fast_quality(
            methods=["saliency", "gradcam"],
            metrics=[*FAST_METRICS, "relevance_mass", "road_lerf"],
            num_probe=7,
            layer="network.3",
            metric_options={**FAST_METRICS, "road_lerf": {"fractions": [0.3]}},
        ),
        SanityCheckCallback(methods=["saliency"], num_probe=5, similarities=["spearman_abs", "hog_pearson"]),
    ]
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=1,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        deterministic=False,
        limit_train_batches=2,
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=24))
    rows = list(csv.DictReader((tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()))
    figures = [{k: float(v) for k, v in row.items() if k.split("/")[0] in ("quality", "sanity") and v} for row in rows]
    return [f for f in figures if f]


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_figures_as_one_process(tmp_path):
    single = _logged(tmp_path / "single", devices=1)
    double = _logged(tmp_path / "ddp", devices=2)
    merged_single = {k: v for record in single for k, v in record.items()}
    merged_double = {k: v for record in double for k, v in record.items()}
    assert merged_single.keys() == merged_double.keys()
    assert "quality/random/road_lerf" in merged_single and "sanity/saliency/cascading/hog_pearson/mean" in merged_single
    for key, value in merged_single.items():
        assert merged_double[key] == pytest.approx(value, abs=1e-5), key
