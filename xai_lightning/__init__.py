"""xai_lightning: watch a model become interpretable (or not) while it trains.

PyTorch Lightning callbacks that explain a training model every epoch — Grad-CAM and other
attributions, concept vectors, network dissection, robustness — without changing its training,
and log maps, scores and tables to Weights & Biases (offline by default), TensorBoard or files.
"""

from xai_lightning.attribution import GradCAM, attribute, available_methods, grad_cam
from xai_lightning.callbacks import AttributionCallback, GradCAMCallback, ObserverCallback, ProbeSet
from xai_lightning.attribution import GradCAM, grad_cam
from xai_lightning.attribution import KernelShap, Lime, PredictionDifferenceAnalysis, Rise, Xrai
from xai_lightning.callbacks import GradCAMCallback, ObserverCallback, ProbeSet
from xai_lightning.callbacks import GradCAMCallback, ObserverCallback, ProbeSet, TCAVCallback
from xai_lightning.concepts import TCAV, ConceptCAVs, TCAVResult, train_cavs
from xai_lightning.callbacks import DissectionCallback, GradCAMCallback, ObserverCallback, ProbeSet
from xai_lightning.callbacks.adversarial_training import AdversarialTrainingCallback
from xai_lightning.callbacks.robustness import RobustnessCallback
from xai_lightning.callbacks import ExplainerNetworkCallback, GradCAMCallback, ObserverCallback, ProbeSet
from xai_lightning.core import LayerCapture, LayerNotFoundError, ObserverGuard, observe
from xai_lightning.dissection import BrodenDataset, ConceptVocabulary, DissectionResult, dissect, export_broden
from xai_lightning.data import ConceptWorld, ConceptWorldDataModule, DigitsDataModule
from xai_lightning.data import Bars, BarsDataModule, ColouredDigits, ColouredDigitsDataModule
from xai_lightning.concepts import ConceptIntervention, compare_cace_estimators, conexp, encdec_cace, ground_truth_cace
from xai_lightning.models import CifarResNet, ImageClassifier, SmallCNN
from xai_lightning.robustness import FGSM, PGD, fgsm, pgd

__version__ = "0.1.0"

__all__ = [
    "AttributionCallback",
    "KernelShap",
    "Lime",
    "PredictionDifferenceAnalysis",
    "Rise",
    "Xrai",
    "Bars",
    "BarsDataModule",
    "ColouredDigits",
    "ColouredDigitsDataModule",
    "ConceptIntervention",
    "compare_cace_estimators",
    "conexp",
    "encdec_cace",
    "ground_truth_cace",
    "AdversarialTrainingCallback",
    "FGSM",
    "PGD",
    "RobustnessCallback",
    "fgsm",
    "pgd",
    "CifarResNet",
    "ConceptCAVs",
    "BrodenDataset",
    "ConceptVocabulary",
    "ConceptWorld",
    "ConceptWorldDataModule",
    "DigitsDataModule",
    "DissectionCallback",
    "DissectionResult",
    "ExplainerNetworkCallback",
    "GradCAM",
    "GradCAMCallback",
    "ImageClassifier",
    "LayerCapture",
    "LayerNotFoundError",
    "ObserverCallback",
    "ObserverGuard",
    "ProbeSet",
    "SmallCNN",
    "attribute",
    "available_methods",
    "TCAV",
    "TCAVCallback",
    "TCAVResult",
    "dissect",
    "export_broden",
    "grad_cam",
    "observe",
    "train_cavs",
]
