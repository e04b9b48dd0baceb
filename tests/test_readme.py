"""The README's promises: two opening commands, the CI runs the test one, and its examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_one():
    before_first_section = README.split("\n## ")[0]
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", before_first_section, flags=re.S)]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_command, test_command = commands
    assert main_command.startswith("pip install torch==2.13.0") and "robust_vs_standard.py --config" in main_command
    config = main_command.split("--config")[1].strip()
    assert (ROOT / config).exists()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    assert "|| true" not in ci and "set -euo pipefail" in ci


def test_python_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    blocks = code_blocks("python")
    assert len(blocks) >= 3
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert list((tmp_path / "runs" / "readme" / "wandb").glob("offline-run-*"))
