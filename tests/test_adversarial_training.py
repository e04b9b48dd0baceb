"""AdversarialTrainingCallback: it makes models robust, trains on the adversarial inputs of every batch
format, leaves BatchNorm statistics to the training forwards, supports TRADES, and rejects bad input at setup."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from conftest import quiet_trainer, small_classifier, small_datamodule
from xai_lightning import AdversarialTrainingCallback, ConceptWorld, ImageClassifier, SmallCNN
from xai_lightning.robustness import pgd, trades_loss


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
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, logger=CSVLogger(str(tmp_path)),
                            enable_checkpointing=False, callbacks=[callback])
    trainer.fit(model, DataLoader(data, batch_size=16, collate_fn=collate(kind)))
    assert len(model.seen) == 2
    for batch_idx, seen in enumerate(model.seen):
        clean = data.clean[16 * batch_idx:16 * (batch_idx + 1)]
        labels = torch.tensor([data.data[i]["label"] for i in range(16 * batch_idx, 16 * (batch_idx + 1))])
        delta = (seen - clean).flatten(1).norm(dim=1)
        assert (delta <= 0.5 + 1e-5).all() and delta.mean() > 0.2
        assert seen.min() >= 0 and seen.max() <= 1
        expected = pgd(model, clean, labels, norm="l2", eps=0.5, steps=3,
                       generator=callback.generator(0, batch_idx))
        torch.testing.assert_close(seen, expected.adversarial, atol=1e-5, rtol=0)
    rows = list(csv.DictReader(open(next(tmp_path.glob("**/metrics.csv")))))
    logged = {key: float(value) for row in rows for key, value in row.items() if value}
    assert 0 <= logged["adversarial_training/attack_success_rate"] <= 1
    assert logged["adversarial_training/attack_loss"] > 0


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_batchnorm_statistics_are_updated_only_by_the_training_forwards(tmp_path, method):
    pl.seed_everything(0)
    model = small_classifier(width=8)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, callbacks=[AdversarialTrainingCallback(steps=5, method=method)])
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
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, callbacks=[AdversarialTrainingCallback(
                                method="trades", norm="linf", eps=0.031, steps=3, step_size=0.007, beta=2.0)])
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
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                            callbacks=[callback])
    with pytest.raises(TypeError, match="trades_batch"):
        trainer.fit(Plain(), small_datamodule(num_train=32, num_val=32))

    class Ignoring(Base):
        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, callbacks=[AdversarialTrainingCallback(method="trades", eps=0.5)])
    with pytest.raises(RuntimeError, match="did not call trades_batch.loss"):
        trainer.fit(Ignoring(SmallCNN(num_classes=5, width=8)), small_datamodule(num_train=32, num_val=32))


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,message", [
    (dict(eps=0.0), "eps must be a positive"),
    (dict(eps=-1.0), "eps must be a positive"),
    (dict(norm="l1"), "Unknown norm 'l1'"),
    (dict(method="cw"), "Unknown method 'cw'"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(data_mean=[0.5, 0.5, 0.5]), "both data_mean and data_std"),
])
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTrainingCallback(**kwargs)


def fit_first_step(data: Dataset, callback, kind: str = "tuple"):
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, callbacks=[callback])
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
    monkeypatch.setattr(ImageClassifier, "training_step",
                        lambda self, batch, i: started.append(1) or F.cross_entropy(self(batch[0]), batch[1]))
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space.*declare the loader's normalisation: data_mean"):
        fit_first_step(Normalised(), AdversarialTrainingCallback())
    assert not started  # refused at setup, before the first training step
    fit_first_step(Normalised(), AdversarialTrainingCallback(data_mean=mean, data_std=std))
    assert started


def test_a_batch_without_findable_inputs_fails_naming_the_accepted_formats():
    data = Items("dict", n=16, keys=("pixels", "label"))
    with pytest.raises(TypeError, match=r"cannot find the inputs in the training items.*keys \['label', 'pixels'\].*tuple/list.*'image'"):
        fit_first_step(data, AdversarialTrainingCallback(), kind="dict")


def test_a_tuple_batch_that_views_other_data_is_refused():
    # A collate function that slices one stored tensor: copying into the "batch" would corrupt the data.
    stored = Items("tuple", n=16).clean
    original = stored.clone()
    labels = torch.zeros(16, dtype=torch.long)

    def slices(indices):
        return stored[indices[0]:indices[-1] + 1], labels[indices[0]:indices[-1] + 1]

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                            callbacks=[AdversarialTrainingCallback()])
    with pytest.raises(TypeError, match="view into other data.*lists or dicts"):
        trainer.fit(small_classifier(width=8), DataLoader(range(16), batch_size=8, collate_fn=slices))
    assert torch.equal(stored, original)
