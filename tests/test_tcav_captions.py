"""The caption experiment runs end to end and shows the TCAV paper's pattern on ConceptWorld."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "tcav_captions"


def load_run():
    spec = importlib.util.spec_from_file_location("tcav_captions_run", EXPERIMENT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check(rows, out: Path) -> None:
    for name in ("results.csv", "results.json", "tcav_vs_reliance.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == rows
    assert len(list(out.glob("gradcam_noise_*.png"))) == len(rows)
    clean, noisy = rows[0], rows[-1]
    assert clean["caption_noise"] == 0.0 and noisy["caption_noise"] == 1.0
    # With truthful captions the model leans on them (accuracy drops without them) and TCAV sees the
    # caption concept; with random captions neither holds.
    assert clean["reliance_on_captions"] > noisy["reliance_on_captions"]
    assert abs(noisy["reliance_on_captions"]) < 0.05
    assert clean["tcav_caption"] > noisy["tcav_caption"] + 0.3


def test_small_caption_experiment(tmp_path, one_thread):
    run = load_run()
    out = tmp_path / "tcav_captions"
    rows = run.main(["--config", str(EXPERIMENT / "small.yaml"), "--out", str(out)])
    check(rows, out)


@pytest.mark.slow
def test_full_caption_experiment(tmp_path, one_thread):
    run = load_run()
    config = yaml.safe_load((EXPERIMENT / "full.yaml").read_text())
    out = tmp_path / "tcav_captions"
    rows = run.run(config, out)
    check(rows, out)
    assert [row["caption_noise"] for row in rows] == config["noise_levels"]
