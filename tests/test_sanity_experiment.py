"""The sanity-check experiment runs end to end, writes a self-contained report and shows the paper's pattern."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "sanity_checks"


def load_run():
    return load_experiment(EXPERIMENT / "run.py")


def check(result, config, out: Path) -> None:
    for name in ("results.json", "report.html", "curves_cascading.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "http" not in report.split("<body>")[1]
    stored = json.loads((out / "results.json").read_text())
    layers = stored["layers"]
    for method in config["methods"]:
        for similarity in config["similarities"]:
            assert len(stored["curves"][f"cascading/{method}/{similarity}"]) == len(layers)
        assert set(stored["data_randomisation"][method]) == set(config["similarities"])
    top = slice(0, 5)  # the classifier and the last stage
    curve = {
        m: statistics.mean(result["curves"][f"cascading/{m}/spearman_abs"][top])
        for m in ("gradient", "guided_backprop")
    }
    assert curve["guided_backprop"] > curve["gradient"] + 0.1
    assert result["random_label_train_accuracy"] > 0.5  # the permuted labels were (partly) memorised


def test_small_sanity_check_experiment(tmp_path, one_thread):
    run = load_run()
    out = tmp_path / "sanity"
    result = run.main(["--config", str(EXPERIMENT / "small.yaml"), "--out", str(out)])
    check(result, yaml.safe_load((EXPERIMENT / "small.yaml").read_text()), out)


@pytest.mark.slow
def test_full_sanity_check_experiment(tmp_path, one_thread):
    run = load_run()
    config = yaml.safe_load((EXPERIMENT / "full.yaml").read_text())
    result = run.run(config, tmp_path / "sanity")
    check(result, config, tmp_path / "sanity")
