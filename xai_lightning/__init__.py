"""xai_lightning: watch a model become interpretable (or not) while it trains.

PyTorch Lightning callbacks that explain a training model every epoch — Grad-CAM and other
attributions, concept vectors, network dissection, robustness — without changing its training,
and log maps, scores and tables to Weights & Biases (offline by default), TensorBoard or files.

The package root is lazy (PEP 562): ``import xai_lightning`` imports nothing else, and each name
below is imported from its subpackage on first use, so ``from xai_lightning import grad_cam``
never loads Lightning, and ``from xai_lightning import GradCAMCallback`` loads it only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_lightning.lazy_exports import lazy_exports

__version__ = "0.1.0"

#: Public name -> the subpackage that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "GradCAM",
            "IntegratedGradients",
            "KernelShap",
            "Lime",
            "Occlusion",
            "PredictionDifferenceAnalysis",
            "Rise",
            "Saliency",
            "SmoothGrad",
            "Xrai",
            "attribute",
            "available_methods",
            "grad_cam",
        ),
        "xai_lightning.attribution",
    ),
    **dict.fromkeys(
        (
            "AdversarialTrainingCallback",
            "AttributionCallback",
            "DissectionCallback",
            "ExplainerNetworkCallback",
            "GradCAMCallback",
            "ObserverCallback",
            "ProbeSet",
            "RobustnessCallback",
            "TCAVCallback",
        ),
        "xai_lightning.callbacks",
    ),
    **dict.fromkeys(
        (
            "TCAV",
            "ConceptCAVs",
            "ConceptIntervention",
            "TCAVResult",
            "compare_cace_estimators",
            "conexp",
            "encdec_cace",
            "ground_truth_cace",
            "train_cavs",
        ),
        "xai_lightning.concepts",
    ),
    **dict.fromkeys(("LayerCapture", "LayerNotFoundError", "ObserverGuard", "observe"), "xai_lightning.core"),
    **dict.fromkeys(
        (
            "Bars",
            "BarsDataModule",
            "ColouredDigits",
            "ColouredDigitsDataModule",
            "ConceptWorld",
            "ConceptWorldDataModule",
            "DigitsDataModule",
        ),
        "xai_lightning.data",
    ),
    **dict.fromkeys(
        ("BrodenDataset", "ConceptVocabulary", "DissectionResult", "dissect", "export_broden"),
        "xai_lightning.dissection",
    ),
    **dict.fromkeys(
        ("ExplainerNetwork", "evaluate_explainer", "fit_explainer", "knowledge_consistency", "location_instability"),
        "xai_lightning.explainer",
    ),
    **dict.fromkeys(("CifarResNet", "ImageClassifier", "SmallCNN"), "xai_lightning.models"),
    **dict.fromkeys(("FGSM", "PGD", "fgsm", "pgd"), "xai_lightning.robustness"),
    **dict.fromkeys(
        (
            "ExplanationQualityCallback",
            "SanityCheckCallback",
            "AttentionCallback",
            "TextAttributionCallback",
        ),
        "xai_lightning.callbacks",
    ),
    **dict.fromkeys(
        (
            "AttentionRelevance",
            "AttentionRollout",
            "LayerIntegratedGradients",
            "TokenOcclusion",
            "attention_maps",
        ),
        "xai_lightning.attribution",
    ),
    **dict.fromkeys(("LayerSpec",), "xai_lightning.core"),
    **dict.fromkeys(
        (
            "TriggerText",
            "TriggerTextDataModule",
        ),
        "xai_lightning.data",
    ),
    **dict.fromkeys(
        (
            "PaddingMasked",
            "SequenceClassifier",
            "TextClassifier",
            "VisionTransformer",
        ),
        "xai_lightning.models",
    ),
    "UncertaintyCallback": "xai_lightning.callbacks",
    **dict.fromkeys(
        (
            "EnsembleClassifier",
            "VariationalClassifier",
        ),
        "xai_lightning.models",
    ),
    **dict.fromkeys(
        (
            "EmbeddingCallback",
            "FrequencyCallback",
            "InformationPlaneCallback",
            "MarginCallback",
        ),
        "xai_lightning.callbacks",
    ),
    "CaCECallback": "xai_lightning.callbacks",
    "dec_cace": "xai_lightning.concepts",
}

__all__ = sorted(_EXPORTS, key=str.lower)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from xai_lightning.attribution import (
        AttentionRelevance,
        AttentionRollout,
        GradCAM,
        IntegratedGradients,
        KernelShap,
        LayerIntegratedGradients,
        Lime,
        Occlusion,
        PredictionDifferenceAnalysis,
        Rise,
        Saliency,
        SmoothGrad,
        TokenOcclusion,
        Xrai,
        attention_maps,
        attribute,
        available_methods,
        grad_cam,
    )
    from xai_lightning.callbacks import (
        AdversarialTrainingCallback,
        AttentionCallback,
        AttributionCallback,
        CaCECallback,
        DissectionCallback,
        EmbeddingCallback,
        ExplainerNetworkCallback,
        ExplanationQualityCallback,
        FrequencyCallback,
        GradCAMCallback,
        InformationPlaneCallback,
        MarginCallback,
        ObserverCallback,
        ProbeSet,
        RobustnessCallback,
        SanityCheckCallback,
        TCAVCallback,
        TextAttributionCallback,
        UncertaintyCallback,
    )
    from xai_lightning.concepts import (
        TCAV,
        ConceptCAVs,
        ConceptIntervention,
        TCAVResult,
        compare_cace_estimators,
        conexp,
        dec_cace,
        encdec_cace,
        ground_truth_cace,
        train_cavs,
    )
    from xai_lightning.core import LayerCapture, LayerNotFoundError, LayerSpec, ObserverGuard, observe
    from xai_lightning.data import (
        Bars,
        BarsDataModule,
        ColouredDigits,
        ColouredDigitsDataModule,
        ConceptWorld,
        ConceptWorldDataModule,
        DigitsDataModule,
        TriggerText,
        TriggerTextDataModule,
    )
    from xai_lightning.dissection import BrodenDataset, ConceptVocabulary, DissectionResult, dissect, export_broden
    from xai_lightning.explainer import (
        ExplainerNetwork,
        evaluate_explainer,
        fit_explainer,
        knowledge_consistency,
        location_instability,
    )
    from xai_lightning.models import (
        CifarResNet,
        EnsembleClassifier,
        ImageClassifier,
        PaddingMasked,
        SequenceClassifier,
        SmallCNN,
        TextClassifier,
        VariationalClassifier,
        VisionTransformer,
    )
    from xai_lightning.robustness import FGSM, PGD, fgsm, pgd
