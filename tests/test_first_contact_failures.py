"""Failures a user should never have to debug (issue 16), each reproduced as a new user met it.

Every test states what used to happen; each now gets one clear error, at ``setup`` when it can be
known then, or the correct behaviour.
"""

from __future__ import annotations

import csv
import importlib
import warnings

import pytest
import torch
from conftest import ViewsItsInput, quiet_trainer, small_classifier, small_datamodule
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from xai_lightning import ConceptWorld, GradCAMCallback, ImageClassifier, SmallCNN, attribute, grad_cam

TINY_DATA = dict(num_train=64, num_val=32, batch_size=16)


class CountingClassifier(ImageClassifier):
    """Counts training steps, to prove an error comes before the first one."""

    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


def counting(network: nn.Module | None = None) -> CountingClassifier:
    CountingClassifier.steps = 0
    return CountingClassifier(network or SmallCNN(num_classes=5, width=4))


def fails_at_setup(tmp_path, callback, match, model=None, datamodule=None):
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*failed at epoch.*")  # no warning instead of the error
        with pytest.raises((ValueError, TypeError), match=match) as error:
            trainer.fit(model or counting(), datamodule or small_datamodule(**TINY_DATA))
    assert CountingClassifier.steps == 0, "the error came after training started"
    return error.value


# ---------------------------------------------------------------------------------------------- explainer network
def test_explainer_training_errors_follow_on_error(tmp_path, monkeypatch):
    """Used to: a failing explainer step raised out of on_train_batch_end and killed the run."""
    from xai_lightning import ExplainerNetworkCallback
    from xai_lightning.explainer import ExplainerNetwork

    calls = {"n": 0}
    original = ExplainerNetwork.loss

    def flaky_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("explainer loss exploded")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExplainerNetwork, "loss", flaky_loss)
    callback = ExplainerNetworkCallback(
        input_layer="network.features.6", target_layer="network.features.13", num_filters=2, num_probe=4, top_k=2
    )
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    with pytest.warns(
        UserWarning, match="ExplainerNetworkCallback failed at epoch 0 to train the explainer at batch 1"
    ):
        trainer.fit(small_classifier(width=4), small_datamodule(**TINY_DATA))
    assert trainer.current_epoch == 2 and len(callback.failures) == 1
    assert "explainer loss exploded" in callback.failures[0]
    assert callback.steps == 1 + 4  # epoch 0: one step, then paused; epoch 1: all four
    assert len(callback.history) == 2

    calls["n"] = 0
    strict = ExplainerNetworkCallback(
        input_layer="network.features.6",
        target_layer="network.features.13",
        num_filters=2,
        num_probe=4,
        top_k=2,
        on_error="raise",
    )
    trainer = quiet_trainer(max_epochs=1, callbacks=[strict], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(RuntimeError, match="explainer loss exploded"):
        trainer.fit(small_classifier(width=4), small_datamodule(**TINY_DATA))


# ---------------------------------------------------------------------------------------------- Grad-CAM at setup
class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(num_classes=5, width=4)

    def forward(self, x):
        return {"logits": self.network(x), "features": x.mean((2, 3))}


class DictClassifier(CountingClassifier):
    def forward(self, x):
        return self.network(x)

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        x, y = batch
        return nn.functional.cross_entropy(self(x)["logits"], y)

    def validation_step(self, batch, batch_idx):
        return None


def test_grad_cam_on_a_linear_layer_fails_at_setup(tmp_path):
    """Used to: a warning at every epoch ("Grad-CAM needs a layer with (B, C, h, w) output")."""
    error = fails_at_setup(tmp_path, GradCAMCallback(layers="network.classifier"), "not a \\(B, C, h, w\\) feature map")
    assert "network.classifier" in str(error)


def test_grad_cam_on_a_pooled_layer_fails_at_setup(tmp_path):
    fails_at_setup(tmp_path, GradCAMCallback(layers="network.pool"), "single position .after global pooling")


def test_a_dict_output_without_output_key_fails_at_setup_naming_the_keys(tmp_path):
    """Used to: a warning at every epoch."""
    CountingClassifier.steps = 0
    model = DictClassifier(DictOutput(), num_classes=5)
    error = fails_at_setup(tmp_path, GradCAMCallback(layers="network.network.features.13"), "output_key", model=model)
    assert "'logits'" in str(error) and "'features'" in str(error)


def test_a_wrong_output_key_fails_at_setup(tmp_path):
    CountingClassifier.steps = 0
    model = DictClassifier(DictOutput(), num_classes=5)
    fails_at_setup(
        tmp_path,
        GradCAMCallback(layers="network.network.features.13", output_key="logit"),
        "output_key='logit'",
        model=model,
    )


def test_max_batch_zero_fails_at_construction():
    """Used to: accepted, then a warning at every epoch."""
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        GradCAMCallback(max_batch=0)
    from xai_lightning import AttributionCallback

    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        AttributionCallback(methods=["saliency"], max_batch=0)


def test_an_empty_probe_set_says_so():
    """Used to: ``set_probe(images[:0])`` failed later with an indexing error."""
    with pytest.raises(ValueError, match="probe set is empty"):
        GradCAMCallback().set_probe(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- attribute()
@pytest.mark.parametrize("method", ["saliency", "occlusion", "integrated_gradients"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_attribute_refuses_non_finite_inputs(method, bad):
    """Used to: NaN inputs gave NaN maps silently, and occlusion crashed with ``atol -nan``."""
    model = SmallCNN(num_classes=5, width=4).eval()
    images = torch.rand(3, 3, 32, 32)
    images[1, 0, 4, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf in 1 of 3 examples \\(rows 1\\)"):
        attribute(model, images, target=0, method=method)


def test_a_single_image_without_batch_dimension_gets_our_message():
    """Used to: the model's conv error ("Expected 3D (unbatched) or 4D input ...") with no hint."""
    model = SmallCNN(num_classes=5, width=4).eval()
    with pytest.raises(ValueError, match="unsqueeze\\(0\\) -> \\(1, 3, 32, 32\\)") as error:
        attribute(model, torch.rand(3, 32, 32), target=0, method="saliency")
    assert error.value.__cause__ is not None  # the model's own error stays visible


# ---------------------------------------------------------------------------------------------- channels-last retry
class FailsOnce(nn.Module):
    """A model whose first forward fails for a reason that has nothing to do with memory layout."""

    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(num_classes=3, width=4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("transient failure in a custom layer")
        return self.network(x)


def test_a_one_off_forward_error_is_raised_not_retried_in_nchw():
    """Used to: the error was swallowed, the forward silently re-run in NCHW, and the result returned."""
    with pytest.raises(RuntimeError, match="transient failure"):
        attribute(FailsOnce().eval(), torch.rand(2, 3, 32, 32), target=0, method="saliency")


def test_a_model_that_needs_nchw_still_falls_back():
    model = ViewsItsInput(channels=3, side=8, num_classes=3).eval()
    images = torch.rand(4, 3, 8, 8)
    maps = attribute(model, images, target=1, method="saliency")
    expected = model.head.weight[1].detach().abs().view(3, 8, 8).expand(4, -1, -1, -1)
    assert torch.allclose(maps, expected)


# ---------------------------------------------------------------------------------------------- dissection
class MisnamedWorld(torch.utils.data.Dataset):
    """ConceptWorld whose ``concept_names`` lost its last three entries: 20-odd names for more masks."""

    def __init__(self, world: ConceptWorld) -> None:
        self.world = world
        self.concept_names = tuple(world.concept_names[:-3])
        self.concept_categories = {name: world.concept_categories[name] for name in self.concept_names}

    def __len__(self):
        return len(self.world)

    def __getitem__(self, index):
        return self.world[index]


def test_dissection_refuses_fewer_concept_names_than_masks(tmp_path):
    """Used to: accepted silently, so masks were dissected under the wrong names."""
    from torch.utils.data import DataLoader

    from xai_lightning import DissectionCallback
    from xai_lightning.dissection import vocabulary_from_dataset

    world = ConceptWorld(num_samples=16, seed=0)
    named, masks = len(world.concept_names) - 3, len(world.concept_names)
    with pytest.raises(ValueError, match=f"names {named} concepts but its items carry {masks} concept masks"):
        vocabulary_from_dataset(MisnamedWorld(world), num_masks=masks)
    train = DataLoader(ConceptWorld(num_samples=32, seed=1), batch_size=16, collate_fn=_tuples)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[DissectionCallback(layers=["network.features.13"], num_probe=8)],
        logger=CSVLogger(str(tmp_path)),
    )
    CountingClassifier.steps = 0
    with pytest.raises(ValueError, match=f"names {named} concepts but its items carry {masks}"):
        trainer.fit(counting(), train_dataloaders=train, val_dataloaders=DataLoader(MisnamedWorld(world), batch_size=8))
    assert CountingClassifier.steps == 0


def _tuples(items):
    return torch.stack([item["image"] for item in items]), torch.tensor([item["label"] for item in items])


def test_dissection_refuses_a_pooled_layer():
    """Used to: a 1x1 layer was dissected silently (every unit's mask = the whole image)."""
    from xai_lightning.dissection import ConceptVocabulary, dissect

    world = ConceptWorld(num_samples=8, seed=0)
    model = SmallCNN(num_classes=5, width=4).eval()
    vocabulary = ConceptVocabulary.from_names(world.concept_names, world.concept_categories)
    with pytest.raises(ValueError, match="one position per unit .after global pooling"):
        dissect(model, "pool", world.images, world.masks(torch.arange(8)), vocabulary)


def test_dissection_callback_refuses_a_pooled_layer_at_setup(tmp_path):
    from xai_lightning import DissectionCallback

    fails_at_setup(tmp_path, DissectionCallback(layers=["network.pool"], num_probe=8), "after global pooling")


# ---------------------------------------------------------------------------------------------- paths
def test_tcav_concept_names_cannot_escape_concept_dir(tmp_path):
    """Used to: ``concepts=["../x"]`` read images from outside ``concept_dir``."""
    from xai_lightning import TCAVCallback

    (tmp_path / "concepts" / "striped").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    for name in ("../x", "/etc", "striped/../../x"):
        with pytest.raises(ValueError, match="is not a sub-folder of concept_dir"):
            TCAVCallback(layers=["features.13"], concepts=[name], concept_dir=str(tmp_path / "concepts"))
    TCAVCallback(layers=["features.13"], concepts=["striped"], concept_dir=str(tmp_path / "concepts"))


def test_broden_index_paths_must_stay_inside_the_dataset(tmp_path):
    """Used to: ``index.csv`` entries such as ``../../secret.png`` were opened."""
    from xai_lightning.dissection import BrodenDataset, export_broden

    root = export_broden(ConceptWorld(num_samples=4, seed=0), tmp_path / "broden")
    BrodenDataset(root)  # the exported index is fine
    index = root / "index.csv"
    rows = list(csv.DictReader(open(index)))
    for column, bad in (("image", "../../outside.png"), ("color", "/etc/passwd")):
        tampered = [dict(row) for row in rows]
        tampered[2][column] = bad
        with open(index, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(tampered)
        with pytest.raises(ValueError, match="points outside the dataset's images directory"):
            BrodenDataset(root)


# ---------------------------------------------------------------------------------------------- dtypes and names
def test_grad_cam_of_a_float64_model_is_float64():
    """Used to: maps were float32 whatever the model's precision."""
    model = SmallCNN(num_classes=5, width=4).double().eval()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    result = grad_cam(model, images, target=0, layers="features.13")
    maps = result.maps["features.13"]
    assert maps.dtype == torch.float64
    reference = grad_cam(model.float(), images.float(), target=0, layers="features.13").maps["features.13"]
    assert torch.allclose(maps.float(), reference, atol=1e-5)


def test_no_package_attribute_hides_a_submodule():
    """Used to: ``xai_lightning.robustness.pgd`` was the function, so ``import xai_lightning.robustness.pgd as m``
    gave a function and ``mock.patch("xai_lightning.robustness.pgd.x")`` failed."""
    import pkgutil

    import xai_lightning

    shadowed = set()
    for info in pkgutil.walk_packages(xai_lightning.__path__, "xai_lightning."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(package.__path__):
            value = getattr(package, sub.name, None)
            if value is not None and not isinstance(value, type(package)):
                shadowed.add(f"{info.name}.{sub.name}")
    assert not shadowed, f"functions named like their module: {sorted(shadowed)}"
    from xai_lightning.robustness import pgd, projected_gradient_descent

    assert callable(pgd) and projected_gradient_descent.pgd is pgd
