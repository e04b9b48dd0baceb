"""TCAVCallback end to end: bit-identical training, what W&B holds (read back from disk), resume,
setup errors, folders from YAML, and DDP equal to one process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    assert_bit_identical,
    quiet_trainer,
    read_wandb_history,
    small_classifier,
    small_datamodule,
    train_weights,
    wandb_run_dir,
)
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning import ConceptWorld, LayerNotFoundError, TCAVCallback
from xai_lightning.concepts import concept_examples_from_world

LAYERS = ["network.features.13", "network.features.20"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_tcav(**kwargs) -> TCAVCallback:
    defaults = dict(
        layers=LAYERS, concepts=["striped", "red"], num_random=3, examples_per_concept=8, num_probe=24, num_similar=3
    )
    defaults.update(kwargs)
    return TCAVCallback(**defaults)


def fit(tmp_path, callback, logger=None, epochs=2, datamodule=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = small_classifier()
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=logger or CSVLogger(str(tmp_path)),
        default_root_dir=str(tmp_path),
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule or small_datamodule())
    return trainer, model


def test_training_with_tcav_gives_bit_identical_weights(tmp_path):
    without = train_weights(tmp_path / "a", [], epochs=2, dropout=0.3)
    with_tcav = train_weights(tmp_path / "b", [small_tcav(layers=LAYERS[:1])], epochs=2, dropout=0.3)
    assert_bit_identical(without, with_tcav)


def test_wandb_run_holds_scalars_table_bars_and_similar_images_every_epoch(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="tcav-test")
    callback = small_tcav(scalar_concepts=["striped"])
    fit(tmp_path, callback, logger=logger, epochs=2)
    logger.experiment.finish()
    run = wandb_run_dir(tmp_path)
    history = read_wandb_history(run)
    key = "tcav/network.features.13/striped/circle/score"
    scalars = [h for h in history if key in h]
    assert len(scalars) == 2
    for logged, kept in zip(scalars, callback.history):
        assert logged[key] == pytest.approx(kept[key])
        assert logged["tcav/network.features.20/striped/cav_accuracy"] == pytest.approx(
            kept["tcav/network.features.20/striped/cav_accuracy"]
        )
    assert not any("tcav/network.features.13/red/circle/score" in h for h in history)  # not a chosen scalar
    tables = [h for h in history if "tcav/scores._type" in h]
    assert len(tables) == 2 and all(h["tcav/scores._type"] == "table-file" for h in tables)
    assert tables[0]["tcav/scores.path"] != tables[1]["tcav/scores.path"]  # a fresh table each epoch
    import json

    table = json.loads((run / "files" / tables[-1]["tcav/scores.path"]).read_text())
    assert table["columns"][:5] == ["epoch", "step", "layer", "concept", "class"]
    assert len(table["data"]) == 2 * 2 * 5  # layers × concepts × classes, red included
    rows = {(r[2], r[3], r[4]): r for r in table["data"]}
    assert rows[("network.features.13", "striped", "circle")][5] == pytest.approx(scalars[-1][key])
    for layer in LAYERS:
        for what in ("bars", "similar"):
            logged = [h for h in history if f"tcav/{layer}/{what}.filenames" in h]
            assert len(logged) == 2, (layer, what)
            png = Image.open(run / "files" / logged[0][f"tcav/{layer}/{what}.filenames"][0])
            assert np.asarray(png).shape[0] > 50


def test_cavs_and_histories_survive_a_checkpoint_resume(tmp_path):
    first = small_tcav(layers=LAYERS[:1])
    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=2,
        callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        logger=CSVLogger(str(tmp_path)),
        default_root_dir=str(tmp_path),
    )
    trainer.fit(small_classifier(), small_datamodule())
    restored = small_tcav(layers=LAYERS[:1])
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[restored], logger=CSVLogger(str(tmp_path / "r")), default_root_dir=str(tmp_path / "r")
    )
    trainer.fit(small_classifier(), small_datamodule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert restored.history == first.history and restored.table_history == first.table_history
    layer = LAYERS[0]
    assert torch.equal(restored.cavs.vectors[layer], first.cavs.vectors[layer])
    assert torch.equal(restored.cavs.accuracy, first.cavs.accuracy)
    resumed = small_tcav(layers=LAYERS[:1])
    trainer = quiet_trainer(
        max_epochs=3, callbacks=[resumed], logger=CSVLogger(str(tmp_path / "s")), default_root_dir=str(tmp_path / "s")
    )
    trainer.fit(small_classifier(), small_datamodule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0]
    assert resumed.history[:2] == first.history
    assert not torch.equal(resumed.cavs.vectors[layer], first.cavs.vectors[layer])  # retrained on the new weights


def test_concept_folders_from_a_yaml_config(tmp_path, monkeypatch):
    from xai_lightning.cli import build_cli

    world = ConceptWorld(300, seed=9)
    for name in ("striped", "dotted"):
        folder = tmp_path / "concepts" / name
        folder.mkdir(parents=True)
        for i, image in enumerate(concept_examples_from_world(world, name, 12)):
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(folder / f"{i:03d}.png")
    config = Path(__file__).resolve().parents[1] / "xai_lightning" / "configs" / "concept_world_gradcam.yaml"
    monkeypatch.chdir(tmp_path)
    callbacks = (
        '[{"class_path": "xai_lightning.TCAVCallback", "init_args": {"layers": ["network.features.13"], '
        f'"concepts": ["striped", "dotted"], "concept_dir": "{tmp_path / "concepts"}", "num_random": 2, '
        '"examples_per_concept": 8, "num_probe": 16, "classes": [0, 1]}}]'
    )
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.init_args.num_train=64",
            "--data.init_args.num_val=48",
            "--model.init_args.network.init_args.width=8",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks={callbacks}",
        ]
    )
    cli.trainer.logger.experiment.finish()
    callback = cli.trainer.callbacks[0]
    assert isinstance(callback, TCAVCallback) and callback.failures == []
    assert set(callback.concept_images) == {"striped", "dotted"}
    assert callback.concept_images["striped"].shape == (12, 3, 32, 32)
    assert "tcav/network.features.13/dotted/square/p_value" in callback.history[-1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(layers=["network.featurez.13"]), LayerNotFoundError, "network.features.13"),
        (dict(classes=[0, 9]), ValueError, "class index 9 is out of range.*5 classes"),
        (dict(concepts=["stripy"]), KeyError, "stripy.*texture/striped"),
        (dict(concepts=["zebra"], concept_dir="MISSING"), FileNotFoundError, "MISSING/zebra"),
        (dict(concepts=["./nowhere/zebra"]), FileNotFoundError, "nowhere/zebra"),
        (dict(scalar_concepts=["blue"]), ValueError, "scalar_concepts \\['blue'\\]"),
    ],
)
def test_bad_configuration_fails_at_setup_before_training(tmp_path, kwargs, error, match):
    model = small_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1, callbacks=[small_tcav(**kwargs)], logger=CSVLogger(str(tmp_path)))
    with pytest.raises(error, match=match):
        trainer.fit(model, small_datamodule())
    assert_bit_identical(before, model.state_dict())  # failed before the first step


def test_empty_folder_too_few_examples_and_non_concept_world_data_fail_at_setup(tmp_path):
    (tmp_path / "concepts" / "empty").mkdir(parents=True)
    trainer = quiet_trainer(
        max_epochs=1,
        logger=CSVLogger(str(tmp_path)),
        callbacks=[small_tcav(concepts=["empty"], concept_dir=str(tmp_path / "concepts"))],
    )
    with pytest.raises(ValueError, match=f"{tmp_path / 'concepts' / 'empty'}.*no image files"):
        trainer.fit(small_classifier(), small_datamodule())
    tiny = small_tcav().set_concepts({"tiny": torch.rand(2, 3, 32, 32)})
    trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(str(tmp_path)), callbacks=[tiny])
    with pytest.raises(ValueError, match="Too few examples for the CAV train/test split"):
        trainer.fit(small_classifier(), small_datamodule())
    from xai_lightning import DigitsDataModule, ImageClassifier, SmallCNN

    trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(str(tmp_path)), callbacks=[small_tcav(layers="auto")])
    with pytest.raises(ValueError, match="not ConceptWorld. Give image folders"):
        trainer.fit(ImageClassifier(SmallCNN(num_classes=10, width=8)), DigitsDataModule())
    with pytest.raises(ValueError, match="num_random must be >= 2"):
        TCAVCallback(concepts=["striped"], num_random=1)


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_tcav_scores_as_one_process(tmp_path):
    from test_ddp import frozen_network

    from xai_lightning import ImageClassifier

    def logged(root: Path, devices: int) -> list[dict[str, float]]:
        pl.seed_everything(0)
        model = ImageClassifier(frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
        callback = TCAVCallback(
            layers=["network.3", "network.6"],
            concepts=["striped", "red"],
            num_random=3,
            examples_per_concept=8,
            num_probe=13,
            num_similar=2,
        )  # 13: uneven shards
        trainer = quiet_trainer(
            max_epochs=2,
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            callbacks=[callback],
            logger=CSVLogger(str(root), name="run", version=0),
            enable_checkpointing=False,
            deterministic=False,
        )
        trainer.fit(model, small_datamodule(num_train=128, num_val=64))
        rows = list(csv.DictReader(open(root / "run" / "version_0" / "metrics.csv")))
        figures = [{k: float(v) for k, v in row.items() if k.startswith("tcav/") and v} for row in rows]
        return [f for f in figures if f]

    single = logged(tmp_path / "single", 1)
    double = logged(tmp_path / "ddp", 2)
    assert len(single) == len(double) == 2
    for one, two in zip(single, double):
        assert one.keys() == two.keys() and "tcav/network.6/striped/circle/p_value" in one
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert len(list((tmp_path / "ddp").glob("**/tcav/network.6/bars/*.png"))) == 2  # rank zero alone logged


def test_classes_without_probe_images_are_named_once_and_not_logged(tmp_path):
    """Two probe images cover at most two of the five classes: the others have no TCAV score, which
    the callback says once at setup instead of logging NaN every epoch."""
    callback = small_tcav(layers=LAYERS[:1], concepts=["striped"], num_probe=2, num_similar=0, on_error="raise")
    with pytest.warns(UserWarning, match=r"no probe image has class \[.*\].*raise num_probe or pass classes"):
        fit(tmp_path, callback, epochs=1)
    absent = callback.absent_classes
    assert len(absent) >= 3
    for row in callback.history:
        for key, value in row.items():
            assert not any(key.endswith(f"/{callback.result.class_name(k)}/score") for k in absent), key
            if key.endswith(("/score", "/magnitude", "/sign_count")):
                assert np.isfinite(value), key
