"""The callbacks behave like Lightning's own: monitorable metrics on the epoch's step, every precision,
mid-epoch validation, compiled models, nothing left on the model after an interrupted fit.

Parametrised over ``callback_cases.CALLBACK_FACTORIES`` (one list for every callback): monitorable
metrics, every precision, one W&B row per observation with the settings in ``run.config``,
bit-identical weights, nothing left on the model after an interrupted fit.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from callback_cases import CALLBACK_FACTORIES, CallbackCase
from conftest import (
    assert_bit_identical,
    quiet_trainer,
    read_wandb_config,
    read_wandb_history,
    small_classifier,
    small_datamodule,
    wandb_run_dir,
)
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning import GradCAMCallback
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet

CASES = [pytest.param(case, id=case.name) for case in CALLBACK_FACTORIES]
TINY_DATA = dict(num_train=64, num_val=32, batch_size=16)  # 4 training steps an epoch


def tiny_fit(tmp_path, callbacks, epochs=1, logger=None, datamodule=None, model=None, **trainer_kwargs):
    pl.seed_everything(0)
    trainer_kwargs.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        logger=logger if logger is not None else CSVLogger(str(tmp_path)),
        **trainer_kwargs,
    )
    model = model if model is not None else small_classifier(width=4)
    trainer.fit(model, datamodule or small_datamodule(**TINY_DATA))
    return trainer, model


class Scripted(ObserverCallback):
    """Logs ``scripted/value`` = ``values[i]`` at its i-th observation: a metric whose course is known."""

    namespace = "scripted"

    def __init__(self, values: list[float], num_probe: int = 2) -> None:
        super().__init__(num_probe=num_probe)
        self.values = values

    def explain(self, trainer, pl_module, probe: ProbeSet) -> dict[str, torch.Tensor]:
        return {"rows": torch.zeros(len(probe))}

    def report(self, trainer, pl_module, probe, results) -> dict[str, float]:
        return {"scripted/value": self.values[len(self.history)]}


def fit_case(tmp_path, case: CallbackCase, callbacks, epochs=1, logger=None, model=None, **trainer_kwargs):
    """``tiny_fit`` with the model and the small data ``case`` needs (ConceptWorld unless it says)."""
    pl.seed_everything(0)
    model = model if model is not None else case.build_model()
    datamodule = case.build_data(**TINY_DATA)
    return tiny_fit(tmp_path, callbacks, epochs, logger=logger, datamodule=datamodule, model=model, **trainer_kwargs)


def test_every_callback_is_a_case():
    import xai_lightning.callbacks as package

    exported = {
        name
        for name in package.__all__
        if isinstance(getattr(package, name), type)
        and issubclass(getattr(package, name), pl.Callback)
        and name not in ("ObserverCallback", "EpochMetrics")  # the base; a recorder that logs nothing
    }
    covered = {type(case.make()).__name__ for case in CALLBACK_FACTORIES}
    assert exported - covered == set(), "add these callbacks to tests/callback_cases.py"


# ---------------------------------------------------------------------------------------------- monitoring
def test_early_stopping_and_checkpointing_follow_a_callback_metric(tmp_path):
    values = [0.5, 0.7, 0.65, 0.6, 0.9, 0.95]  # best at epoch 1; two epochs without improvement
    stop = EarlyStopping(monitor="scripted/value", mode="max", patience=2)
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="scripted/value", mode="max", save_top_k=1, filename="{epoch}"
    )
    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=len(values),
        callbacks=[Scripted(values), stop, best],
        logger=CSVLogger(str(tmp_path)),
        default_root_dir=str(tmp_path),
    )
    trainer.fit(small_classifier(width=4), small_datamodule(**TINY_DATA))
    assert trainer.current_epoch == 4 and stop.stopped_epoch == 3  # stopped after epochs 2 and 3 did not improve
    assert Path(best.best_model_path).name == "epoch=1.ckpt"
    assert float(best.best_model_score) == pytest.approx(0.7)
    assert float(trainer.callback_metrics["scripted/value"]) == pytest.approx(0.6)
    assert "scripted/value" in trainer.logged_metrics


def test_early_stopping_on_a_real_grad_cam_score_stops_where_its_history_says(tmp_path):
    key = "gradcam/network.features.13/empty_maps"  # defined for every map (no NaN), drifts as the model trains
    callback = GradCAMCallback(layers="network.features.13", num_probe=8)
    stop = EarlyStopping(monitor=key, mode="min", patience=1, min_delta=0.0)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode="min", save_top_k=1, filename="{epoch}")
    trainer, _ = tiny_fit(tmp_path, [callback, stop, best], epochs=8, enable_checkpointing=True)
    values = [record[key] for record in callback.history]
    # What EarlyStopping must have done, replayed from the logged history.
    best_value, waited, expected_stop = math.inf, 0, None
    for epoch, value in enumerate(values):
        if value < best_value:
            best_value, waited = value, 0
        else:
            waited += 1
            if waited >= 1:
                expected_stop = epoch
                break
    assert len(values) == (expected_stop + 1 if expected_stop is not None else 8)
    assert stop.stopped_epoch == (expected_stop or 0)
    assert float(best.best_model_score) == pytest.approx(min(values))
    assert Path(best.best_model_path).name == f"epoch={values.index(min(values))}.ckpt"


@pytest.mark.parametrize("case", CASES)
def test_every_logged_scalar_is_a_callback_metric(tmp_path, case: CallbackCase):
    callback = case.make()
    logger = CSVLogger(str(tmp_path))
    trainer, _ = fit_case(tmp_path, case, [callback], logger=logger)
    metrics = {key for key in trainer.callback_metrics if key.startswith(case.namespace + "/")}
    assert metrics, f"{case.name} logged nothing through Lightning"
    assert metrics <= set(trainer.logged_metrics)
    if case.observes:
        assert metrics == {key for key in callback.history[-1] if key not in ("epoch", "step")}
    # The CSV rows holding them: the epoch's last step (4 training steps), with the epoch.
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    ours = [row for row in rows if any(row.get(key) for key in metrics)]
    assert [(int(row["step"]), int(row["epoch"])) for row in ours] == [(3, 0)]
    if case.observes:  # the very row of the epoch's validation metrics
        assert ours[0]["val/acc"] != "" and all(ours[0][key] != "" for key in metrics)


# ---------------------------------------------------------------------------------------------- steps and rows
def test_csv_rows_share_the_validation_step_and_carry_the_epoch(tmp_path):
    logger = CSVLogger(str(tmp_path))
    callback = GradCAMCallback(layers="network.features.13", num_probe=8)
    tiny_fit(tmp_path, [callback], epochs=2, logger=logger)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    ours = [r for r in rows if r.get("gradcam/network.features.13/empty_maps")]
    assert [(int(r["step"]), int(r["epoch"])) for r in ours] == [(3, 0), (7, 1)]
    for row in ours:  # the very row of the epoch's validation metrics
        assert row["val/acc"] != ""
    pngs = sorted(p.name for p in (Path(logger.log_dir) / "xai" / "gradcam" / "grid").glob("*.png"))
    assert pngs == ["step_00000003.png", "step_00000007.png"]
    assert [r["step"] for r in callback.history] == [3.0, 7.0]
    hparams = yaml.safe_load(open(Path(logger.log_dir) / "hparams.yaml"))
    assert hparams["gradcam"]["layers"] == "network.features.13" and hparams["gradcam"]["num_probe"] == 8


def test_wandb_has_one_row_per_observation_with_the_epoch_and_the_settings(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="integration")
    callback = GradCAMCallback(layers="network.features.13", num_probe=8, max_images=3, normalise="per_epoch")
    tiny_fit(tmp_path, [callback], epochs=2, logger=logger)
    logger.experiment.finish()
    run = wandb_run_dir(tmp_path)
    history = read_wandb_history(run)
    ours = [h for h in history if any(key.startswith("gradcam/") for key in h)]
    assert len(ours) == 2  # one row per observation: scalars, grid and table together
    for epoch, row in enumerate(ours):
        assert row["trainer/global_step"] == 4 * epoch + 3 and row["epoch"] == epoch
        assert "val/acc" in row and "gradcam/network.features.13/empty_maps" in row
        assert "gradcam/grid.filenames" in row
        assert row["gradcam/probes._type"] == "table-file" and row["gradcam/probes.nrows"] == 3
    settings = read_wandb_config(run)["gradcam"]
    assert settings["class"] == "GradCAMCallback" and settings["normalise"] == "per_epoch"
    assert settings["num_probe"] == 8 and settings["layers"] == "network.features.13"


@pytest.mark.parametrize("case", CASES)
def test_every_callback_writes_one_wandb_row_per_observation_and_its_settings(tmp_path, case: CallbackCase):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="integration")
    callback = case.make()
    fit_case(tmp_path, case, [callback], epochs=2, logger=logger)
    logger.experiment.finish()
    run = wandb_run_dir(tmp_path)
    prefix = case.namespace + "/"
    ours = [row for row in read_wandb_history(run) if any(key.startswith(prefix) for key in row)]
    if case.observes:
        # Scalars, images, tables and figures of one observation share one row, on the epoch's
        # validation step (4 training steps an epoch) and with the epoch.
        assert [(row["trainer/global_step"], row["epoch"]) for row in ours] == [(3, 0), (7, 1)]
        assert [(record["step"], record["epoch"]) for record in callback.history] == [(3, 0), (7, 1)]
        for row, record in zip(ours, callback.history):
            assert "val/acc" in row
            scalars = {key for key in record if key not in ("epoch", "step")}
            assert scalars <= set(row), f"scalars missing from the row: {scalars - set(row)}"
            if case.probe_table:  # a fresh wandb.Table per observation, one row per shown probe
                shown = min(callback.max_images, callback.num_probe)
                assert row[f"{prefix}probes._type"] == "table-file" and row[f"{prefix}probes.nrows"] == shown
    else:  # logged by Lightning from the training step (on_epoch): one row per epoch
        assert [row["epoch"] for row in ours] == [0, 1]
    settings = read_wandb_config(run)[case.namespace]
    assert settings == {"class": type(callback).__name__, **callback.settings()}


# ---------------------------------------------------------------------------------------------- precision
PRECISIONS = ["16-mixed", "bf16-mixed", "bf16-true", "64-true"]  # on a CPU Lightning runs 16-mixed as bf16-mixed


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_precision_runs_an_epoch_and_logs_finite_values(tmp_path, case: CallbackCase, precision: str):
    callback = case.make()
    if case.observes:
        callback.on_error = "raise"  # a failure must fail the test, not become a warning
    trainer, _ = fit_case(tmp_path, case, [callback], precision=precision, limit_train_batches=2)
    logged = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith(case.namespace)}
    assert logged
    bad = {
        key: value
        for key, value in logged.items()
        if not math.isfinite(value) and not any(part in key for part in case.may_be_nan)
    }
    assert not bad, f"non-finite values under {precision}: {bad}"
    assert sum(math.isfinite(value) for value in logged.values()) >= 1
    assert torch.get_default_dtype() == torch.float32


# ---------------------------------------------------------------------------------------------- not disturbing
class RandomStreams(pl.Callback):
    """Draws from every global generator when training ends: equal draws = an untouched training stream."""

    def on_train_end(self, trainer, pl_module):
        self.draws = (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)])


def train_with_dropout(tmp_path, case: CallbackCase, callbacks: list) -> tuple[dict[str, torch.Tensor], tuple]:
    """Two epochs of the case's model with every dropout at p = 0.3: each training step draws from the
    global RNG, so an explanation that leaked a random draw would change the weights."""
    pl.seed_everything(0)
    model = case.build_model()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.3
    streams = RandomStreams()
    fit_case(tmp_path, case, [*callbacks, streams], epochs=2, model=model)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}, streams.draws


#: Reference runs without callbacks, shared by the cases with the same model and data.
_PLAIN_RUNS: dict[tuple, tuple] = {}


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].observes])  # adversarial training changes it
def test_every_observing_callback_leaves_weights_and_random_streams_bit_identical(tmp_path, case: CallbackCase):
    key = (case.model, case.data, tuple(sorted(case.datamodule.items())))
    if key not in _PLAIN_RUNS:
        _PLAIN_RUNS[key] = train_with_dropout(tmp_path / "plain", case, [])
    plain_weights, plain_draws = _PLAIN_RUNS[key]
    callback = case.make()
    callback.on_error = "raise"  # a failed observation would disturb nothing and prove nothing
    weights, draws = train_with_dropout(tmp_path / "observed", case, [callback])
    assert len(callback.history) == 2
    assert_bit_identical(plain_weights, weights)
    assert draws == plain_draws


# ---------------------------------------------------------------------------------------------- schedule
def observed_steps(callback):
    return [(int(r["epoch"]), int(r["step"])) for r in callback.history]


def test_mid_epoch_validation_is_observed_each_time(tmp_path):
    callback = GradCAMCallback(layers="network.features.13", num_probe=4)
    tiny_fit(tmp_path, [callback], epochs=2, val_check_interval=0.5)
    assert observed_steps(callback) == [(0, 1), (0, 3), (1, 5), (1, 7)]


def test_epochs_without_validation_and_the_final_weights_are_observed(tmp_path):
    callback = GradCAMCallback(layers="network.features.13", num_probe=4)
    tiny_fit(tmp_path, [callback], epochs=3, check_val_every_n_epoch=2)
    # epoch 0: no validation (observed at the end of training), 1: validation, 2: the last epoch
    assert observed_steps(callback) == [(0, 3), (1, 7), (2, 11)]


def test_final_weights_are_observed_when_the_last_validation_came_earlier(tmp_path):
    callback = GradCAMCallback(layers="network.features.13", num_probe=4)
    trainer, _ = tiny_fit(tmp_path, [callback], epochs=1, val_check_interval=3)
    assert trainer.global_step == 4
    assert observed_steps(callback) == [(0, 2), (0, 3)]  # validation after step 3, then the final weights


def test_every_n_epochs_and_the_last_epoch(tmp_path):
    callback = GradCAMCallback(layers="network.features.13", num_probe=4, every_n_epochs=2)
    tiny_fit(tmp_path, [callback], epochs=3)
    assert [epoch for epoch, _ in observed_steps(callback)] == [1, 2]


# ---------------------------------------------------------------------------------------------- compiled models
def test_a_compiled_submodule_is_explained_eagerly_with_clean_names(tmp_path):
    from xai_lightning import grad_cam

    model = small_classifier(width=4)
    eager = model.network
    model.network = torch.compile(eager, backend="eager")
    callback = GradCAMCallback(layers="network.features.13", num_probe=4)
    tiny_fit(tmp_path, [callback], model=model)
    assert not callback.failures and "gradcam/network.features.13/empty_maps" in callback.history[0]
    assert callback.layer_names == ["network.features.13"]
    assert isinstance(model.network, type(torch.compile(torch.nn.Linear(1, 1), backend="eager")))  # restored
    model.network = eager  # the same weights, uncompiled: the same maps
    reference = grad_cam(
        model.eval(), callback.probe.images, "label", "network.features.13", labels=callback.probe.labels
    ).maps["network.features.13"]
    assert torch.allclose(callback._previous["network.features.13"], reference, atol=1e-6)


class StepCounter(pl.Callback):
    count = 0

    def on_train_batch_start(self, *args) -> None:
        self.count += 1


@pytest.mark.parametrize("case", CASES)
def test_every_callback_works_on_a_compiled_network(tmp_path, case: CallbackCase):
    """``model.network = torch.compile(model.network)``: explanations run on the eager module (the
    guard swaps it in), layer names read as in the eager model, and no logged key shows
    ``_orig_mod``; a callback that cannot work there fails at setup saying what to do."""
    pl.seed_everything(0)
    model = case.build_model()
    compiled = torch.compile(model.network, backend="eager")
    model.network = compiled
    callback = case.make()
    if case.observes:
        callback.on_error = "raise"
    if case.compiled_error is not None:  # it cannot work there: one clear error before training
        steps = StepCounter()
        with pytest.raises(ValueError, match=case.compiled_error):
            fit_case(tmp_path, case, [callback, steps], model=model, limit_train_batches=2)
        assert steps.count == 0
        return
    trainer, _ = fit_case(tmp_path, case, [callback], model=model, limit_train_batches=2)
    assert model.network is compiled  # restored after every observation
    logged = [key for key in trainer.callback_metrics if key.startswith(case.namespace + "/")]
    assert logged and not [key for key in logged if "_orig_mod" in key]
    if case.observes:
        assert len(callback.history) == 1 and not callback.failures


# ---------------------------------------------------------------------------------------------- interruptions
class Interrupt(BaseException):
    """Like Ctrl+C or a crash: not an ``Exception``, so nothing handles it on the way out."""


class InterruptAt(pl.Callback):
    """Interrupts ``fit`` in the middle of a training step, or inside the model's forward while an
    observing callback explains it (eval mode)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.armed = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.armed = self.where == "observation" and trainer.current_epoch == 1 and batch_idx == 3

    def on_before_backward(self, trainer, pl_module, loss):
        # After the forward: the callbacks' training-step hooks have fired and are armed.
        if self.where == "training step" and trainer.current_epoch == 1:
            raise Interrupt

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.armed:

            def explode(module, inputs):
                if not module.training:
                    raise Interrupt

            first_leaf(pl_module)[1].register_forward_pre_hook(explode)
            self.armed = False


def first_leaf(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The first module without children (the input layer of every model here): every forward runs it."""
    return next((name, module) for name, module in model.named_modules() if not list(module.children()))


def hooks_left(model: torch.nn.Module) -> dict[str, int]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    left = {}
    for name, module in model.named_modules():
        for kind in kinds:
            hooks = getattr(module, kind, {})
            if hooks:
                left[f"{name or 'root'}.{kind}"] = len(hooks)
    return left


@pytest.mark.parametrize("where", ["training step", "observation"])
@pytest.mark.parametrize("case", CASES)
def test_nothing_is_left_on_the_model_after_an_interrupted_fit(tmp_path, case: CallbackCase, where: str):
    callback = case.make()
    stopper = InterruptAt(where)
    model = case.build_model()
    with pytest.raises(Interrupt):
        # The interrupting callback comes first: its hook on the first layer is the only one expected.
        fit_case(tmp_path, case, [stopper, callback], epochs=3, model=model)
    left = hooks_left(model)
    if where == "observation":
        left.pop(f"{first_leaf(model)[0]}._forward_pre_hooks", None)
    assert left == {}, f"{case.name} left hooks after an interrupted fit: {left}"
    assert getattr(model, "trades_batch", None) is None
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert torch.get_default_dtype() == torch.float32
