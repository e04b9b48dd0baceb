"""The ViT attention study (experiments/vit_attention): the small config runs, its outputs parse, and
the random-map reference behaves as a chance level must."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import yaml

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "vit_attention"


def test_small_config_writes_results_summary_plots_and_report(tmp_path):
    spec = importlib.util.spec_from_file_location("vit_attention_run", EXPERIMENT / "run.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    config = yaml.safe_load((EXPERIMENT / "small.yaml").read_text())
    paths = study.run(config, tmp_path)
    for key in ("csv", "summary", "plot", "maps", "report"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    rows = list(csv.DictReader(paths["csv"].open()))
    methods = {row["method"] for row in rows}
    assert methods == {"gradcam_block0", "gradcam_block1", "rollout", "relevance", "random"}
    assert len(rows) == len(config["seeds"]) * config["epochs"] * len(methods)
    for row in rows:
        assert 0.0 <= float(row["energy_in_mask"]) <= 1.0
        # Deletion AUC of a probability curve (trapezoid over the removed fraction 0..1) lies in [0, 1].
        assert 0.0 <= float(row["deletion_auc"]) <= 1.0
    # Random maps on the patch grid score about the object's area, the uniform map's score.
    random = [float(r["energy_in_mask"]) for r in rows if r["method"] == "random"]
    uniform = float(rows[0]["energy_in_mask_uniform"])
    assert abs(sum(random) / len(random) - uniform) < 0.1
    summary = json.loads(paths["summary"].read_text())
    assert summary["methods"]["rollout"]["verdict"] == "too few seeds"  # two seeds: no claim is made
    assert "deletion AUC" in paths["report"].read_text()
