"""The CaCE study (experiments/cace): a cut-down copy of the small config runs in CI, its outputs parse,
the rows carry ≥ 3 seeds with error bars, and the ground truth behaves.

Independent evidence: the BARS generator's confounding level. A CNN trained without confounding
cannot gain from reading colour, so its ground-truth colour effect must be ≈ 0; trained with the
colour 90 % tied to the class (and shape harder than colour) it takes the shortcut, so the effect
must be clearly positive — and the observational ConExp must be larger still (it adds the
orientation effect carried by the correlation). The estimators' accuracy against the ground truth
is tested in tests/test_cace.py on better-trained VAEs; here the VAE trains for two epochs only.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import math
from pathlib import Path

import pytest
import yaml

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "cace"


def load_study():
    spec = importlib.util.spec_from_file_location("run_cace", EXPERIMENT / "run_cace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ci_config() -> dict:
    """small.yaml with fewer runs: 3 seeds, BARS 0 / 0.9 / one asymmetric row (the same classifiers as the small
    study's), one digits row, and a VAE trained for two epochs (its accuracy is tested in test_cace.py)."""
    config = yaml.safe_load((EXPERIMENT / "small.yaml").read_text())
    config = copy.deepcopy(config)
    config["name"] = "cace_ci"
    config["vae"].update(epochs=2)
    config["bars"].update(levels=[0.0, 0.9])
    config["digits"].update(sigmas=[0.0], targets=[0])
    config["tcav"].update(examples_per_concept=20)
    return config


def read(paths: dict) -> tuple[list[dict], list[dict]]:
    with paths["runs"].open() as handle:
        runs = list(csv.DictReader(handle))
    with paths["summary"].open() as handle:
        summary = list(csv.DictReader(handle))
    return runs, summary


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    study = load_study()
    config = ci_config()
    before = sorted(p.name for p in EXPERIMENT.iterdir())
    paths = study.run(config, tmp_path_factory.mktemp("cace_ci"))
    assert sorted(p.name for p in EXPERIMENT.iterdir()) == before  # nothing written into the source tree
    return study, config, paths


def test_outputs_are_written_and_parse(ci_study):
    study, config, paths = ci_study
    for key in ("runs", "summary", "markdown", "bars_plot", "digits_plot", "html"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    runs, summary = read(paths)
    assert set(study.RUN_COLUMNS) <= set(runs[0])
    rows = len(config["bars"]["levels"]) + len(config["bars"]["asymmetric"]) + len(config["digits"]["sigmas"])
    assert len(summary) == rows and all(int(row["seeds"]) == 3 for row in summary)
    for row in summary:  # mean ± sd and a t-interval around the mean for every estimator
        for key in ("gt_cace", "encdec_cace", "dec_cace", "conexp", "tcav"):
            low, mean, high = (float(row[f"{key}_{s}"]) for s in ("ci_low", "mean", "ci_high"))
            assert low <= mean <= high and float(row[f"{key}_sd"]) >= 0, (row["row"], key)
    markdown = paths["markdown"].read_text()
    assert markdown.count("| bars |") == 3 and "±" in markdown and "Mean absolute error" in markdown
    assert "<img" in paths["html"].read_text()
    from PIL import Image

    for key in ("bars_plot", "digits_plot"):
        assert min(Image.open(paths[key]).size) > 100


def test_ground_truth_rises_with_confounding_over_seeds(ci_study):
    _, _, paths = ci_study
    _, summary = read(paths)
    bars = {row["row"]: row for row in summary if row["dataset"] == "bars"}
    low, high = bars["confounding=0"], bars["confounding=0.9"]
    # The small study's classifiers (README): GT +0.05 ± 0.02 at 0, +0.40 ± 0.20 at 0.9; ConExp +0.85 at 0.9.
    assert abs(float(low["gt_cace_mean"])) < 0.1, low
    assert float(high["gt_cace_mean"]) > float(low["gt_cace_mean"]) + 0.15, (low, high)
    assert float(high["conexp_mean"]) > float(high["gt_cace_mean"]) + 0.1  # the correlation adds to it
    for row in bars.values():
        assert not math.isnan(float(row["tcav_p_median"]))


def test_outputs_never_go_into_the_source_tree(tmp_path):
    study = load_study()
    config = ci_config()
    with pytest.raises(ValueError, match="source tree"):
        study.output_directory(config, EXPERIMENT / "out")
    assert study.output_directory(config, tmp_path / "x") == (tmp_path / "x").resolve()
    assert study.output_directory(config, study.SOURCE_ROOT / "runs" / "cace") == study.SOURCE_ROOT / "runs" / "cace"
    bad = ci_config()
    bad["bars"]["asymmetric"] = [{"label": "bad", "colour_given_class": [[0.6, 0.6], [0.5, 0.5]]}]
    with pytest.raises(ValueError, match="must sum to 1"):
        study.bars_rows(bad["bars"])
    bad = ci_config()
    bad["tcav"]["num_random"] = 5
    with pytest.raises(ValueError, match="num_random must be >= 10"):
        study.run(bad, tmp_path)


@pytest.mark.slow
def test_full_config(tmp_path):
    study = load_study()
    config = yaml.safe_load((EXPERIMENT / "full.yaml").read_text())
    paths = study.run(config, tmp_path)
    _, summary = read(paths)
    bars = sorted(
        (float(r["level"]), float(r["gt_cace_mean"]))
        for r in summary
        if r["dataset"] == "bars" and r["row"].startswith("confounding=")
    )
    assert abs(bars[0][1]) < 0.1 and bars[-1][1] > bars[0][1] + 0.2
