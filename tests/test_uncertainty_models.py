"""EnsembleClassifier and VariationalClassifier as LightningModules: they train what they claim to train."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer, small_datamodule
from torch.utils.data import DataLoader, TensorDataset

from xai_lightning import EnsembleClassifier, ImageClassifier, SmallCNN, VariationalClassifier
from xai_lightning.uncertainty import BayesianConv2d, BayesianLinear, kl_divergence


def loader(seed: int = 0) -> DataLoader:
    data = small_datamodule(num_train=96)
    data.setup("fit")
    images, labels = data.train_set.tensors()
    return DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=False)


def fit(model: pl.LightningModule, epochs: int = 1) -> pl.LightningModule:
    trainer = quiet_trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader())
    return model


@pytest.mark.parametrize(
    ("layout", "channels_last", "tolerance"),
    # Channels-last kernels round differently from a member's own; over training steps a ReLU or
    # max-pool kink can then route one gradient element differently, so that case is checked to
    # 1e-3 (measured: <= 1.6e-4 over 3 seeds and 1-2 threads; the classifier moved by >= 2e-2,
    # asserted below to exceed 10x the tolerance), the others to float rounding.
    [("auto", False, 2e-5), ("vmap", None, 2e-5), ("auto", None, 1e-3)],
)
def test_ensemble_training_equals_training_each_member_alone(layout, channels_last, tolerance):
    """Summed member losses + one optimiser over stacked weights = K independent trainings (same batches)."""
    torch.manual_seed(0)
    ensemble = EnsembleClassifier(
        SmallCNN(num_classes=5, width=4), num_members=3, optimizer="sgd", lr=0.05, layout=layout
    )
    assert ensemble.network.layout == ("packed" if layout == "auto" else "vmap")  # SmallCNN packs
    ensemble.network.channels_last = channels_last
    packed_channels_last = layout == "auto" and channels_last is None  # the default on CPU
    memory_format = torch.channels_last if packed_channels_last else torch.contiguous_format
    separate = [
        ImageClassifier(
            ensemble.network.member(k).to(memory_format=memory_format), num_classes=5, optimizer="sgd", lr=0.05
        )
        for k in range(3)
    ]
    initial = [member.network.classifier.weight.clone() for member in separate]
    assert not torch.allclose(initial[0], initial[1])  # members are independently initialised
    fit(ensemble)
    for k, member in enumerate(separate):
        fit(member)
        trained = ensemble.network.member(k)
        for (name, ours), (_, theirs) in zip(trained.state_dict().items(), member.network.state_dict().items()):
            assert torch.allclose(ours.float(), theirs.float(), atol=tolerance), (k, name)
        assert not torch.allclose(member.network.classifier.weight, initial[k], atol=10 * tolerance)


def test_ensemble_forward_is_the_mean_member_probability_and_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = EnsembleClassifier(SmallCNN(num_classes=5, width=4), num_members=4).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        members = model.member_logits(x)
        assert members.shape == (4, 6, 5)
        assert torch.allclose(model(x).exp(), members.softmax(-1).mean(0), atol=1e-6)
        copy = EnsembleClassifier(SmallCNN(num_classes=5, width=4), num_members=4).eval()
        copy.load_state_dict(model.state_dict())
        assert torch.allclose(copy(x), model(x))
    assert "network.stacked.classifier.weight" in model.state_dict()
    assert model.state_dict()["network.stacked.classifier.weight"].shape == (4, 5, 16)


def test_variational_classifier_trains_on_the_elbo():
    torch.manual_seed(0)
    model = VariationalClassifier(SmallCNN(num_classes=5, width=4), prior_sigma=0.5)
    assert isinstance(model.network.classifier, BayesianLinear) and isinstance(
        model.network.features[1], BayesianConv2d
    )
    seen = {}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["size"] = pl_module._dataset_size(32)
            seen["loss"] = float(outputs["loss"])

    trainer = quiet_trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, limit_val_batches=0, callbacks=[Spy()]
    )
    trainer.fit(model, train_dataloaders=loader())
    assert seen["size"] == 96  # KL weighted by the training-set size: KL / N per example
    metrics = trainer.callback_metrics
    assert float(metrics["train/kl"]) > 0
    assert float(metrics["train/loss"]) == pytest.approx(float(metrics["train/nll"] + metrics["train/kl"]), rel=1e-5)
    # Posterior means in eval mode (deterministic); weight samples in train mode and in predictive_logits.
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        predictive = model.predictive_logits(x, samples=8)
        assert predictive.shape == (4, 5) and torch.allclose(predictive.exp().sum(1), torch.ones(4), atol=1e-5)
        assert torch.equal(predictive, model.predictive_logits(x, samples=8))  # keyed noise: reproducible
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    assert float(kl_divergence(model.network)) > 0


def test_variational_classifier_bad_arguments():
    with pytest.raises(ValueError, match="val_samples"):
        VariationalClassifier(SmallCNN(width=4), val_samples=1)
    with pytest.raises(ValueError, match="cannot convert"):
        VariationalClassifier(SmallCNN(width=4), bayesian_layers=["features.2"])
    last_only = VariationalClassifier(SmallCNN(width=4), bayesian_layers="last")
    assert isinstance(last_only.network.classifier, BayesianLinear)
    assert not isinstance(last_only.network.features[1], BayesianConv2d)
