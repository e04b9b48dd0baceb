"""Every callback, built small, in ONE list: the Lightning-integration tests run over all of them.

Add a new callback here (one ``CallbackCase``) and it is checked for monitorable metrics, every
precision, and a clean model after an interrupted ``fit`` (tests/test_lightning_integration.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytorch_lightning as pl


@dataclass(frozen=True)
class CallbackCase:
    """A callback factory and what its logged scalars promise.

    Attributes:
        name: test id.
        make: builds a fresh, small callback (seconds per epoch on a CPU with ``SmallCNN(width=4)``
            on 32×32 ConceptWorld images).
        namespace: prefix of its logged keys.
        observes: whether it is an :class:`~xai_lightning.callbacks.ObserverCallback` (has a history).
        may_be_nan: logged keys that are legitimately NaN on a barely trained model (e.g. a score of
            empty maps); every other logged value must be finite.
        datamodule: keyword arguments of the ConceptWorld datamodule it needs.
    """

    name: str
    make: Callable[[], pl.Callback]
    namespace: str
    observes: bool = True
    may_be_nan: tuple[str, ...] = ()
    datamodule: dict = field(default_factory=dict)


def _gradcam() -> pl.Callback:
    from xai_lightning import GradCAMCallback

    return GradCAMCallback(layers="network.features.13", num_probe=8, max_images=4)


def _attribution() -> pl.Callback:
    from xai_lightning import AttributionCallback

    return AttributionCallback(methods=["saliency", "gradcam"], num_probe=4, max_images=2, layer="network.features.13")


def _tcav() -> pl.Callback:
    from xai_lightning import TCAVCallback

    return TCAVCallback(
        layers=["network.features.13"],
        concepts=["striped"],
        num_random=2,
        examples_per_concept=6,
        num_probe=12,
        num_similar=0,
    )


def _dissection() -> pl.Callback:
    from xai_lightning import DissectionCallback

    return DissectionCallback(layers=["network.features.13"], num_probe=8, top_units=1, top_images=2)


def _robustness() -> pl.Callback:
    from xai_lightning import RobustnessCallback

    return RobustnessCallback(
        num_probe=4, steps=1, max_images=2, synthesis_epochs=[], morph_steps=1, inversion_steps=1, visualization_steps=1
    )


def _explainer() -> pl.Callback:
    from xai_lightning import ExplainerNetworkCallback

    return ExplainerNetworkCallback(
        input_layer="network.features.6",
        target_layer="network.features.13",
        num_filters=2,
        num_probe=4,
        top_k=2,
        max_images=2,
        max_filters=2,
    )


def _adversarial() -> pl.Callback:
    from xai_lightning import AdversarialTrainingCallback

    return AdversarialTrainingCallback(norm="l2", eps=0.25, steps=1)


def _uncertainty() -> pl.Callback:
    from xai_lightning import UncertaintyCallback

    # A layer's features as familiarity input: the callback keeps a forward hook on the model while training.
    return UncertaintyCallback(num_probe=8, num_ood=8, mc_passes=3, familiarity="network.features.13", max_images=2)


#: The lead appends the callbacks of other issues here after merging.
CALLBACK_FACTORIES: list[CallbackCase] = [
    CallbackCase("gradcam", _gradcam, "gradcam", may_be_nan=("energy_in_mask", "pointing_game")),
    CallbackCase("attribution", _attribution, "attribution", may_be_nan=("energy_in_mask", "pointing_game")),
    CallbackCase(
        "tcav", _tcav, "tcav", may_be_nan=("p_value", "score", "significant"), datamodule={"label_by": "texture"}
    ),
    CallbackCase("dissection", _dissection, "dissection"),
    CallbackCase("robustness", _robustness, "robustness", may_be_nan=("energy_in_mask",)),
    CallbackCase("explainer", _explainer, "explainer", may_be_nan=("location_instability",)),
    CallbackCase("adversarial", _adversarial, "adversarial_training", observes=False),
    CallbackCase("uncertainty", _uncertainty, "uncertainty"),
]
