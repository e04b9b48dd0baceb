"""Studies: train variants of a model under identical conditions, observe them, and report.

Sits beside ``callbacks/`` (it drives Lightning trainers); see ``experiments/`` for the runnable
studies and their YAML configs.
"""

from xai_lightning.studies.comparison import VariantResult, run_comparison
from xai_lightning.studies.comparison_report import first_middle_last, write_comparison_report
from xai_lightning.studies.config import instantiate

__all__ = ["VariantResult", "first_middle_last", "instantiate", "run_comparison", "write_comparison_report"]
