"""Session fixtures for the concept tests: a SmallCNN trained to classify ConceptWorld by texture.

Import the fixture into a test module (``from concept_fixtures import trained_texture_model``);
pytest then shares one instance per session.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer

from xai_lightning import ConceptWorldDataModule, ImageClassifier, SmallCNN


@pytest.fixture(scope="session")
def trained_texture_model(tmp_path_factory):
    """``(model, datamodule)``: SmallCNN(width 8) at ~100 % validation accuracy on ConceptWorld textures
    (classes plain, striped, dotted), about 20 s once per session."""
    threads = torch.get_num_threads()
    # One thread: the same weights on any machine, and no thread hand-offs on a busy CPU (10× faster here).
    torch.set_num_threads(1)
    try:
        return _train_texture_model(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_texture_model(tmp_path_factory):
    pl.seed_everything(0)
    datamodule = ConceptWorldDataModule(num_train=1000, num_val=300, batch_size=64, seed=0, label_by="texture")
    model = ImageClassifier(SmallCNN(num_classes=3, width=8), lr=3e-3)
    trainer = quiet_trainer(
        max_epochs=4, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path_factory.mktemp("texture"))
    )
    trainer.fit(model, datamodule)
    accuracy = float(trainer.callback_metrics["val/acc"])
    assert accuracy > 0.95, f"texture fixture model did not train (val/acc={accuracy:.3f})"
    return model.eval(), datamodule
