"""Studies: train the arms of a study once per seed under identical conditions, observe them, and report.

Sits beside ``callbacks/`` (it drives Lightning trainers); see ``experiments/`` for the runnable
studies and their YAML configs. :mod:`~xai_lightning.studies.statistics` (intervals, paired tests,
Holm, verdict words) is pure numpy/scipy. Names are loaded lazily, so importing the statistics does
not import Lightning through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudyResult": "comparison",
    "run_study": "comparison",
    "curve_figure": "comparison_report",
    "first_middle_last": "comparison_report",
    "study_verdict": "comparison_report",
    "write_study_report": "comparison_report",
    "instantiate": "config",
    "load_study_config": "config",
    "StudyPlan": "plan",
    "plan_study": "plan",
    "report_runs": "report_command",
    "RunRecord": "runs",
    "find_runs": "runs",
    "load_run": "runs",
    "load_runs": "runs",
    "Interval": "statistics",
    "bootstrap_interval": "statistics",
    "holm": "statistics",
    "paired_comparison": "statistics",
    "t_interval": "statistics",
    "VerdictMeasure": "verdict",
    "VerdictRow": "verdict",
    "VerdictSpec": "verdict",
    "parse_verdict": "verdict",
    "verdict_table": "verdict",
}

__all__ = [
    "Interval",
    "RunRecord",
    "StudyPlan",
    "StudyResult",
    "VerdictMeasure",
    "VerdictRow",
    "VerdictSpec",
    "bootstrap_interval",
    "curve_figure",
    "find_runs",
    "first_middle_last",
    "holm",
    "instantiate",
    "load_run",
    "load_runs",
    "load_study_config",
    "paired_comparison",
    "parse_verdict",
    "plan_study",
    "report_runs",
    "run_study",
    "study_verdict",
    "t_interval",
    "verdict_table",
    "write_study_report",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xai_lightning.studies' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xai_lightning.studies.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
