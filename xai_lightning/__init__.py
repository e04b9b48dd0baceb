"""xai_lightning: watch a model become interpretable (or not) while it trains.

PyTorch Lightning callbacks that explain a training model every epoch — Grad-CAM and other
attributions, concept vectors, network dissection, robustness — without changing its training,
and log maps, scores and tables to Weights & Biases (offline by default), TensorBoard or files.
"""

from xai_lightning.attribution import (
    GradCAM,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    PredictionDifferenceAnalysis,
    Rise,
    Saliency,
    SmoothGrad,
    Xrai,
    attribute,
    available_methods,
    grad_cam,
)
from xai_lightning.callbacks import (
    AdversarialTrainingCallback,
    AttributionCallback,
    DissectionCallback,
    ExplainerNetworkCallback,
    GradCAMCallback,
    ObserverCallback,
    ProbeSet,
    RobustnessCallback,
    TCAVCallback,
    UncertaintyCallback,
)
from xai_lightning.concepts import (
    TCAV,
    ConceptCAVs,
    ConceptIntervention,
    TCAVResult,
    compare_cace_estimators,
    conexp,
    encdec_cace,
    ground_truth_cace,
    train_cavs,
)
from xai_lightning.core import LayerCapture, LayerNotFoundError, ObserverGuard, observe
from xai_lightning.data import (
    Bars,
    BarsDataModule,
    ColouredDigits,
    ColouredDigitsDataModule,
    ConceptWorld,
    ConceptWorldDataModule,
    DigitsDataModule,
)
from xai_lightning.dissection import BrodenDataset, ConceptVocabulary, DissectionResult, dissect, export_broden
from xai_lightning.explainer import (
    ExplainerNetwork,
    evaluate_explainer,
    fit_explainer,
    knowledge_consistency,
    location_instability,
)
from xai_lightning.models import CifarResNet, ImageClassifier, SmallCNN
from xai_lightning.models import EnsembleClassifier, VariationalClassifier
from xai_lightning.robustness import FGSM, PGD, fgsm, pgd

__version__ = "0.1.0"

__all__ = [
    "AdversarialTrainingCallback",
    "attribute",
    "AttributionCallback",
    "available_methods",
    "Bars",
    "BarsDataModule",
    "BrodenDataset",
    "CifarResNet",
    "ColouredDigits",
    "ColouredDigitsDataModule",
    "compare_cace_estimators",
    "ConceptCAVs",
    "ConceptIntervention",
    "ConceptVocabulary",
    "ConceptWorld",
    "ConceptWorldDataModule",
    "conexp",
    "DigitsDataModule",
    "dissect",
    "DissectionCallback",
    "DissectionResult",
    "encdec_cace",
    "EnsembleClassifier",
    "evaluate_explainer",
    "ExplainerNetwork",
    "ExplainerNetworkCallback",
    "export_broden",
    "fgsm",
    "FGSM",
    "fit_explainer",
    "grad_cam",
    "GradCAM",
    "GradCAMCallback",
    "ground_truth_cace",
    "ImageClassifier",
    "IntegratedGradients",
    "KernelShap",
    "knowledge_consistency",
    "LayerCapture",
    "LayerNotFoundError",
    "Lime",
    "location_instability",
    "observe",
    "ObserverCallback",
    "ObserverGuard",
    "Occlusion",
    "pgd",
    "PGD",
    "PredictionDifferenceAnalysis",
    "ProbeSet",
    "Rise",
    "RobustnessCallback",
    "Saliency",
    "SmallCNN",
    "SmoothGrad",
    "TCAV",
    "TCAVCallback",
    "TCAVResult",
    "train_cavs",
    "UncertaintyCallback",
    "VariationalClassifier",
    "Xrai",
]
