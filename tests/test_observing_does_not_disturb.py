"""The core contract: observing callbacks leave training bit-identical (ARCHITECTURE.md, core)."""

from __future__ import annotations

from conftest import assert_bit_identical, train_weights

from xai_lightning import GradCAMCallback


def test_gradcam_callback_leaves_weights_bit_identical(tmp_path):
    reference = train_weights(tmp_path / "plain", [], dropout=0.3)
    observed = train_weights(
        tmp_path / "observed",
        [GradCAMCallback(layers=["auto", "network.features.6"], num_probe=16)],
        dropout=0.3,
    )
    assert_bit_identical(reference, observed)


def test_gradcam_callback_every_second_epoch_and_train_probe_also_bit_identical(tmp_path):
    reference = train_weights(tmp_path / "plain", [], epochs=2)
    observed = train_weights(
        tmp_path / "observed", [GradCAMCallback(num_probe=8, every_n_epochs=2, probe_split="train")], epochs=2
    )
    assert_bit_identical(reference, observed)
