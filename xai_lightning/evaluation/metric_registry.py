"""Explanation metrics by name — what the callback and the experiments configure from YAML.

=============================  =======================================  ==========================
name                           metric                                   better
=============================  =======================================  ==========================
``deletion_auc``               :class:`DeletionAUC`                     lower
``insertion_auc``              :class:`InsertionAUC`                    higher
``faithfulness_correlation``   :class:`FaithfulnessCorrelation`         higher
``infidelity``                 :class:`Infidelity`                      lower
``max_sensitivity``            :class:`MaxSensitivity` (needs a method) lower
``road_morf``                  :class:`ROAD` ``order="morf"``           lower
``road_lerf``                  :class:`ROAD` ``order="lerf"``           higher
``pointing_game``              :class:`PointingGame` (needs masks)      higher
``relevance_mass``             :class:`RelevanceMass` (needs masks)     higher
=============================  =======================================  ==========================
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from xai_lightning.evaluation.deletion_insertion import DeletionAUC, InsertionAUC
from xai_lightning.evaluation.explanation_infidelity import Infidelity
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.faithfulness import FaithfulnessCorrelation
from xai_lightning.evaluation.localisation_metrics import PointingGame, RelevanceMass
from xai_lightning.evaluation.remove_and_debias import ROAD
from xai_lightning.evaluation.sensitivity import MaxSensitivity

__all__ = ["available_metrics", "build_metric", "metric_direction", "metric_needs_masks", "metric_option_names"]

_METRICS: dict[str, Callable[..., ExplanationMetric]] = {
    "deletion_auc": DeletionAUC,
    "insertion_auc": InsertionAUC,
    "faithfulness_correlation": FaithfulnessCorrelation,
    "infidelity": Infidelity,
    "max_sensitivity": MaxSensitivity,
    "road_morf": functools.partial(ROAD, order="morf"),
    "road_lerf": functools.partial(ROAD, order="lerf"),
    "pointing_game": PointingGame,
    "relevance_mass": RelevanceMass,
}
#: Options the callback sets itself (per method, or from its own arguments), not the user per metric.
_RESERVED = {"model", "method", "method_options", "kwargs", "order"}


def available_metrics() -> list[str]:
    """Every metric name, in the table's order."""
    return list(_METRICS)


def _factory(name: str) -> Callable[..., ExplanationMetric]:
    if name not in _METRICS:
        close = difflib.get_close_matches(name, list(_METRICS), n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown explanation metric {name!r}.{hint} Available metrics: {', '.join(_METRICS)}.")
    return _METRICS[name]


def _metric_class(name: str) -> type[ExplanationMetric]:
    """The class behind a registered metric (the entries are classes or partials of them)."""
    factory = _factory(name)
    cls = factory.func if isinstance(factory, functools.partial) else factory
    assert isinstance(cls, type) and issubclass(cls, ExplanationMetric), f"{name!r} is registered as {cls!r}"
    return cls


def metric_option_names(name: str) -> list[str]:
    """The options a metric takes (for YAML and error messages)."""
    cls = _metric_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in _RESERVED | {"self"}]


def metric_needs_masks(name: str) -> bool:
    return bool(_metric_class(name).needs_masks)


def metric_direction(name: str) -> str:
    """``"lower"`` or ``"higher"``: which values mean a better explanation."""
    _factory(name)
    return "lower" if name in ("deletion_auc", "infidelity", "max_sensitivity", "road_morf") else "higher"


def build_metric(name: str, model: nn.Module, **options: Any) -> ExplanationMetric:
    """A configured metric; unknown names and options fail listing the valid ones."""
    valid = metric_option_names(name) + (["method", "method_options"] if name == "max_sensitivity" else [])
    unknown = [option for option in options if option not in valid]
    if unknown:
        raise TypeError(
            f"{name} has no option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}."
        )
    return _factory(name)(model, **options)
