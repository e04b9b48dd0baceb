"""SanityCheckCallback end to end: per-layer and mean keys equal the randomisation test run directly, the
curves/table/grid files, at_epochs, the training model untouched, warnings for empty maps, setup errors."""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer, small_classifier, small_datamodule
from pytorch_lightning.loggers import CSVLogger

from xai_lightning import ImageClassifier, SanityCheckCallback, SmallCNN
from xai_lightning.attribution import get_method
from xai_lightning.evaluation.sanity import model_parameter_randomisation, randomisable_layers


def fit(tmp_path, callback, epochs=1, model=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = model or small_classifier(width=4)
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=CSVLogger(str(tmp_path), name="run", version=0),
        limit_train_batches=2,
        **trainer_kwargs,
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=16))
    return trainer, model


def test_logged_curves_are_the_randomisation_test_of_the_trained_model(tmp_path):
    callback = SanityCheckCallback(methods=["saliency", "gradcam"], num_probe=4)
    _, model = fit(tmp_path, callback)
    layers = randomisable_layers(model)
    assert callback.randomised_layers == layers and layers[0] == "network.classifier"
    record = callback.history[-1]
    for name in ("saliency", "gradcam"):
        result = model_parameter_randomisation(
            model, callback.probe.images, callback.probe.labels, get_method(name, seed=0, max_batch=256), seed=0
        )
        for similarity in ("spearman_abs", "spearman", "ssim", "hog_pearson"):
            prefix = f"sanity/{name}/cascading/{similarity}"
            curve = [record[f"{prefix}/{layer}"] for layer in layers]
            assert curve == pytest.approx(result.curve(similarity).tolist(), abs=1e-6), (name, similarity)
            assert record[f"{prefix}/mean"] == pytest.approx(result.mean(similarity), abs=1e-6)
    root = tmp_path / "run" / "version_0"
    assert list(root.glob("**/sanity/cascading/curves/*.png")) and list(root.glob("**/sanity/cascading/grid/*.png"))
    tables = list(root.glob("**/sanity/cascading/table/*.csv"))
    assert tables
    rows = list(csv.DictReader(tables[0].read_text().splitlines()))
    assert len(rows) == 2 * 4 * len(layers) and {r["method"] for r in rows} == {"saliency", "gradcam"}
    metrics = list(csv.DictReader((root / "metrics.csv").read_text().splitlines()))
    assert any(r.get("sanity/saliency/cascading/ssim/network.features.1") for r in metrics)


def test_independent_mode_at_given_epochs_and_the_model_untouched(tmp_path):
    callback = SanityCheckCallback(
        methods=["saliency"],
        mode="independent",
        similarities=["spearman_abs"],
        layers=["network.classifier", "network.features.18"],
        num_probe=3,
        at_epochs=[1],
    )
    trainer, model = fit(tmp_path, callback, epochs=3)
    assert [h["epoch"] for h in callback.history] == [1.0]
    assert set(callback.history[0]) >= {
        "sanity/saliency/independent/spearman_abs/network.classifier",
        "sanity/saliency/independent/spearman_abs/network.features.18",
        "sanity/saliency/independent/spearman_abs/mean",
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback.run(trainer, model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_empty_maps_of_the_trained_model_warn_once_naming_method_and_layer(tmp_path):
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=4)
    with torch.no_grad():
        network.classifier.weight.copy_(-network.classifier.weight.abs() - 0.1)  # Grad-CAM = ReLU(negative) = 0
    model = ImageClassifier(network, lr=0.0, weight_decay=0.0)
    callback = SanityCheckCallback(
        methods=["gradcam"], num_probe=3, similarities=["spearman_abs", "ssim"], layers=["network.classifier"]
    )
    with pytest.warns(UserWarning) as records:
        fit(tmp_path, callback, epochs=2, model=model)
    trained = [str(r.message) for r in records if "of the trained model" in str(r.message)]
    assert len(trained) == 1 and "method 'gradcam' (layer 'network.features')" in trained[0]
    for record in callback.history:
        assert not any(math.isnan(value) for value in record.values())  # defined, never NaN


def test_setup_and_construction_errors(tmp_path):
    callback = SanityCheckCallback(methods=["saliency"], layers=["network.pool"], num_probe=2)
    with pytest.raises(
        ValueError, match=r"cannot randomise layers \['network.pool'\].*top first: \['network.classifier'"
    ):
        fit(tmp_path, callback)
    with pytest.raises(ValueError, match="Unknown similarities"):
        SanityCheckCallback(similarities=["pearson"])
    with pytest.raises(ValueError, match="mode must be"):
        SanityCheckCallback(mode="bottom_up")
    with pytest.raises(ValueError, match="at_epochs"):
        SanityCheckCallback(at_epochs=[])
