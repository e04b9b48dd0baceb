"""The README's commands print progress and results, not advertising or deprecation notices
(issue 16, "quiet console"): no Lightning "💡 Tip", no wandb notice about the anonymous setting, no
DeprecationWarning/FutureWarning raised from our code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("💡 Tip", "anonymous setting", "DeprecationWarning", "FutureWarning")

#: The main study's shape (two arms, adversarial training, W&B offline, report), shrunk to seconds.
MICRO_STUDY = {
    "name": "micro",
    "seeds": [0],
    "data": {
        "class_path": "xai_lightning.ConceptWorldDataModule",
        "init_args": {"num_train": 64, "num_val": 32, "batch_size": 32},
    },
    "model": {
        "class_path": "xai_lightning.ImageClassifier",
        "init_args": {"network": {"class_path": "xai_lightning.SmallCNN", "init_args": {"num_classes": 5, "width": 4}}},
    },
    "trainer": {"max_epochs": 1, "enable_checkpointing": False, "deterministic": True, "log_every_n_steps": 1},
    "observers": [{"class_path": "xai_lightning.GradCAMCallback", "init_args": {"num_probe": 4}}],
    "variants": {
        "standard": [],
        "robust": [{"class_path": "xai_lightning.AdversarialTrainingCallback", "init_args": {"eps": 1.0, "steps": 1}}],
    },
    "verdict": {
        "reference": "standard",
        "treatment": "robust",
        "measures": [{"name": "clean accuracy", "key": "val/acc", "better": "higher"}],
    },
    "report": {"title": "Micro study", "plots": [{"title": "Accuracy", "keys": ["val/acc"]}]},
}


def run_quietly(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    env.pop("WANDB_SILENT", None)  # what a user's shell has: nothing set
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, *arguments], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in NOISE)]


def test_the_main_study_command_is_quiet(tmp_path):
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump(MICRO_STUDY))
    done = run_quietly(
        [
            str(ROOT / "experiments" / "robust_vs_standard.py"),
            "--config",
            str(config),
            "--output-dir",
            str(tmp_path / "runs"),
        ],
        tmp_path,
    )
    assert "Report:" in done.stdout and (tmp_path / "runs" / "report.html").exists()
    assert noise_in(done.stdout + done.stderr) == []


def test_the_cli_fit_command_is_quiet(tmp_path):
    done = run_quietly(
        [
            "-m",
            "xai_lightning.cli",
            "fit",
            "--config",
            "concept_world_gradcam",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.init_args.num_train=64",
            "--data.init_args.num_val=16",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        tmp_path,
    )
    assert "Where to look:" in done.stdout
    assert noise_in(done.stdout + done.stderr) == []
