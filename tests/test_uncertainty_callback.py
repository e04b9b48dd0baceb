"""UncertaintyCallback end to end: bit-identical training, what it logs (read back), values against a direct
computation, checkpoint resume, DDP, and bad input failing at setup before the first training step."""

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
    small_datamodule,
    train_weights,
    wandb_run_dir,
)
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xai_lightning import (
    EnsembleClassifier,
    ImageClassifier,
    LayerNotFoundError,
    SmallCNN,
    UncertaintyCallback,
    VariationalClassifier,
)
from xai_lightning.logging import display_images, to_uint8_hwc
from xai_lightning.uncertainty import (
    bayesian_logits,
    calibration_report,
    fit_temperature,
    mc_dropout_logits,
    mutual_information,
    ood_auroc,
    ood_detection,
    predictive_std,
)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    return train_weights(tmp_path_factory.mktemp("plain"), [], dropout=0.3)


def test_training_with_the_callback_is_bit_identical(tmp_path, reference_weights):
    # Dropout makes every step draw from the global RNG: MC-dropout passes, the OOD render and the
    # familiarity autoencoder's training must leave that stream, the modes and BN statistics alone.
    callback = UncertaintyCallback(num_probe=16, mc_passes=4, familiarity="input")
    observed = train_weights(tmp_path, [callback], dropout=0.3)
    assert_bit_identical(reference_weights, observed)
    assert not callback.failures and len(callback.history) == 3
    assert callback.active_scores == ["max_softmax", "entropy", "mc_dropout_mi", "reconstruction_error"]
    assert callback.familiarity_steps == 3 * 8  # one step per training batch


def test_training_with_feature_familiarity_every_second_epoch_is_bit_identical(tmp_path, reference_weights):
    callback = UncertaintyCallback(
        num_probe=8, num_ood=6, mc_passes=3, familiarity="network.features.13", every_n_epochs=2, max_batch=5
    )
    observed = train_weights(tmp_path, [callback], dropout=0.3)
    assert_bit_identical(reference_weights, observed)
    assert not callback.failures and [h["epoch"] for h in callback.history] == [1.0, 2.0]
    assert callback.autoencoder.shape == (16, 16, 16)


def fit(tmp_path, callback, model=None, epochs=2, logger=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = model or dropout_classifier()
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=logger or CSVLogger(str(tmp_path)),
        default_root_dir=str(tmp_path),
        **trainer_kwargs,
    )
    trainer.fit(model, small_datamodule())
    return trainer, model


def dropout_classifier(width: int = 4) -> ImageClassifier:
    return ImageClassifier(SmallCNN(num_classes=5, width=width, dropout=0.3))


def test_logged_values_match_a_direct_computation_and_files_are_written(tmp_path):
    callback = UncertaintyCallback(num_probe=24, num_ood=20, mc_passes=6, max_images=5)
    trainer, model = fit(tmp_path, callback, epochs=1)
    last = callback.history[-1]
    probe, ood = callback.probe, callback.ood_probe
    assert ood is not None and ood.images.shape == (20, 3, 32, 32) and callback.ood_labels_meaningful
    model.eval()
    with torch.no_grad():
        logits, ood_logits = model(probe.images), model(ood.images)
    report = calibration_report(logits.softmax(-1), probe.labels)
    for key in ("ece", "mce", "nll", "brier", "accuracy", "confidence"):
        assert last[f"uncertainty/calibration/{key}"] == pytest.approx(getattr(report, key), abs=1e-5), key
    assert last["uncertainty/temperature"] == pytest.approx(fit_temperature(logits, probe.labels).temperature, rel=1e-4)
    baseline = ood_detection(1 - logits.softmax(-1).max(1).values, 1 - ood_logits.softmax(-1).max(1).values)
    assert last["uncertainty/ood/max_softmax/auroc"] == pytest.approx(baseline.auroc, abs=1e-6)
    assert last["uncertainty/ood/max_softmax/fpr95"] == pytest.approx(baseline.fpr95, abs=1e-6)
    # MC dropout with the callback's keys (dataset indices; the OOD probe's offset by 2**30) and seed.
    samples_in = mc_dropout_logits(model, probe.images, passes=6, seed=0, keys=probe.indices).softmax(-1)
    samples_out = mc_dropout_logits(model, ood.images, passes=6, seed=0, keys=ood.indices + (1 << 30)).softmax(-1)
    expected = ood_auroc(mutual_information(samples_in), mutual_information(samples_out))
    assert last["uncertainty/ood/mc_dropout_mi/auroc"] == pytest.approx(expected, abs=1e-6)
    assert last["uncertainty/ood/accuracy"] == pytest.approx(float((ood_logits.argmax(1) == ood.labels).float().mean()))
    root = Path(trainer.logger.log_dir)
    with open(root / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("uncertainty/ood/entropy/auroc")]
    assert len(rows) == 1 and float(rows[0]["uncertainty/scaled/ece"]) == pytest.approx(last["uncertainty/scaled/ece"])
    for key in ("reliability", "most_certain", "least_certain"):
        pngs = sorted((root / "xai" / "uncertainty" / key).glob("*.png"))
        assert [p.name for p in pngs] == ["step_00000007.png"], key  # the step of the epoch's val metrics
        assert np.asarray(Image.open(pngs[0])).shape[0] > 100
    captions = (root / "xai" / "uncertainty" / "least_certain" / "captions.csv").read_text()
    assert "entropy" in captions


def test_wandb_history_has_the_scores_every_epoch_and_the_images(tmp_path, wandb_dir):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="uncertainty-test")
    fit(tmp_path, UncertaintyCallback(num_probe=16, mc_passes=3), logger=logger, epochs=2)
    logger.experiment.finish()
    history = read_wandb_history(wandb_run_dir(tmp_path))
    scalars = [h for h in history if "uncertainty/ood/mc_dropout_mi/auroc" in h]
    assert [h["trainer/global_step"] for h in scalars] == [7, 15]  # the steps of the epochs' metrics
    for record in scalars:
        assert 0 <= record["uncertainty/ood/entropy/auroc"] <= 1 and record["uncertainty/temperature"] > 0
        assert 0 <= record["uncertainty/calibration_mc_dropout/ece"] <= 1
    for key in ("uncertainty/reliability", "uncertainty/most_certain", "uncertainty/least_certain"):
        assert len([h for h in history if f"{key}.filenames" in h]) == 2, key


def test_familiarity_autoencoder_and_history_survive_a_checkpoint_resume(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = UncertaintyCallback(num_probe=8, mc_passes=3, familiarity="input")
    pl.seed_everything(0)
    trainer = quiet_trainer(max_epochs=2, callbacks=[first, checkpoint], logger=CSVLogger(str(tmp_path)))
    trainer.fit(dropout_classifier(), small_datamodule())
    saved = {key: value.clone() for key, value in first.autoencoder.state_dict().items()}
    resumed = UncertaintyCallback(num_probe=8, mc_passes=3, familiarity="input")
    trainer = quiet_trainer(
        max_epochs=3, callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], logger=CSVLogger(str(tmp_path))
    )
    observed = {}

    class Peek(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            observed.update({key: value.clone() for key, value in resumed.autoencoder.state_dict().items()})
            observed["steps"] = resumed.familiarity_steps

    trainer.callbacks.append(Peek())
    trainer.fit(dropout_classifier(), small_datamodule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert observed.pop("steps") == 16
    assert_bit_identical(saved, observed)
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0] and resumed.history[:2] == first.history
    assert resumed.familiarity_steps == 24


def test_trainer_validate_and_a_given_ood_probe(tmp_path):
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # uniform noise as OOD
    callback = UncertaintyCallback(num_probe=16, scores=["max_softmax", "entropy"], ood=None).set_ood_probe(images)
    trainer = quiet_trainer(callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    trainer.validate(dropout_classifier(), small_datamodule())
    assert len(callback.history) == 1 and "uncertainty/ood/entropy/auroc" in callback.history[0]
    assert "uncertainty/ood/accuracy" not in callback.history[0]  # no labels given for the OOD images
    calibration_only = UncertaintyCallback(num_probe=16, ood=None, scores=["entropy"], rank_by="entropy")
    trainer = quiet_trainer(callbacks=[calibration_only], logger=CSVLogger(str(tmp_path)))
    trainer.validate(dropout_classifier(), small_datamodule())
    assert "uncertainty/calibration/ece" in calibration_only.history[0]
    assert not any("/ood/" in key for key in calibration_only.history[0])


def test_ensemble_model_reports_disagreement(tmp_path):
    pl.seed_everything(0)
    model = EnsembleClassifier(SmallCNN(num_classes=5, width=4), num_members=3)
    callback = UncertaintyCallback(num_probe=16)
    fit(tmp_path, callback, model=model, epochs=1)
    assert callback.active_scores == ["max_softmax", "entropy", "ensemble_disagreement"]
    model.eval()
    with torch.no_grad():
        members_in = model.member_logits(callback.probe.images).softmax(-1)
        members_out = model.member_logits(callback.ood_probe.images).softmax(-1)
    expected = ood_auroc(mutual_information(members_in), mutual_information(members_out))
    assert callback.history[-1]["uncertainty/ood/ensemble_disagreement/auroc"] == pytest.approx(expected, abs=1e-6)


def test_bayesian_std_and_the_most_and_least_certain_images_match_a_direct_computation(tmp_path, monkeypatch):
    """A VariationalClassifier provides bayesian_std (its AUROC and the predictive mean's calibration equal a
    direct computation with the callback's keyed weight noise), and the two image grids show exactly the
    pooled probes with the lowest and the highest score, in order, with the OOD rows tagged."""
    import importlib
    import re

    module = importlib.import_module("xai_lightning.callbacks.uncertainty")
    grids = []

    def spy(panels, row_captions=None, **kwargs):
        grids.append((panels, list(row_captions)))
        return real_grid(panels, row_captions=row_captions, **kwargs)

    real_grid = module.labelled_grid
    monkeypatch.setattr(module, "labelled_grid", spy)
    pl.seed_everything(0)
    model = VariationalClassifier(SmallCNN(num_classes=5, width=4))
    callback = UncertaintyCallback(num_probe=16, num_ood=12, bayesian_samples=6, max_images=4, rank_by="bayesian_std")
    fit(tmp_path, callback, model=model, epochs=1)
    assert callback.active_scores == ["max_softmax", "entropy", "bayesian_std"]
    last = callback.history[-1]
    probe, ood = callback.probe, callback.ood_probe
    model.eval()
    samples_in = bayesian_logits(model, probe.images, samples=6, seed=0, keys=probe.indices).softmax(-1)
    samples_out = bayesian_logits(model, ood.images, samples=6, seed=0, keys=ood.indices + (1 << 30)).softmax(-1)
    std_in, std_out = predictive_std(samples_in).mean(-1), predictive_std(samples_out).mean(-1)  # mean over classes
    assert last["uncertainty/ood/bayesian_std/auroc"] == pytest.approx(ood_auroc(std_in, std_out), abs=1e-6)
    report = calibration_report(samples_in.mean(0), probe.labels)
    assert last["uncertainty/calibration_bayesian/ece"] == pytest.approx(report.ece, abs=1e-5)
    assert last["uncertainty/calibration_bayesian/nll"] == pytest.approx(report.nll, abs=1e-5)
    # The grids: pooled scores (in-distribution first, then OOD), lowest first / highest first.
    pooled = torch.cat([std_in, std_out])
    tags = ["in"] * len(probe) + ["ood"] * len(ood)
    images = torch.cat([probe.images, ood.images])
    (most_panels, most_captions), (least_panels, least_captions) = grids
    order = torch.argsort(pooled)
    for panels, captions, rows in (
        (most_panels, most_captions, order[:4]),
        (least_panels, least_captions, order.flip(0)[:4]),
    ):
        shown = [float(re.search(r"bayesian_std=([0-9.]+)", caption).group(1)) for caption in captions]
        assert shown == pytest.approx([float(pooled[row]) for row in rows], abs=6e-4)
        assert [caption.split()[0] for caption in captions] == [f"[{tags[row]}]" for row in rows]
        assert np.array_equal(panels, to_uint8_hwc(display_images(images[rows]).unsqueeze(1)))


# ---------------------------------------------------------------------------------------------- bad input
class Counting(ImageClassifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        Counting.steps += 1
        return super().training_step(batch, batch_idx)


def counting(dropout: float = 0.3) -> Counting:
    Counting.steps = 0
    return Counting(SmallCNN(num_classes=5, width=4, dropout=dropout))


def expect_setup_error(tmp_path, callback, match, model=None, datamodule=None, fit_kwargs=None):
    model = model or counting()
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(Exception, match=match) as error:
        trainer.fit(model, datamodule=datamodule, **(fit_kwargs or {}))
    assert Counting.steps == 0
    return error.value


def test_ood_probe_of_another_image_shape_fails_at_setup(tmp_path):
    callback = UncertaintyCallback(num_probe=8).set_ood_probe(torch.rand(6, 3, 16, 16))
    expect_setup_error(
        tmp_path,
        callback,
        r"OOD probe's images are \(3, 16, 16\).*\(3, 32, 32\).*same shape",
        datamodule=small_datamodule(),
    )


@pytest.mark.parametrize(
    "scores,dropout,match",
    [
        (["mc_dropout_mi"], 0.0, r"mc_dropout_mi: .*all have p=0.*SmallCNN\(dropout=0.2\)"),
        (["ensemble_disagreement"], 0.3, "EnsembleClassifier"),
        (["bayesian_std"], 0.3, "VariationalClassifier"),
        (["entropy", "reconstruction_error"], 0.3, "familiarity='input'"),
    ],
)
def test_a_score_the_model_cannot_provide_fails_at_setup_naming_the_fix(tmp_path, scores, dropout, match):
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8, scores=scores, rank_by=scores[0]),
        match,
        model=counting(dropout),
        datamodule=small_datamodule(),
    )


def test_mc_dropout_on_a_model_without_dropout_layers_fails_at_setup(tmp_path):
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    Counting.steps = 0
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8, scores=["mc_dropout_mi"], rank_by="mc_dropout_mi"),
        r"no dropout layer.*Add dropout",
        model=Counting(network, num_classes=5),
        datamodule=small_datamodule(),
    )


class OneMember(ImageClassifier):
    """A module claiming to be an ensemble with K = 1."""

    steps = 0

    def member_logits(self, x):
        return self(x).unsqueeze(0)

    def training_step(self, batch, batch_idx):
        Counting.steps += 1
        return super().training_step(batch, batch_idx)


def test_fewer_than_two_members_or_passes_fail_early(tmp_path):
    with pytest.raises(ValueError, match="num_members.*>= 2"):
        EnsembleClassifier(SmallCNN(width=4), num_members=1)
    with pytest.raises(ValueError, match="mc_passes.*>= 2"):
        UncertaintyCallback(mc_passes=1)
    with pytest.raises(ValueError, match="bayesian_samples"):
        UncertaintyCallback(bayesian_samples=1)
    Counting.steps = 0
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8),
        r"K >= 2 members.*num_members >= 2",
        model=OneMember(SmallCNN(num_classes=5, width=4)),
        datamodule=small_datamodule(),
    )


def test_other_bad_configurations_fail_at_setup_or_construction(tmp_path):
    with pytest.raises(ValueError, match="Unknown uncertainty score"):
        UncertaintyCallback(scores=["confidence"])
    with pytest.raises(ValueError, match="ood must be"):
        UncertaintyCallback(ood="size")
    data = small_datamodule()
    data.setup("fit")
    images, labels = data.train_set.tensors()
    loader = DataLoader(TensorDataset(images, labels), batch_size=32)
    # Not ConceptWorld data: ood='colour' cannot render shifted images.
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8),
        r"no ConceptWorld.*set_ood_probe",
        fit_kwargs={"train_dataloaders": loader, "val_dataloaders": loader},
    )
    unlabelled = DataLoader(TensorDataset(images), batch_size=32)
    callback = UncertaintyCallback(num_probe=8, ood=None)
    expect_setup_error(
        tmp_path,
        callback,
        "needs labelled probe images",
        fit_kwargs={"train_dataloaders": loader, "val_dataloaders": unlabelled},
    )
    error = expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8, familiarity="network.features.99"),
        "Unknown layer",
        datamodule=small_datamodule(),
    )
    assert isinstance(error, LayerNotFoundError)
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8, rank_by="bayesian_std"),
        "rank_by='bayesian_std' is not among the scores",
        datamodule=small_datamodule(),
    )


def test_yaml_config_trains_an_ensemble_with_the_callback(tmp_path, monkeypatch):
    from xai_lightning.cli import build_cli

    config = Path(__file__).resolve().parents[1] / "xai_lightning" / "configs" / "concept_world_uncertainty.yaml"
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.init_args.num_train=128",
            "--data.init_args.num_val=32",
            "--model.init_args.num_members=2",
            '--trainer.logger={"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}',
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, UncertaintyCallback)]
    assert callback.ood == "colour" and callback.familiarity == "input" and callback.num_probe == 256
    assert callback.active_scores == ["max_softmax", "entropy", "ensemble_disagreement", "reconstruction_error"]
    assert len(callback.history) == 1 and "uncertainty/ood/ensemble_disagreement/auroc" in callback.history[0]


class UnusedDropout(nn.Module):
    """Registers a dropout module but never calls it (as when dropout is applied functionally)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = SmallCNN(num_classes=5, width=4)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.body(x)


def test_dropout_layers_that_never_run_are_left_out_of_auto_and_fail_when_requested(tmp_path):
    callback = UncertaintyCallback(num_probe=8, mc_passes=3)
    with pytest.warns(UserWarning, match="leaves out mc_dropout_mi.*none of them ran"):
        fit(tmp_path, callback, model=ImageClassifier(UnusedDropout(), num_classes=5), epochs=1)
    assert callback.active_scores == ["max_softmax", "entropy"]
    Counting.steps = 0
    expect_setup_error(
        tmp_path,
        UncertaintyCallback(num_probe=8, scores=["mc_dropout_mi"], rank_by="mc_dropout_mi"),
        "none of them ran",
        model=Counting(UnusedDropout(), num_classes=5),
        datamodule=small_datamodule(),
    )
