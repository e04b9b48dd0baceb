"""Every callback, built small, in ONE list: the Lightning-integration tests run over all of them.

Add a new callback here (one ``CallbackCase``) and it is checked for monitorable metrics, every
precision, one W&B row per observation with its settings in ``run.config``, bit-identical weights,
and a clean model after an interrupted ``fit`` (tests/test_lightning_integration.py).
``test_every_callback_is_a_case`` fails when a callback exported by ``xai_lightning.callbacks`` is
missing here.

Most callbacks run on ConceptWorld with ``SmallCNN(width=4)``; the others bring the model and data
they need (a small ViT, a text classifier on TriggerText, BARS, a dropout CNN).
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
        model: builds the LightningModule it needs, when ``SmallCNN(width=4)`` does not do.
        data: builds the datamodule it needs, when ConceptWorld does not do.
        compiled_error: the clear error it raises at setup on a ``torch.compile``d network (when it
            cannot work on one), as a regular expression; None: it works on one.
        probe_table: it logs a per-probe table (``<namespace>/probes``: image, label, prediction,
            probability, scores) beside its grid of maps.
    """

    name: str
    make: Callable[[], pl.Callback]
    namespace: str
    observes: bool = True
    may_be_nan: tuple[str, ...] = ()
    datamodule: dict = field(default_factory=dict)
    model: Callable[[], pl.LightningModule] | None = None
    data: Callable[[], pl.LightningDataModule] | None = None
    compiled_error: str | None = None
    probe_table: bool = False

    def build_model(self, width: int = 4) -> pl.LightningModule:
        """A fresh model for this callback (``SmallCNN(width)`` on ConceptWorld unless it needs another)."""
        if self.model is not None:
            return self.model()
        from conftest import small_classifier

        return small_classifier(width=width)

    def build_data(self, **concept_world) -> pl.LightningDataModule:
        """Small data for this callback: ConceptWorld with ``concept_world`` and :attr:`datamodule`
        arguments, unless it needs other data (then about 4 training steps of 16 examples)."""
        if self.data is not None:
            return self.data()
        from conftest import small_datamodule

        return small_datamodule(**{**concept_world, **self.datamodule})


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


def _explanation_quality() -> pl.Callback:
    from xai_lightning import ExplanationQualityCallback

    return ExplanationQualityCallback(
        methods=["saliency", "gradcam"],
        metrics=["deletion_auc", "faithfulness_correlation"],
        metric_options={"deletion_auc": {"steps": 4}, "faithfulness_correlation": {"draws": 4}},
        num_probe=4,
        layer="network.features.13",
    )


def _sanity_check() -> pl.Callback:
    from xai_lightning import SanityCheckCallback

    return SanityCheckCallback(
        methods=["saliency", "gradcam"],
        similarities=["spearman_abs", "ssim"],
        layers=["network.classifier", "network.features.12"],
        num_probe=2,
        max_images=1,
        layer="network.features.13",
    )


def _attention() -> pl.Callback:
    from xai_lightning import AttentionCallback

    return AttentionCallback(num_probe=4, max_images=2)


def _vit_classifier() -> pl.LightningModule:
    from xai_lightning import ImageClassifier, VisionTransformer

    return ImageClassifier(VisionTransformer(patch_size=8, dim=16, depth=1, heads=2), num_classes=5)


def _text_attribution() -> pl.Callback:
    from xai_lightning import TextAttributionCallback

    return TextAttributionCallback(methods=["integrated_gradients", "occlusion"], num_probe=4, steps=4, max_sentences=2)


TEXT_LENGTH = 16


def _trigger_text() -> pl.LightningDataModule:
    from xai_lightning.data import TriggerTextDataModule

    return TriggerTextDataModule(num_train=64, num_val=32, batch_size=16, max_length=TEXT_LENGTH, min_length=6)


def _text_classifier() -> pl.LightningModule:
    from xai_lightning import SequenceClassifier, TextClassifier

    vocab = _trigger_text().vocab_size
    return SequenceClassifier(TextClassifier(vocab, 2, dim=16, max_length=TEXT_LENGTH), pad_id=0)


def _uncertainty() -> pl.Callback:
    from xai_lightning import UncertaintyCallback

    # A layer's features as familiarity input: the callback keeps a forward hook on the model while training.
    return UncertaintyCallback(num_probe=8, num_ood=8, mc_passes=3, familiarity="network.features.13", max_images=2)


def _dropout_classifier() -> pl.LightningModule:
    from xai_lightning import ImageClassifier, SmallCNN

    return ImageClassifier(SmallCNN(num_classes=5, width=4, dropout=0.3))


def _frequency() -> pl.Callback:
    from xai_lightning import FrequencyCallback

    return FrequencyCallback(num_probe=8, radii=[4, 8], clean=True, max_images=2)


def _embedding() -> pl.Callback:
    from xai_lightning import EmbeddingCallback

    return EmbeddingCallback(
        num_probe=8, tsne_epochs=[], knn_reference=16, knn_k=3, knn_every_n_epochs=1, factor="colour"
    )


def _margin() -> pl.Callback:
    from xai_lightning import MarginCallback

    return MarginCallback(num_probe=4, subspaces=["low", "full"], max_iter=4)


def _information_plane() -> pl.Callback:
    from xai_lightning import InformationPlaneCallback

    return InformationPlaneCallback(num_probe=8, decoder_images=16, decoder_steps=4)


def _cace() -> pl.Callback:
    from xai_lightning import CaCECallback

    return CaCECallback(
        concept="colour=green",
        target="vertical",
        num_probe=16,
        tcav_layers="network.features.13",
        num_random=2,
        examples_per_concept=6,
    )


def _bars() -> pl.LightningDataModule:
    from xai_lightning import BarsDataModule

    return BarsDataModule(num_train=64, num_val=32, confounding=0.9, image_size=16, batch_size=16, seed=3)


def _bars_classifier() -> pl.LightningModule:
    from xai_lightning import ImageClassifier, SmallCNN

    return ImageClassifier(SmallCNN(num_classes=2, width=4))


#: The lead appends the callbacks of other issues here after merging.
CALLBACK_FACTORIES: list[CallbackCase] = [
    CallbackCase("gradcam", _gradcam, "gradcam", may_be_nan=("energy_in_mask", "pointing_game"), probe_table=True),
    CallbackCase(
        "attribution", _attribution, "attribution", may_be_nan=("energy_in_mask", "pointing_game"), probe_table=True
    ),
    CallbackCase(
        "tcav", _tcav, "tcav", may_be_nan=("p_value", "score", "significant"), datamodule={"label_by": "texture"}
    ),
    CallbackCase("dissection", _dissection, "dissection"),
    CallbackCase("robustness", _robustness, "robustness", may_be_nan=("energy_in_mask",)),
    CallbackCase(
        "explainer",
        _explainer,
        "explainer",
        may_be_nan=("location_instability",),
        compiled_error=r"'network' is torch.compile'd.*Train without compiling that module",
    ),
    CallbackCase("adversarial", _adversarial, "adversarial_training", observes=False),
    CallbackCase("explanation_quality", _explanation_quality, "quality"),
    CallbackCase("sanity_check", _sanity_check, "sanity"),
    CallbackCase("attention", _attention, "attention", model=_vit_classifier, probe_table=True),
    CallbackCase("text_attribution", _text_attribution, "text", model=_text_classifier, data=_trigger_text),
    CallbackCase("uncertainty", _uncertainty, "uncertainty", model=_dropout_classifier),
    CallbackCase("frequency", _frequency, "frequency"),
    CallbackCase("embedding", _embedding, "embedding"),
    CallbackCase("margin", _margin, "margin"),
    CallbackCase("information_plane", _information_plane, "information"),
    CallbackCase("cace", _cace, "cace", model=_bars_classifier, data=_bars),
]
