"""The main study on its small config: robust gradients sit on the object, and the report is complete."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests.test_studies import embedded_images

CONFIG = Path(__file__).parents[1] / "experiments" / "configs" / "robust_vs_standard_small.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("robust_vs_standard", CONFIG.parents[1] / "robust_vs_standard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path_factory.mktemp("robust_vs_standard")
    return module.run_study(CONFIG, output_dir=output, wandb=True), yaml.safe_load(CONFIG.read_text())


def test_robust_model_has_more_gradient_energy_on_the_object(study):
    (results, report), _ = study
    final = {name: r.series("robustness/gradient_energy_in_mask")[1][-1] for name, r in results.items()}
    uniform = results["standard"].series("robustness/gradient_energy_in_mask_uniform")[1][-1]
    assert final["robust"] > final["standard"] > uniform, final
    robust_acc = {name: r.series("robustness/robust_acc")[1][-1] for name, r in results.items()}
    assert robust_acc["robust"] > robust_acc["standard"] + 0.1, robust_acc


def test_report_has_every_plot_and_no_broken_images(study):
    (results, report), config = study
    html = report.read_text()
    images = embedded_images(html)
    alts = {image.get("alt", "") for image in images}
    for plot in config["report"]["plots"]:
        assert plot["title"] in alts, plot["title"]
        for name, result in results.items():
            assert any(result.matching(pattern) for pattern in plot["keys"]), (name, plot["title"])
    assert "No data was logged" not in html
    for panel in config["report"]["images"]:
        assert not re.search(rf"no images logged under {re.escape(panel['key'])}", html), panel["key"]
    for result in results.values():
        assert result.wandb_dir is not None and result.wandb_dir.exists()
