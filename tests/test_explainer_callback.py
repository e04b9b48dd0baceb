"""ExplainerNetworkCallback: trains alongside without disturbing, learns part filters, checkpoints, fails early."""

from __future__ import annotations

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
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning import ExplainerNetworkCallback, ImageClassifier, LayerNotFoundError

INPUT, TARGET = "network.features.13", "network.features.20"


def test_performer_weights_are_bit_identical_with_and_without_the_callback(tmp_path):
    callback = ExplainerNetworkCallback(INPUT, TARGET, num_filters=4, num_probe=16)
    without = train_weights(tmp_path / "without", [], epochs=2, dropout=0.5)
    with_callback = train_weights(tmp_path / "with", [callback], epochs=2, dropout=0.5)
    assert_bit_identical(without, with_callback)
    assert callback.steps == 2 * 256 // 32  # the explainer really trained, one step per batch
    assert len(callback.history) == 2 and not callback.failures


# The performer jumps from chance to ~100 % in epochs 2-3; the explainer, trained on its moving train-mode
# features, needs an epoch or two to catch up (measured: accuracy through it 0.77 vs 1.00 at epoch 3, 1.00 vs
# 1.00 from epoch 4 on; instability 0.038 vs the performer's 0.060). Hence 8 epochs, not 4.
def test_short_concept_world_training_gives_stable_part_filters_and_faithful_reconstruction(wandb_dir):
    pl.seed_everything(0)
    model = small_classifier(width=8, lr=3e-3)
    callback = ExplainerNetworkCallback(
        INPUT, TARGET, num_filters=8, lr=3e-3, steps_per_batch=4, num_probe=128, top_k=20, on_error="raise"
    )
    trainer = quiet_trainer(
        max_epochs=8,
        callbacks=[callback],
        enable_checkpointing=False,
        logger=WandbLogger(offline=True, save_dir=str(wandb_dir)),
    )
    epochs = trainer.max_epochs
    trainer.fit(model, small_datamodule(num_train=1024, num_val=128, batch_size=64))
    import wandb

    wandb.finish()
    history = read_wandb_history(wandb_run_dir(wandb_dir))
    last = callback.history[-1]
    logged = [h for h in history if "explainer/location_instability/explainer" in h]
    assert len(logged) == epochs  # one evaluation per epoch
    for key in (
        "p",
        "reconstruction_error",
        "filter_loss",
        "accuracy/explainer",
        "delta_error",
        "location_instability/input",
        "location_instability/target",
        "train/loss",
        "steps",
    ):
        assert logged[-1][f"explainer/{key}"] == pytest.approx(last[f"explainer/{key}"], rel=1e-5), key
    assert logged[-1]["explainer/steps"] == epochs * 4 * 1024 // 64
    maps = [h for h in history if "explainer/activation_maps.filenames" in h]
    assert len(maps) == epochs and "Explainer filters" in maps[-1]["explainer/activation_maps.captions"][0]
    assert any("explainer/filters._type" in h for h in history)
    assert last["explainer/accuracy/performer"] > 0.95  # the performer trained
    instability = last["explainer/location_instability/explainer"]
    assert instability < 0.8 * last["explainer/location_instability/input"]
    assert instability < 0.8 * last["explainer/location_instability/target"]
    assert last["explainer/accuracy/explainer"] >= last["explainer/accuracy/performer"] - 0.03
    assert last["explainer/delta_error"] == pytest.approx(
        last["explainer/accuracy/performer"] - last["explainer/accuracy/explainer"], abs=1e-6
    )


def fit_with(tmp_path, callback):
    pl.seed_everything(0)
    model = small_classifier(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    try:
        trainer.fit(model, small_datamodule(num_train=64, num_val=16))
    finally:
        assert trainer.global_step == 0  # raised at setup, before any training step
        assert_bit_identical(before, model.state_dict())


def test_layer_without_spatial_output_fails_at_setup_listing_spatial_layers(tmp_path):
    with pytest.raises(ValueError, match=r"target_layer='network.pool' outputs \(1, 16, 1, 1\).*network.features.13"):
        fit_with(tmp_path, ExplainerNetworkCallback(INPUT, "network.pool", num_probe=4))


def test_target_layer_before_input_layer_fails_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"target_layer='network.features.6' runs before input_layer"):
        fit_with(tmp_path, ExplainerNetworkCallback(INPUT, "network.features.6", num_probe=4))


def test_unknown_layer_lists_valid_names(tmp_path):
    with pytest.raises(LayerNotFoundError, match="network.features.13"):
        fit_with(tmp_path, ExplainerNetworkCallback("network.nope", TARGET, num_probe=4))


def test_resume_continues_the_explainers_training_where_it_stopped(tmp_path):
    def run(epochs, ckpt_path=None):
        pl.seed_everything(0)
        callback = ExplainerNetworkCallback(INPUT, TARGET, num_filters=4, num_probe=8)
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
        trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback, checkpoint], logger=CSVLogger(str(tmp_path)))
        trainer.fit(small_classifier(width=4), small_datamodule(num_train=64, num_val=16), ckpt_path=ckpt_path)
        return callback

    first = run(1)
    assert first.steps == 2
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    for key, value in first.explainer.state_dict().items():
        assert torch.equal(saved["explainer"][key], value.cpu()), key
    resumed = run(2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # A fresh explainer would have taken 2 steps; the restored one continues from 2 (weights and Adam state).
    assert resumed.steps == 4
    assert max(int(state["step"]) for state in resumed.optimizer.state.values()) == 4
    assert len(resumed.history) == 2


# --------------------------------------------------------------------------- DDP (2 CPU processes, gloo)
DDP_INPUT, DDP_TARGET = "network.3", "network.6"


def ddp_network() -> torch.nn.Module:
    """No BatchNorm (per-rank running statistics would make rank 0's model differ from rank 1's at
    evaluation); dropout so that any leak into the training random stream changes the weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 5),
    )


class SaveRankState(pl.Callback):
    """Writes what each spawned rank ended with (ddp_spawn returns no callback state to the parent)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pl_module):
        state = {"performer": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}}
        for callback in trainer.callbacks:
            if isinstance(callback, RecordingExplainerCallback):
                state.update(
                    explainer={k: v.detach().cpu().clone() for k, v in callback.explainer.state_dict().items()},
                    batches=callback.batches,
                    local_sums=callback.local_sums,
                    steps=callback.steps,
                    history=callback.history,
                    probe_images=callback.probe.images,
                    probe_labels=callback.probe.labels,
                    landmarks=callback.landmarks,
                )
        torch.save(state, f"{self.out_dir}/rank{trainer.global_rank}.pt")


class RecordingExplainerCallback(ExplainerNetworkCallback):
    """The callback, also keeping every (features, target) batch its explainer trained on and this
    rank's own loss sums before each report."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.local_sums: list[torch.Tensor] = []

    def train_step(self, trainer, features, target):
        self.batches.append((features.detach().cpu().clone(), target.detach().cpu().clone()))
        super().train_step(trainer, features, target)

    def report(self, trainer, pl_module, probe, results):
        self.local_sums.append(self._train_sums.detach().cpu().clone())
        return super().report(trainer, pl_module, probe, results)


def ddp_run(root, with_callback: bool) -> list[dict]:
    import csv

    root.mkdir(parents=True)
    callbacks: list[pl.Callback] = [SaveRankState(str(root))]
    if with_callback:
        explainer = RecordingExplainerCallback(
            DDP_INPUT, DDP_TARGET, num_filters=4, steps_per_batch=2, num_probe=13, top_k=5, on_error="raise"
        )  # 13 probe images: uneven shards
        # As after an earlier fit in this process: the parent already holds a set-up explainer, which
        # ddp_spawn puts in memory shared with the ranks; each rank must still train a private copy.
        quiet_trainer(
            max_epochs=1,
            limit_train_batches=0,
            limit_val_batches=0,
            callbacks=[explainer],
            logger=CSVLogger(str(root / "earlier")),
        ).fit(ImageClassifier(ddp_network(), num_classes=5), small_datamodule(num_train=128, num_val=32))
        assert explainer.explainer is not None and explainer.steps == 0
        callbacks.insert(0, explainer)
    pl.seed_everything(0)
    model = ImageClassifier(ddp_network(), num_classes=5, lr=3e-3)
    trainer = quiet_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_spawn",
        callbacks=callbacks,
        logger=CSVLogger(str(root), name="run", version=0),
        enable_checkpointing=False,
        deterministic=False,
    )
    trainer.fit(model, small_datamodule(num_train=128, num_val=32))
    ranks = [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    if with_callback:
        rows = list(csv.DictReader(open(root / "run" / "version_0" / "metrics.csv")))
        logged = [{k: float(v) for k, v in row.items() if k.startswith("explainer/") and v} for row in rows]
        for rank in ranks:
            rank["logged"] = [row for row in logged if row]
    return ranks


def replay_with_averaged_gradients(ranks, num_filters, steps_per_batch, lr=1e-3):
    """Single-process reference: a fresh explainer (same seed), each step the mean of the two ranks'
    gradients on their own batches, then Adam. Returns the explainer and the per-step losses per rank."""
    from xai_lightning.explainer import ExplainerNetwork

    x0, y0 = ranks[0]["batches"][0]
    torch.manual_seed(0)
    explainer = ExplainerNetwork(x0.shape[1], y0.shape[1], tuple(y0.shape[-2:]), num_filters)
    optimizer = torch.optim.Adam(explainer.parameters(), lr=lr)
    losses = []
    for batches in zip(*(rank["batches"] for rank in ranks)):
        for _ in range(steps_per_batch):
            grads, step_losses = [], []
            for features, target in batches:
                explainer.zero_grad(set_to_none=True)
                loss = explainer.loss(features, target)
                loss.total.backward()
                grads.append([p.grad.clone() for p in explainer.parameters()])
                step_losses.append(float(loss.total))
            for p, *per_rank in zip(explainer.parameters(), *grads):
                p.grad = sum(per_rank) / len(per_rank)
            optimizer.step()
            losses.append(step_losses)
    return explainer, losses


@pytest.mark.ddp
def test_two_process_ddp_keeps_explainer_copies_identical_and_logs_what_one_process_computes(tmp_path):
    from xai_lightning.explainer import ExplainerNetwork, evaluate_explainer

    ranks = ddp_run(tmp_path / "with", with_callback=True)
    plain = ddp_run(tmp_path / "without", with_callback=False)
    # The performer: identical across ranks (DDP) and bit-identical to training without the callback.
    for rank, reference in zip(ranks, plain):
        assert_bit_identical(reference["performer"], rank["performer"])
    # Each rank trained its copy on different data (its own shard of every batch) ...
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 2 * 128 // 2 // 32
    assert not torch.equal(ranks[0]["batches"][0][0], ranks[1]["batches"][0][0])
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * len(ranks[0]["batches"])
    # ... yet the copies are identical: gradients are averaged over ranks before every step.
    assert_bit_identical(ranks[0]["explainer"], ranks[1]["explainer"])
    replayed, losses = replay_with_averaged_gradients(ranks, num_filters=4, steps_per_batch=2)
    for key, value in replayed.state_dict().items():
        torch.testing.assert_close(ranks[0]["explainer"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # The logged evaluation (probe sharded 7 + 6 over the ranks, gathered) equals one process evaluating the
    # final explainer and performer on the whole probe set.
    logged = ranks[0]["logged"]
    assert len(logged) == 2  # one evaluation per epoch, logged once (rank zero)
    model = ImageClassifier(ddp_network(), num_classes=5)
    model.load_state_dict(ranks[0]["performer"])
    explainer = ExplainerNetwork(8, 16, (16, 16), num_filters=4)
    explainer.load_state_dict(ranks[0]["explainer"])
    assert ranks[0]["probe_images"].shape[0] == 13 and ranks[0]["landmarks"] is not None
    expected = evaluate_explainer(
        model.eval(),
        explainer.eval(),
        DDP_INPUT,
        DDP_TARGET,
        ranks[0]["probe_images"],
        labels=ranks[0]["probe_labels"],
        landmarks=ranks[0]["landmarks"],
        top_k=5,
    ).scalars
    assert "location_instability/explainer" in expected and "accuracy/explainer" in expected
    for key, value in expected.items():
        assert logged[-1][f"explainer/{key}"] == pytest.approx(value, abs=1e-5), key
    # Training terms: each rank sums its own steps (4 per epoch) ...
    steps_per_epoch = len(losses) // 2
    for rank_index, rank in enumerate(ranks):
        for epoch, sums in enumerate(rank["local_sums"]):
            own = [step[rank_index] for step in losses[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]]
            assert float(sums[-1]) == steps_per_epoch
            assert float(sums[0]) == pytest.approx(sum(own), rel=1e-5)
    # ... and the logged value is the mean over both ranks' steps of that epoch.
    for epoch, row in enumerate(logged):
        epoch_losses = losses[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        assert row["explainer/train/loss"] == pytest.approx(
            sum(sum(step) for step in epoch_losses) / (2 * steps_per_epoch), rel=1e-5
        )
    assert logged[-1]["explainer/steps"] == ranks[0]["steps"]


def test_gradient_averaging_matches_ddp_for_missing_gradients():
    from xai_lightning.callbacks.explainer_network import average_gradients

    params = [torch.nn.Parameter(torch.zeros(2, 3)) for _ in range(3)]
    params[0].grad = torch.full((2, 3), 4.0)  # both ranks have one
    params[1].grad = None  # only the other rank has one
    params[2].grad = None  # no rank has one
    other_rank = [torch.full((2, 3), 2.0), torch.full((2, 3), 6.0), None]

    def all_reduce_with_other_rank(flat):  # what a 2-rank sum brings in from the other rank
        other = torch.cat(
            [(g if g is not None else torch.zeros(2, 3)).reshape(-1) for g in other_rank]
            + [torch.tensor([1.0, 1.0, 0.0])]
        )
        flat += other

    average_gradients(params, 2, all_reduce_with_other_rank)
    assert torch.equal(params[0].grad, torch.full((2, 3), 3.0))
    assert torch.equal(params[1].grad, torch.full((2, 3), 3.0))  # (0 + 6) / 2, as DDP
    assert params[2].grad is None  # Adam skips it, as in one process


def test_the_explainer_api_is_exported_at_the_top_level():
    import xai_lightning
    import xai_lightning.explainer as explainer

    for name in (
        "ExplainerNetwork",
        "fit_explainer",
        "evaluate_explainer",
        "knowledge_consistency",
        "location_instability",
    ):
        assert getattr(xai_lightning, name) is getattr(explainer, name) and name in xai_lightning.__all__
    assert xai_lightning.ExplainerNetworkCallback is xai_lightning.callbacks.ExplainerNetworkCallback
