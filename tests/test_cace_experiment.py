"""The CaCE study (experiments/cace): the small config runs in CI, its outputs parse, and the ground truth behaves.

Independent evidence: the BARS generator's confounding level. A CNN trained without confounding
cannot gain from reading colour, so its ground-truth colour effect must be ≈ 0; trained with the
colour fully tied to the class it takes the shortcut, so the effect must be large — and the
observational ConExp must be at least as large (it adds the orientation effect carried by the
correlation).
"""

from __future__ import annotations

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


def run_config(name: str, output_dir: Path) -> tuple[dict, list[dict]]:
    study = load_study()
    config = yaml.safe_load((EXPERIMENT / name).read_text())
    paths = study.run(config, output_dir)
    for key in ("csv", "markdown", "bars_plot", "digits_plot"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(study.TABLE_COLUMNS) <= set(rows[0])
    markdown = paths["markdown"].read_text().splitlines()
    table = [line for line in markdown if line.startswith("| bars") or line.startswith("| coloured_digits")]
    assert len(table) == len(config["bars"]["levels"]) + len(config["digits"]["sigmas"])
    from PIL import Image

    for key in ("bars_plot", "digits_plot"):
        assert min(Image.open(paths[key]).size) > 100
    return config, rows


def check_bars(rows: list[dict]) -> None:
    bars = {float(row["level"]): row for row in rows if row["dataset"] == "bars"}
    low, high = bars[min(bars)], bars[max(bars)]
    for row in (low, high):
        assert float(row["accuracy"]) > 0.9
        for key in ("gt_cace", "encdec_cace", "conexp", "tcav", "tcav_p_value"):
            assert not math.isnan(float(row[key])), key
    assert abs(float(low["gt_cace"])) < 0.1, low
    assert float(high["gt_cace"]) > float(low["gt_cace"]) + 0.3, (low, high)  # grows with confounding
    assert float(high["conexp"]) >= float(high["gt_cace"]) - 0.05  # observational contrast overstates


def test_small_config_writes_a_table_and_plots(tmp_path):
    config, rows = run_config("small.yaml", tmp_path)
    check_bars(rows)
    digits = [row for row in rows if row["dataset"] == "coloured_digits"]
    assert len(digits) == len(config["digits"]["sigmas"]) * len(config["digits"]["targets"])


@pytest.mark.slow
def test_full_config(tmp_path):
    config, rows = run_config("full.yaml", tmp_path)
    check_bars(rows)
    bars = sorted((float(r["level"]), float(r["gt_cace"])) for r in rows if r["dataset"] == "bars")
    assert bars[-1][1] > bars[0][1] + 0.3
