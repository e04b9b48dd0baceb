"""AdversarialTrainingCallback: it makes models robust, trains on the adversarial inputs of every batch
format, leaves BatchNorm statistics to the training forwards, supports TRADES, and rejects bad input at setup."""

from __future__ import annotations

import csv
import functools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import assert_bit_identical, quiet_trainer, small_classifier, small_datamodule
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xai_lightning import AdversarialTrainingCallback, ConceptWorld, ImageClassifier, SmallCNN
from xai_lightning.robustness import pgd, trades_adversarial, trades_loss


def probe(n: int = 128, seed: int = 77):
    data = ConceptWorld(num_samples=n, seed=seed)
    return torch.stack([data[i]["image"] for i in range(n)]), torch.tensor([data[i]["label"] for i in range(n)])


def robust_accuracy(model, images, labels) -> tuple[float, float]:
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean().item()
    attack = pgd(model, images, labels, norm="l2", eps=0.5, steps=10, generator=torch.Generator().manual_seed(0))
    return clean, (~attack.success).float().mean().item()


def test_adversarial_training_makes_the_model_clearly_more_robust(standard_and_robust_models):
    images, labels = probe()
    standard = robust_accuracy(standard_and_robust_models["standard"], images, labels)
    robust = robust_accuracy(standard_and_robust_models["robust"], images, labels)
    print(f"standard clean/robust = {standard}, robust clean/robust = {robust}")
    assert robust[1] > standard[1] + 0.15
    assert robust[1] > 0.3


class Recorder(ImageClassifier):
    """Records what training_step receives."""

    def __init__(self, **kwargs):
        super().__init__(SmallCNN(num_classes=5, width=8), **kwargs)
        for module in self.modules():  # frozen running statistics (with lr=0: a fixed eval-mode model)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.0
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        inputs = batch["image"] if isinstance(batch, dict) else batch[0]
        self.seen.append(inputs.detach().clone())
        return super().training_step(batch, batch_idx)


class Items(Dataset):
    """ConceptWorld items as tuple, list or dict, collated as that container."""

    def __init__(self, kind: str, n: int = 64, scale: float = 1.0, keys=("image", "label")) -> None:
        self.data, self.kind, self.scale, self.keys = ConceptWorld(num_samples=n, seed=3), kind, scale, keys
        self.clean = torch.stack([self.data[i]["image"] for i in range(n)]) * scale

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.clean[i].clone(), self.data[i]["label"]
        if self.kind == "dict":
            return {self.keys[0]: x, self.keys[1]: y}
        return (x, y) if self.kind == "tuple" else [x, y]


def collate(kind):
    def fn(items):
        if kind == "dict":
            return {key: torch.stack([torch.as_tensor(i[key]) for i in items]) for key in items[0]}
        stacked = [torch.stack([i[0] for i in items]), torch.tensor([i[1] for i in items])]
        return tuple(stacked) if kind == "tuple" else stacked

    return fn


@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
def test_training_step_receives_the_adversarial_batch_in_every_format(tmp_path, kind):
    pl.seed_everything(0)
    data = Items(kind, n=32)
    model = Recorder(lr=0.0, weight_decay=0.0)  # fixed weights: the attack below must reproduce the step's inputs
    callback = AdversarialTrainingCallback(norm="l2", eps=0.5, steps=3)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
        callbacks=[callback],
    )
    trainer.fit(model, DataLoader(data, batch_size=16, collate_fn=collate(kind)))
    assert len(model.seen) == 2
    for batch_idx, seen in enumerate(model.seen):
        clean = data.clean[16 * batch_idx : 16 * (batch_idx + 1)]
        labels = torch.tensor([data.data[i]["label"] for i in range(16 * batch_idx, 16 * (batch_idx + 1))])
        delta = (seen - clean).flatten(1).norm(dim=1)
        assert (delta <= 0.5 + 1e-5).all() and delta.mean() > 0.2
        assert seen.min() >= 0 and seen.max() <= 1
        expected = pgd(model, clean, labels, norm="l2", eps=0.5, steps=3, generator=callback.generator(0, batch_idx))
        torch.testing.assert_close(seen, expected.adversarial, atol=1e-5, rtol=0)
    rows = list(csv.DictReader(open(next(tmp_path.glob("**/metrics.csv")))))
    logged = {key: float(value) for row in rows for key, value in row.items() if value}
    assert 0 <= logged["adversarial_training/attack_success_rate"] <= 1
    assert logged["adversarial_training/attack_loss"] > 0


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_batchnorm_statistics_are_updated_only_by_the_training_forwards(tmp_path, method):
    pl.seed_everything(0)
    model = small_classifier(width=8)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[AdversarialTrainingCallback(steps=5, method=method)],
    )
    trainer.fit(model, small_datamodule(num_train=96, num_val=32))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    # 3 training steps, 2 (FGSM) or 6 (PGD) attack forwards each: only the 3 training forwards may count.
    assert all(int(m.num_batches_tracked) == 3 for m in norms)


def test_trades_trains_with_the_trades_loss_through_the_module(tmp_path):
    pl.seed_everything(0)
    losses = []

    class Checked(ImageClassifier):
        def training_step(self, batch, batch_idx):
            trades = self.trades_batch
            assert trades is not None and trades.beta == 2.0
            x, y = batch
            with torch.no_grad():
                expected = trades_loss(self(x), self(trades.inputs), y, beta=2.0)
                assert (trades.inputs - x).abs().max() <= 0.031 + 1e-6  # clean batch kept; x' in the ball
            loss = super().training_step(batch, batch_idx)
            losses.append((float(loss), float(expected)))
            return loss

    model = Checked(SmallCNN(num_classes=5, width=8))
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[
            AdversarialTrainingCallback(method="trades", norm="linf", eps=0.031, steps=3, step_size=0.007, beta=2.0)
        ],
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=32))
    assert len(losses) == 2
    for loss, expected in losses:
        # The module is in train mode for its loss (BatchNorm batch statistics), our reference in eval mode:
        # the same definition, different normalisation, so compare loosely but beyond plain cross-entropy.
        assert loss == pytest.approx(expected, rel=0.5)
    assert model.trades_batch is None


def test_trades_needs_the_module_to_cooperate():
    from xai_lightning.models import ImageClassifier as Base

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = SmallCNN(num_classes=5, width=8)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callback = AdversarialTrainingCallback(method="trades", norm="linf", eps=0.031)
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False, callbacks=[callback]
    )
    with pytest.raises(TypeError, match="trades_batch"):
        trainer.fit(Plain(), small_datamodule(num_train=32, num_val=32))

    class Ignoring(Base):
        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[AdversarialTrainingCallback(method="trades", eps=0.5)],
    )
    with pytest.raises(RuntimeError, match="did not call trades_batch.loss"):
        trainer.fit(Ignoring(SmallCNN(num_classes=5, width=8)), small_datamodule(num_train=32, num_val=32))


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(eps=0.0), "eps must be a positive"),
        (dict(eps=-1.0), "eps must be a positive"),
        (dict(norm="l1"), "Unknown norm 'l1'"),
        (dict(method="cw"), "Unknown method 'cw'"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(data_mean=[0.5, 0.5, 0.5]), "both data_mean and data_std"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTrainingCallback(**kwargs)


def fit_first_step(data: Dataset, callback, kind: str = "tuple"):
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )
    model = small_classifier(width=8)
    trainer.fit(model, DataLoader(data, batch_size=8, collate_fn=collate(kind)))
    return model


def test_inputs_outside_the_pixel_box_fail_at_setup_unless_the_normalisation_is_declared(monkeypatch):
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]

    class Normalised(Items):
        def __init__(self):
            super().__init__("tuple", n=16)
            self.clean = (self.clean - 0.5) / 0.25

    started = []
    monkeypatch.setattr(
        ImageClassifier,
        "training_step",
        lambda self, batch, i: started.append(1) or F.cross_entropy(self(batch[0]), batch[1]),
    )
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space.*declare the loader's normalisation: data_mean"):
        fit_first_step(Normalised(), AdversarialTrainingCallback())
    assert not started  # refused at setup, before the first training step
    fit_first_step(Normalised(), AdversarialTrainingCallback(data_mean=mean, data_std=std))
    assert started


def test_a_batch_without_findable_inputs_fails_naming_the_accepted_formats():
    data = Items("dict", n=16, keys=("pixels", "label"))
    with pytest.raises(
        TypeError,
        match=r"cannot find the inputs in the training items.*keys \['label', 'pixels'\].*tuple/list.*'image'",
    ):
        fit_first_step(data, AdversarialTrainingCallback(), kind="dict")


def test_a_tuple_batch_that_views_other_data_is_refused():
    # A collate function that slices one stored tensor: copying into the "batch" would corrupt the data.
    stored = Items("tuple", n=16).clean
    original = stored.clone()
    labels = torch.zeros(16, dtype=torch.long)

    def slices(indices):
        return stored[indices[0] : indices[-1] + 1], labels[indices[0] : indices[-1] + 1]

    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[AdversarialTrainingCallback()],
    )
    with pytest.raises(TypeError, match="view into other data.*lists or dicts"):
        trainer.fit(small_classifier(width=8), DataLoader(range(16), batch_size=8, collate_fn=slices))
    assert torch.equal(stored, original)


# ---------------------------------------------------------------------------------------- DDP
DDP_RANKS, DDP_PER_RANK, DDP_BATCHES, DDP_EPOCHS, DDP_ACCUMULATE, DDP_LR = 2, 8, 4, 2, 2, 0.05
# L2 for both: its normalised-gradient steps are continuous in the gradient, whereas an L∞ sign step of a
# near-zero gradient coordinate can flip with floating-point rounding (e.g. another thread count in the
# spawned ranks) and move that pixel by 2α.
DDP_ATTACKS = {
    "pgd": dict(method="pgd", norm="l2", eps=0.5, steps=3),  # random start: each rank draws from its own generator
    "trades": dict(method="trades", norm="l2", eps=0.5, steps=3, beta=2.0),
}


def ddp_network() -> nn.Module:
    """No BatchNorm, no dropout: each rank's forward passes are per-example."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 5),
    )


@functools.lru_cache(maxsize=1)
def pretrained_ddp_weights() -> dict:
    """``ddp_network`` after 300 Adam steps on ConceptWorld (~90 % train accuracy): at initialisation its
    outputs barely depend on the input, so TRADES' KL would be ~1e-8 and the attack metrics degenerate."""
    images, labels = probe(n=512, seed=11)
    network = ddp_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        rows = torch.randint(0, len(images), (64,), generator=generator)
        loss = F.cross_entropy(network(images[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


class RankRecorder(ImageClassifier):
    """Records, per training step, the weights it starts from and the images it trains on (the adversarial
    batch, or TRADES' x'). Plain SGD: each update is ``-lr · gradient``, checkable from one step's record."""

    def __init__(self, weights: dict) -> None:
        super().__init__(ddp_network(), num_classes=5)
        self.network.load_state_dict(weights)
        self.steps: list[tuple[dict, torch.Tensor]] = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=DDP_LR)

    def training_step(self, batch, batch_idx):
        trained_on = batch[0] if self.trades_batch is None else self.trades_batch.inputs
        weights = {key: value.detach().clone() for key, value in self.network.state_dict().items()}
        self.steps.append((weights, trained_on.detach().clone()))
        return super().training_step(batch, batch_idx)


class SaveRank(pl.Callback):
    """Each rank writes its record and final weights (spawned ranks share no memory)."""

    def __init__(self, directory) -> None:
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        final = {key: value.detach().clone() for key, value in pl_module.network.state_dict().items()}
        torch.save({"steps": pl_module.steps, "final": final}, f"{self.directory}/rank{trainer.global_rank}.pt")


def ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return probe(n=DDP_RANKS * DDP_PER_RANK * DDP_BATCHES, seed=5)


def rank_shards(epoch: int) -> list[list[int]]:
    """Lightning shards the training data with ``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``
    (0 after ``seed_everything(0)``), reshuffled by ``set_epoch``: each rank's example indices."""
    shards = []
    for rank in range(DDP_RANKS):
        sampler = DistributedSampler(
            range(DDP_RANKS * DDP_PER_RANK * DDP_BATCHES), num_replicas=DDP_RANKS, rank=rank, shuffle=True, seed=0
        )
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards


@pytest.mark.ddp
@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_two_process_ddp_trains_each_rank_on_its_own_adversarial_shard(tmp_path, method):
    """2-process DDP (gloo, ddp_spawn), 8 examples per rank, gradients accumulated over 2 batches, checked
    step by step against what DDP adversarial training must compute, written out here without Lightning:

    * at every step both ranks hold bit-identical weights (the attack does not desynchronise them);
    * each rank trains on the attack, at those weights, of its own shard with its own random start
      ``callback.generator(epoch, batch, rank)``;
    * every SGD update is ``-lr`` times the gradient of the loss over both ranks' recorded adversarial
      batches (16 examples: DDP averages the ranks' gradients; loss / 2 per accumulated batch): the
      attack's forward/backward passes neither trigger DDP's all-reduce nor leave gradients behind
      (accumulation would add them to the update);
    * the logged attack metrics are the averages over both ranks.

    Each update is checked from the recorded weights of its own step, not by replaying the whole run:
    a replay drifts by ~1e-5 after a few steps (a ReLU or max-pool switch where the all-reduce's 1e-7
    rounding changes the gradient), which would hide the small errors this test is after."""
    images, labels = ddp_data()
    attack = DDP_ATTACKS[method]
    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=DDP_EPOCHS,
        devices=DDP_RANKS,
        strategy="ddp_spawn",
        accumulate_grad_batches=DDP_ACCUMULATE,
        logger=CSVLogger(str(tmp_path), name="run", version=0),
        enable_checkpointing=False,
        deterministic=False,
        limit_val_batches=0,
        callbacks=[AdversarialTrainingCallback(**attack), SaveRank(tmp_path)],
    )
    trainer.fit(RankRecorder(pretrained_ddp_weights()), DataLoader(list(zip(images, labels)), batch_size=DDP_PER_RANK))
    records = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(DDP_RANKS)]
    steps = DDP_EPOCHS * DDP_BATCHES
    assert all(len(record["steps"]) == steps for record in records)
    weights_at = [records[0]["steps"][step][0] for step in range(steps)] + [records[0]["final"]]
    for step in range(steps):
        assert_bit_identical(weights_at[step], records[1]["steps"][step][0])
    assert_bit_identical(records[0]["final"], records[1]["final"])
    torch.testing.assert_close(weights_at[0], pretrained_ddp_weights(), atol=0, rtol=0)

    callback = AdversarialTrainingCallback(**attack)
    expected_logged, largest_update, largest_error = [], 0.0, 0.0
    for epoch in range(DDP_EPOCHS):
        shards = rank_shards(epoch)
        success, attack_loss = [], []
        for batch in range(DDP_BATCHES):
            step = epoch * DDP_BATCHES + batch
            network = RankRecorder(weights_at[step]).network
            clean, trained_on, targets = [], [], []
            for rank in range(DDP_RANKS):
                rows = shards[rank][batch * DDP_PER_RANK : (batch + 1) * DDP_PER_RANK]
                x, y = images[rows], labels[rows]
                generator = callback.generator(epoch, batch, rank)
                if method == "trades":
                    result = trades_adversarial(
                        network,
                        x,
                        norm=callback.norm,
                        eps=callback.eps,
                        steps=callback.steps,
                        step_size=callback.effective_step_size,
                        generator=generator,
                    )
                    success.append(result.predictions != y)
                else:
                    result = pgd(
                        network,
                        x,
                        y,
                        norm=callback.norm,
                        eps=callback.eps,
                        steps=callback.steps,
                        step_size=callback.effective_step_size,
                        generator=generator,
                    )
                    success.append(result.success)
                attack_loss.append(result.loss)
                seen = records[rank]["steps"][step][1]
                torch.testing.assert_close(seen, result.adversarial, atol=1e-5, rtol=0, msg=f"rank {rank}, step {step}")
                clean.append(x), trained_on.append(seen), targets.append(y)
            clean, trained_on, targets = torch.cat(clean), torch.cat(trained_on), torch.cat(targets)
            if method == "trades":
                loss = trades_loss(network(clean), network(trained_on), targets, beta=callback.beta)
            else:
                loss = F.cross_entropy(network(trained_on), targets)
            names = [name for name, _ in network.named_parameters()]
            gradients = dict(zip(names, torch.autograd.grad(loss / DDP_ACCUMULATE, list(network.parameters()))))
            if batch % DDP_ACCUMULATE == 0:
                accumulated = gradients
                assert_bit_identical(weights_at[step + 1], weights_at[step])  # no update mid-accumulation
                continue
            accumulated = {name: accumulated[name] + gradients[name] for name in names}
            for name in names:
                update = weights_at[step + 1][name] - weights_at[step][name]
                expected = -DDP_LR * accumulated[name]
                largest_update = max(largest_update, update.abs().max().item())
                largest_error = max(largest_error, (update - expected).abs().max().item())
                torch.testing.assert_close(update, expected, atol=2e-6, rtol=0, msg=f"update of {name} at step {step}")
        expected_logged.append(
            {
                "adversarial_training/attack_success_rate": torch.cat(success).float().mean().item(),
                "adversarial_training/attack_loss": torch.cat(attack_loss).mean().item(),
            }
        )

    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    logged = [
        {key: float(value) for key, value in row.items() if key.startswith("adversarial_training/") and value}
        for row in rows
    ]
    logged = [row for row in logged if row]
    print(
        f"{method}: largest update {largest_update:.3e}, largest deviation from -lr·gradient {largest_error:.3e}, "
        f"logged {logged}"
    )
    assert largest_update > 1e-2  # the tolerance is small against what the updates change
    assert len(logged) == DDP_EPOCHS
    for one, reference in zip(logged, expected_logged):
        assert one.keys() == reference.keys()
        for key in one:
            assert one[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key
