"""The verdict table: per measure, each arm's mean ± CI over seeds at the last epoch, the paired
difference, p (paired t-test, Holm-corrected across the table) and a plain-words verdict.

The measures are declared in the study config, one row each::

    verdict:
      reference: standard           # the arms compared, seed by seed
      treatment: robust
      measures:
        - {name: Grad-CAM energy in mask, key: "gradcam/.*/energy_in_mask", better: higher,
           baseline: "gradcam/.*/energy_in_mask_uniform"}
        - {name: deletion AUC, key: "quality/gradcam/deletion_auc", better: lower,
           baseline: "quality/random/deletion_auc", requires: ExplanationQualityCallback}

``key`` is a regular expression over the logged scalar keys (full match); a run's value is the mean
over the keys it matches (e.g. over layers), at the last epoch it was logged. ``baseline`` is the
reference a measure must beat (the uniform map, random maps, chance), shown beside it. ``better``
says which direction is desirable (shown; the verdict words say "higher"/"lower" either way).
``requires`` names the callback that logs the measure when the study may not configure it: the
row then reads "not logged (needs …)" instead of failing the config check. Rows whose data is
absent always render as "not logged" — they never crash the report and never vanish from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from xai_lightning.studies.runs import RunRecord
from xai_lightning.studies.statistics import (
    MIN_SEEDS,
    MIN_SEEDS_WILCOXON,
    VERDICT_RULE,
    Interval,
    PairedComparison,
    holm,
    paired_comparison,
    t_interval,
    verdict_word,
)

__all__ = ["NOT_LOGGED", "VerdictMeasure", "VerdictRow", "VerdictSpec", "parse_verdict", "verdict_table"]

Better = Literal["higher", "lower"]
NOT_LOGGED = "not logged"
_MEASURE_FIELDS = {"name", "key", "better", "baseline", "requires"}
#: Key prefixes the LightningModule itself logs (ImageClassifier: train/loss, val/acc, …).
MODULE_NAMESPACES = frozenset({"train", "val", "test"})


@dataclass(frozen=True)
class VerdictMeasure:
    """One declared row of the verdict table (see the module docstring)."""

    name: str
    key: str
    better: Better
    baseline: str | None = None
    requires: str | None = None

    @property
    def namespace(self) -> str | None:
        """The key's literal first segment (``"gradcam"`` of ``"gradcam/.*/energy"``), None if not literal."""
        head = self.key.split("/", 1)[0]
        return head if re.fullmatch(r"[A-Za-z0-9_\-]+", head) else None


@dataclass(frozen=True)
class VerdictSpec:
    reference: str
    treatment: str
    measures: tuple[VerdictMeasure, ...]
    alpha: float = 0.05
    confidence: float = 0.95
    bootstrap_seed: int = 0

    def rule(self) -> str:
        return VERDICT_RULE.format(
            treatment=self.treatment,
            reference=self.reference,
            alpha=self.alpha,
            min_seeds=MIN_SEEDS,
            min_wilcoxon=MIN_SEEDS_WILCOXON,
        )


def _measure(entry: Any, index: int) -> VerdictMeasure:
    where = f"verdict.measures[{index}]"
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a mapping {{name, key, better, baseline?, requires?}}; got {entry!r}")
    label = f"{where} ({entry.get('name', entry.get('key', '?'))!r})"
    unknown = sorted(set(entry) - _MEASURE_FIELDS)
    if unknown:
        raise ValueError(f"{label} has unknown field(s) {unknown}; a measure takes {sorted(_MEASURE_FIELDS)}.")
    for needed in ("name", "key", "better"):
        if not entry.get(needed):
            raise ValueError(
                f"{label} lacks {needed!r}; a measure needs name, key (a regex of logged keys) and better."
            )
    if entry["better"] not in ("higher", "lower"):
        raise ValueError(f"{label}: better must be 'higher' or 'lower'; got {entry['better']!r}")
    for field in ("key", "baseline"):
        if entry.get(field) is not None:
            try:
                re.compile(str(entry[field]))
            except re.error as error:
                raise ValueError(
                    f"{label}: {field} {entry[field]!r} is not a valid regular expression: {error}"
                ) from None
    return VerdictMeasure(
        name=str(entry["name"]),
        key=str(entry["key"]),
        better=entry["better"],
        baseline=None if entry.get("baseline") is None else str(entry["baseline"]),
        requires=None if entry.get("requires") is None else str(entry["requires"]),
    )


def parse_verdict(
    config: Mapping[str, Any] | None,
    variants: Sequence[str],
    namespaces: Mapping[str, str] | None = None,
) -> VerdictSpec | None:
    """Validate the ``verdict`` section of a study config.

    Args:
        config: the section (None: no verdict table).
        variants: the study's arm names; ``reference`` and ``treatment`` must be among them.
        namespaces: key namespace → the class that logs it, for every callback and module of the
            study. A measure whose key's namespace nobody logs is an *unknown measure* and fails
            here — unless it names the callback it ``requires`` (then it reads "not logged").
            None: skip this check (reports on runs, where the study's callbacks are not known).
    """
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"verdict must be a mapping with reference, treatment and measures; got {config!r}")
    unknown = sorted(set(config) - {"reference", "treatment", "measures", "alpha", "confidence", "bootstrap_seed"})
    if unknown:
        raise ValueError(f"verdict has unknown field(s) {unknown}.")
    for side in ("reference", "treatment"):
        if config.get(side) not in variants:
            raise ValueError(
                f"verdict.{side} is {config.get(side)!r}, which is not a variant of the study "
                f"(variants: {list(variants)})."
            )
    if config["reference"] == config["treatment"]:
        raise ValueError("verdict.reference and verdict.treatment must be different variants.")
    entries = config.get("measures") or []
    if not isinstance(entries, list) or not entries:
        raise ValueError("verdict.measures must be a non-empty list of {name, key, better, baseline?, requires?}.")
    measures = tuple(_measure(entry, i) for i, entry in enumerate(entries))
    names = [m.name for m in measures]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"verdict.measures has two rows named {duplicate!r}; names must be unique.")
    if namespaces is not None:
        known = dict.fromkeys(MODULE_NAMESPACES, "the LightningModule") | dict(namespaces)
        for index, measure in enumerate(measures):
            if measure.namespace is None or measure.namespace in known:
                continue
            if measure.requires is not None and measure.requires not in known.values():
                continue  # declared as logged by a callback this study does not configure: "not logged (needs …)"
            raise ValueError(
                f"verdict.measures[{index}] ({measure.name!r}): unknown measure: nothing in this study logs keys "
                f"under {measure.namespace + '/'!r} (key {measure.key!r}). Logged namespaces: "
                f"{', '.join(sorted(known))}. Fix the key, add the callback that logs it, or declare it with "
                "requires: <CallbackName> to show it as not logged."
            )
    alpha = float(config.get("alpha", 0.05))
    confidence = float(config.get("confidence", 0.95))
    if not 0 < alpha < 1 or not 0 < confidence < 1:
        raise ValueError(f"verdict.alpha and verdict.confidence must be in (0, 1); got {alpha}, {confidence}")
    return VerdictSpec(
        reference=str(config["reference"]),
        treatment=str(config["treatment"]),
        measures=measures,
        alpha=alpha,
        confidence=confidence,
        bootstrap_seed=int(config.get("bootstrap_seed", 0)),
    )


@dataclass(frozen=True)
class VerdictRow:
    """One computed row. ``verdict`` is the words (or "not logged …" when there is no data)."""

    measure: VerdictMeasure
    keys: tuple[str, ...]
    reference: Interval | None
    treatment: Interval | None
    comparison: PairedComparison | None
    adjusted_p: float
    baseline: float | None
    verdict: str

    @property
    def logged(self) -> bool:
        return self.comparison is not None

    def cells(self) -> list[str]:
        """The row as table cells (the report's and the CLI's format)."""

        def p_text(p: float | None) -> str:
            if p is None or math.isnan(p):
                return "–"
            return "< 0.001" if p < 0.001 else f"{p:.3f}"

        base = "–" if self.baseline is None else f"{self.baseline:.3g}"
        if not self.logged:
            return [
                self.measure.name,
                self.measure.better,
                base,
                self.verdict,
                self.verdict,
                "–",
                "–",
                "–",
                "–",
                self.verdict,
            ]
        assert self.comparison is not None
        wilcoxon = self.comparison.p_wilcoxon
        return [
            self.measure.name,
            self.measure.better,
            base,
            str(self.reference),
            str(self.treatment),
            str(self.comparison.difference),
            p_text(self.comparison.p_value),
            p_text(self.adjusted_p),
            p_text(wilcoxon) if wilcoxon is not None else f"n < {MIN_SEEDS_WILCOXON}",
            self.verdict,
        ]


def verdict_columns(spec: VerdictSpec) -> list[str]:
    pct = f"{spec.confidence:.0%}"
    return [
        "measure",
        "better",
        "baseline",
        f"{spec.reference} mean [{pct} CI]",
        f"{spec.treatment} mean [{pct} CI]",
        f"{spec.treatment} − {spec.reference} [{pct} CI]",
        "p (paired t)",
        "p (Holm)",
        "p (Wilcoxon)",
        "verdict",
    ]


def _by_seed(runs: Iterable[RunRecord], variant: str, pattern: str) -> dict[int, float]:
    out = {}
    for run in runs:
        if run.variant == variant and run.seed is not None:
            value = run.last(pattern)
            if value is not None:
                out[run.seed] = value
    return out


def verdict_table(runs: Sequence[RunRecord], spec: VerdictSpec) -> list[VerdictRow]:
    """Compute every declared row from the runs (last epoch of each run; seeds paired)."""
    # (measure, keys, reference interval, treatment interval, comparison, baseline, why absent), before Holm.
    partial: list[
        tuple[
            VerdictMeasure,
            tuple[str, ...],
            Interval | None,
            Interval | None,
            PairedComparison | None,
            float | None,
            str | None,
        ]
    ] = []
    for measure in spec.measures:
        reference = _by_seed(runs, spec.reference, measure.key)
        treatment = _by_seed(runs, spec.treatment, measure.key)
        seeds = sorted(set(reference) & set(treatment))
        keys = tuple(
            sorted(
                {
                    k
                    for run in runs
                    if run.variant in (spec.reference, spec.treatment)
                    for k in run.matching(measure.key)
                }
            )
        )
        baseline_values = [
            v
            for run in runs
            if measure.baseline and run.variant in (spec.reference, spec.treatment)
            for v in [run.last(measure.baseline)]
            if v is not None
        ]
        baseline = float(np.mean(baseline_values)) if baseline_values else None
        if not seeds:
            absent = NOT_LOGGED + (f" (needs {measure.requires})" if measure.requires else "")
            partial.append((measure, keys, None, None, None, baseline, absent))
            continue
        comparison = paired_comparison(
            [treatment[s] for s in seeds],
            [reference[s] for s in seeds],
            confidence=spec.confidence,
            seed=spec.bootstrap_seed,
        )
        partial.append(
            (
                measure,
                keys,
                t_interval(list(reference.values()), spec.confidence),
                t_interval(list(treatment.values()), spec.confidence),
                comparison,
                baseline,
                None,
            )
        )
    p_values = [np.nan if row[4] is None or row[4].n < MIN_SEEDS else row[4].p_value for row in partial]
    adjusted = holm(p_values)
    rows = []
    for (measure, keys, reference_interval, treatment_interval, paired, baseline, why_absent), p in zip(
        partial, adjusted
    ):
        if paired is None:
            words = str(why_absent)
        else:
            words = verdict_word(float(p), paired.difference, paired.n, spec.treatment, spec.alpha)
        rows.append(
            VerdictRow(measure, keys, reference_interval, treatment_interval, paired, float(p), baseline, words)
        )
    return rows
