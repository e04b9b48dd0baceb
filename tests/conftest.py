"""Shared fixtures: offline W&B, small ConceptWorld data, a model trained once per session."""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from xai_lightning import ConceptWorldDataModule, ImageClassifier, SmallCNN

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


class ReleaseProcessGroup(pl.Callback):
    """Ends every spawned rank with a barrier and ``destroy_process_group``.

    Lightning destroys the process group at exit for NCCL only. A gloo rank that exits with its
    group alive aborts now and then while the interpreter tears the group's threads down
    ("terminate called without an active exception", SIGABRT in rank 1): 1 of 40 runs of the
    2-process dissection test, which has no checkpoint barrier to line the ranks up at the end.
    Nothing the callbacks under test compute happens after ``teardown``.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # A rank that never arrives fails the test within two minutes instead of hanging CI.
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=120))
            torch.distributed.destroy_process_group()


class ViewsItsInput(nn.Module):
    """A linear classifier of ``(B, C, side, side)`` images that ``.view()``s them: it needs the
    NCHW layout, so the CPU's channels-last passes must step aside for it."""

    def __init__(self, channels: int = 3, side: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.view(x.shape[0], -1))


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU trainer without progress bars or summaries; everything else from kwargs.

    ``ddp_spawn`` trainers also get :class:`ReleaseProcessGroup`, last, so each rank exits cleanly.
    """
    defaults = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=5,
    )
    defaults.update(kwargs)
    if defaults.get("strategy") == "ddp_spawn":
        defaults["callbacks"] = [*(defaults.get("callbacks") or []), ReleaseProcessGroup()]
    return pl.Trainer(**defaults)


def train_until_accurate(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    accuracy: float,
    max_epochs: int,
    callbacks: list | None = None,
) -> float:
    """Train ``model`` until its validation accuracy reaches ``accuracy`` (or ``max_epochs``); return it.

    A test that needs a trained model must not depend on a lucky seed or on the CPU's floating-point
    rounding: a fixed number of epochs that suffices on one machine can fall short on another. Stopping
    at an accuracy instead makes "trained" mean the same everywhere.
    """
    from pytorch_lightning.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="val/acc", mode="max", stopping_threshold=accuracy, patience=max_epochs)
    trainer = quiet_trainer(
        max_epochs=max_epochs, logger=False, enable_checkpointing=False, callbacks=[*(callbacks or []), stop]
    )
    trainer.fit(model, datamodule)
    return float(trainer.callback_metrics["val/acc"])


def small_datamodule(**kwargs) -> ConceptWorldDataModule:
    defaults = dict(num_train=256, num_val=64, batch_size=32, seed=0)
    defaults.update(kwargs)
    return ConceptWorldDataModule(**defaults)


def small_classifier(num_classes: int = 5, width: int = 8, **kwargs) -> ImageClassifier:
    return ImageClassifier(SmallCNN(num_classes=num_classes, width=width), **kwargs)


def train_weights(tmp_path, callbacks, epochs: int = 3, dropout: float = 0.0, seed: int = 123, **datamodule_kwargs):
    """Train a small SmallCNN with ``callbacks`` and return its final state dict (for bit-identity tests).

    Dropout makes every step draw from the global RNG, so any RNG leak changes the weights.
    """
    from pytorch_lightning.loggers import CSVLogger

    pl.seed_everything(seed)
    model = small_classifier(width=8)
    model.network.dropout.p = dropout
    trainer = quiet_trainer(
        max_epochs=epochs, callbacks=callbacks, logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    trainer.fit(model, small_datamodule(**datamodule_kwargs))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(scope="session")
def trained_shape_model(tmp_path_factory) -> ImageClassifier:
    """SmallCNN trained to ~100 % validation accuracy on ConceptWorld shapes (about 10 s, once)."""
    pl.seed_everything(0)
    datamodule = ConceptWorldDataModule(num_train=2000, num_val=500, batch_size=64, seed=0)
    model = ImageClassifier(SmallCNN(num_classes=5, width=16), lr=3e-3)
    trainer = quiet_trainer(
        max_epochs=6, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path_factory.mktemp("trained"))
    )
    trainer.fit(model, datamodule)
    accuracy = float(trainer.callback_metrics["val/acc"])
    assert accuracy > 0.95, f"fixture model did not train (val/acc={accuracy:.3f})"
    return model.eval()


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


def wandb_command() -> str:
    """The ``wandb`` executable: on PATH, else beside this Python (a venv used without activating it)."""
    import shutil
    import sys

    return shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))


def read_wandb_history(run_dir) -> list[dict]:
    """History records of an offline W&B run, read back with ``wandb leet inspect --json``."""
    import json
    import subprocess

    output = subprocess.run(
        [wandb_command(), "leet", "inspect", "--json", str(run_dir)], check=True, capture_output=True, text=True
    ).stdout
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    return [record["history"]["item"] for record in records if record.get("type") == "history"]


def wandb_run_dir(root) -> Path:
    runs = sorted(Path(root).glob("**/offline-run-*"))
    assert runs, f"no offline W&B run under {root}"
    return runs[-1]


@pytest.fixture(autouse=True)
def finish_dangling_wandb_runs():
    """A test that fails inside fit leaves its W&B run open; later WandbLoggers would attach to it."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture(scope="session")
def standard_and_robust_models():
    """Two SmallCNNs trained alike on ConceptWorld shapes (seed, data, stopping rule), one of them with
    AdversarialTrainingCallback (L2, ε = 0.5, 3 PGD steps). Shared by the robustness tests.

    Each trains until its clean validation accuracy reaches 95 % (at most 15 epochs): a fixed 4 epochs
    on 512 images left the robust model at 30-60 % clean accuracy for some seeds (and CPUs), and its
    large-ε morphs then missed their target. Measured over seeds 0-4: 3-6 epochs, clean accuracy
    0.92-0.99, robust accuracy 0.56-0.67 (standard 0.06-0.34), morph success 1.0 for every seed.
    """
    from xai_lightning.callbacks.adversarial_training import AdversarialTrainingCallback

    models = {}
    for name, callbacks in (("standard", []), ("robust", [AdversarialTrainingCallback(norm="l2", eps=0.5, steps=3)])):
        pl.seed_everything(0)
        model = small_classifier(width=8, lr=3e-3)
        train_until_accurate(
            model,
            small_datamodule(num_train=1024, num_val=128, batch_size=32),
            accuracy=0.95,
            max_epochs=15,
            callbacks=callbacks,
        )
        models[name] = model.eval()
    return models


#: PyTorch's deterministic mode as the test session found it.
_DETERMINISTIC_AT_START = (
    torch.are_deterministic_algorithms_enabled(),
    torch.is_deterministic_algorithms_warn_only_enabled(),
)


@pytest.fixture(autouse=True)
def restore_deterministic_algorithms():
    """``Trainer(deterministic=True)`` switches PyTorch's deterministic mode on for the whole process and
    leaves it on (also from module- and session-scoped fixtures); tests after it (Captum's DeepLift
    max-unpools, which has no deterministic kernel) must not depend on which tests ran first."""
    torch.use_deterministic_algorithms(_DETERMINISTIC_AT_START[0], warn_only=_DETERMINISTIC_AT_START[1])
    yield


def hf_vit(num_labels: int = 5, layers: int = 2, eager: bool = True, seed: int = 0, dropout: float = 0.0):
    """A tiny Hugging Face ``ViTForImageClassification`` built from a config (no download): 32×32
    inputs, 8×8 patches (a 4×4 grid + CLS), eager attention unless ``eager=False`` (then sdpa)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation="eager" if eager else "sdpa",
    )
    return ViTForImageClassification(config).eval()


def hf_bert(vocab_size: int, num_labels: int = 2, layers: int = 1, seed: int = 0, dropout: float = 0.0):
    """A tiny Hugging Face ``BertForSequenceClassification`` built from a config (no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


def logged_csv_figures(log_dir: Path, prefix: str) -> list[dict[str, float]]:
    """The non-empty rows of a CSVLogger's ``metrics.csv`` restricted to keys starting with ``prefix``."""
    import csv

    with open(Path(log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    figures = [{key: float(value) for key, value in row.items() if key.startswith(prefix) and value} for row in rows]
    return [figure for figure in figures if figure]


def load_experiment(path: Path):
    """Import an experiment script (``experiments/<name>/run.py``) as a module, by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"experiment_{Path(path).parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (tiny models only thrash with more), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_wandb_config(run_dir) -> dict:
    """The configuration of an offline W&B run (its ``run.config`` updates, merged), read back with
    ``wandb leet inspect --json``."""
    import json
    import subprocess

    output = subprocess.run(
        [wandb_command(), "leet", "inspect", "--json", str(run_dir)], check=True, capture_output=True, text=True
    ).stdout
    config: dict = {}
    for line in output.splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("type") == "config":
            config.update(record["config"].get("update", {}))
    return config
