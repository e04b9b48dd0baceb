"""The console entry point trains from the YAML config and says where the results are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import read_wandb_history, wandb_run_dir

from xai_lightning.cli import build_cli, main

CONFIG = Path(__file__).resolve().parents[1] / "xai_lightning" / "configs" / "concept_world_gradcam.yaml"


def test_fit_from_the_yaml_config_logs_to_wandb_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--data.init_args.num_train=96",
            "--data.init_args.num_val=32",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    cli.trainer.logger.experiment.finish()  # what the end of the process does
    printed = capsys.readouterr().out
    assert "Where to look:" in printed and "GradCAMCallback: 2 observation(s)" in printed
    history = read_wandb_history(wandb_run_dir(tmp_path))
    assert len([h for h in history if "gradcam/grid.filenames" in h]) == 2
    callback = cli.trainer.callbacks[0]
    assert callback.layer_names == ["network.features", "network.features.13"]


def test_config_names_only_plain_typed_callback_arguments():
    config = yaml.safe_load(CONFIG.read_text())
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "xai_lightning.GradCAMCallback"
    assert all(isinstance(v, (int, float, str, list)) for v in callback["init_args"].values())
    assert config["trainer"]["logger"]["init_args"]["offline"] is True


def test_a_wrong_layer_in_yaml_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="Unknown layer 'network.feature.3'"):
        main(
            [
                "fit",
                "--config",
                str(CONFIG),
                "--trainer.max_epochs=1",
                "--data.init_args.num_train=32",
                "--data.init_args.num_val=16",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                '--trainer.callbacks=[{"class_path": "xai_lightning.GradCAMCallback", '
                '"init_args": {"layers": "network.feature.3"}}]',
            ]
        )


def test_console_entry_point_exits_zero(tmp_path):
    """What the installed ``xai-lightning`` script does: ``sys.exit(main())`` must exit 0."""
    import os
    import subprocess
    import sys

    repo = str(CONFIG.parents[2])
    code = (
        "import sys; from xai_lightning.cli import main; sys.exit(main(["
        f"'fit', '--config', {str(CONFIG)!r}, '--trainer.max_epochs=1', '--trainer.limit_train_batches=2', "
        "'--data.init_args.num_train=64', '--data.init_args.num_val=16', '--trainer.enable_progress_bar=false', "
        f"'--trainer.logger.init_args.save_dir={tmp_path}', '--trainer.default_root_dir={tmp_path}']))"
    )
    env = dict(os.environ, PYTHONPATH=repo, WANDB_MODE="offline")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Where to look:" in done.stdout
