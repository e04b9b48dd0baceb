"""Rendering (colormaps, overlays, grids) and the sinks, each read back from what it wrote."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from conftest import read_wandb_history, wandb_run_dir
from xai_lightning.logging import (
    FileSink,
    SinkSet,
    apply_colormap,
    figure_to_array,
    labelled_grid,
    normalize_maps,
    overlay,
    sink_for_logger,
    to_uint8_hwc,
)


def test_colormap_and_normalisation():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    scaled = normalize_maps(maps)
    assert scaled[0].tolist() == [[0.0, 0.5], [1.0, 1.0]] and scaled[1].abs().sum() == 0
    colours = apply_colormap(scaled, "gray")
    assert colours.shape == (2, 2, 2, 3)
    torch.testing.assert_close(colours[0, 0, 1], torch.full((3,), 128 / 255), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="Unknown colormap"):
        apply_colormap(scaled, "no-such-map")


def test_overlay_blends_image_and_heatmap():
    images = torch.zeros(1, 3, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    blended = overlay(images, maps, alpha=0.5, colormap="gray")
    assert blended[0, 0, 0].tolist() == [0.5, 0.5, 0.5] and blended[0, 1, 1].tolist() == [0.0, 0.0, 0.0]
    arr = to_uint8_hwc(blended)
    assert arr.dtype == np.uint8 and arr.shape == (1, 4, 4, 3)


def test_labelled_grid_layout():
    panels = np.zeros((2, 3, 8, 8, 3), dtype=np.uint8)
    panels[1, 2] = 255
    grid = labelled_grid(panels, row_captions=["first", "second"], column_titles=["a", "b", "c"], scale=2)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] > 2 * 16 and grid.shape[1] > 3 * 16
    with pytest.raises(ValueError, match="uint8"):
        labelled_grid(panels.astype(np.float32))


def sample_figure():
    figure, axis = plt.subplots(figsize=(2, 2))
    axis.plot([0, 1], [1, 0])
    return figure


def test_file_sink_writes_decodable_pngs_and_csv_tables(tmp_path):
    sink = SinkSet([FileSink(directory=tmp_path)])
    image = np.full((6, 5, 3), 200, dtype=np.uint8)
    sink.images("demo/grid", [image], ["a caption"], step=7)
    sink.table("demo/units", ["unit", "iou"], [[0, 0.5], [1, 0.25]], step=7)
    figure = sample_figure()
    sink.figure("demo/plot", figure, step=7)
    plt.close(figure)
    sink.scalars({"demo/score": 0.5}, step=7)
    root = tmp_path / "xai"
    assert np.array_equal(np.asarray(Image.open(root / "demo/grid/step_00000007.png")), image)
    rows = list(csv.reader(open(root / "demo/units/step_00000007.csv")))
    assert rows == [["unit", "iou"], ["0", "0.5"], ["1", "0.25"]]
    assert Image.open(root / "demo/plot/step_00000007.png").size[0] > 0
    assert list(csv.reader(open(root / "demo/grid/captions.csv")))[1] == ["step_00000007.png", "7", "a caption"]
    assert list(csv.reader(open(root / "scalars.csv")))[1] == ["7", "demo/score", "0.5"]
    with pytest.raises(ValueError, match="uint8"):
        sink.images("bad", [np.zeros((4, 4), dtype=np.float32)], None, 0)
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        sink.table("bad", ["a", "b"], [[1, 2, 3]], 0)


def test_tensorboard_sink_writes_images_figures_and_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path))
    sink = SinkSet([sink_for_logger(logger)])
    image = np.zeros((6, 5, 3), dtype=np.uint8)
    image[..., 0] = 255
    sink.images("demo/grid", [image], ["caption"], step=3)
    sink.table("demo/units", ["unit", "iou"], [[0, 0.5]], step=3)
    figure = sample_figure()
    sink.figure("demo/plot", figure, step=3)
    plt.close(figure)
    sink.scalars({"demo/score": 0.25}, step=3)
    sink.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"demo/grid", "demo/plot"} <= set(events.Tags()["images"])
    (grid,) = events.Images("demo/grid")
    import io

    decoded = np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)).convert("RGB"))
    assert grid.step == 3 and np.array_equal(decoded, image)
    assert events.Scalars("demo/score")[0].value == pytest.approx(0.25)


def test_wandb_sink_logs_images_tables_and_scalars_offline(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="sink-test")
    sink = SinkSet([sink_for_logger(logger)])
    image = np.full((6, 5, 3), 90, dtype=np.uint8)
    sink.images("demo/grid", [image], ["the caption"], step=11)
    sink.table("demo/units", ["unit", "iou"], [[0, 0.5], [1, 0.75]], step=11)
    sink.scalars({"demo/score": 0.125}, step=11)
    location = sink.location
    logger.experiment.finish()
    history = read_wandb_history(wandb_run_dir(tmp_path))
    images = [h for h in history if "demo/grid.filenames" in h]
    assert images and images[0]["demo/grid.captions"] == ["the caption"]
    assert images[0]["trainer/global_step"] == 11
    media = wandb_run_dir(tmp_path) / "files" / images[0]["demo/grid.filenames"][0]
    assert np.array_equal(np.asarray(Image.open(media).convert("RGB")), image)
    tables = [h for h in history if "demo/units._type" in h]
    assert tables and tables[0]["demo/units._type"] == "table-file" and tables[0]["demo/units.nrows"] == 2
    assert any(h.get("demo/score") == 0.125 and h["trainer/global_step"] == 11 for h in history)
    assert "media" in location


def test_figure_to_array():
    figure = sample_figure()
    array = figure_to_array(figure)
    plt.close(figure)
    assert array.dtype == np.uint8 and array.shape == (200, 200, 3)


def test_dummy_logger_gets_no_sink_and_csv_logger_gets_files(tmp_path):
    from pytorch_lightning.loggers.logger import DummyLogger

    assert sink_for_logger(DummyLogger()) is None
    assert isinstance(sink_for_logger(CSVLogger(str(tmp_path))), FileSink)
