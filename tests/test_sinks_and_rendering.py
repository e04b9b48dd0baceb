"""Rendering (colormaps, overlays, grids) and the sinks, each read back from what it wrote."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import read_wandb_config, read_wandb_history, wandb_run_dir
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

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
    from matplotlib.figure import Figure  # the object API: no backend switch, no pyplot state

    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    return figure


def test_file_sink_writes_decodable_pngs_and_csv_tables(tmp_path):
    sink = SinkSet([FileSink(directory=tmp_path)])
    image = np.full((6, 5, 3), 200, dtype=np.uint8)
    sink.images("demo/grid", [image], ["a caption"], step=7)
    sink.table("demo/units", ["unit", "iou"], [[0, 0.5], [1, 0.25]], step=7)
    figure = sample_figure()
    sink.figure("demo/plot", figure, step=7)
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
    assert array.dtype == np.uint8 and array.shape == (200, 200, 3)


def test_dummy_logger_gets_no_sink_and_csv_logger_gets_files(tmp_path):
    from pytorch_lightning.loggers.logger import DummyLogger

    assert sink_for_logger(DummyLogger()) is None
    assert isinstance(sink_for_logger(CSVLogger(str(tmp_path))), FileSink)


# ---------------------------------------------------------------------------------------------- map scales
def test_scale_modes_against_their_definitions():
    from xai_lightning.logging import scale_maps

    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.5], [0.5, 1.0]]])
    per_map, scale = scale_maps(maps, "per_map")
    assert per_map[0].tolist() == [[0.0, 0.25], [0.5, 1.0]] and per_map[1].tolist() == [[0.0, 0.5], [0.5, 1.0]]
    assert scale.labels() == ("min", "max", "each map")
    per_epoch, scale = scale_maps(maps, "per_epoch")  # one range for both maps: the second is 4x weaker
    assert torch.allclose(per_epoch, maps / 4) and (scale.low, scale.high) == (0.0, 4.0)
    values = torch.arange(1000.0).view(10, 10, 10)
    clipped, scale = scale_maps(values, "percentile")
    assert scale.high == 989.0 and float(clipped.max()) == 1.0 and float((clipped == 1).float().sum()) == 11
    signed_maps = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])
    signed, scale = scale_maps(signed_maps, "signed")
    assert signed.flatten().tolist() == [0.0, 0.5, 0.75, 1.0] and scale.labels() == ("-2", "2", "0")
    with pytest.raises(ValueError, match="normalise must be one of"):
        scale_maps(maps, "global")


def test_grid_colourbar_shows_the_colormap_under_its_column():
    from xai_lightning.logging import Colourbar, MapScale, colormap_table

    panels = np.full((1, 2, 8, 8, 3), 255, dtype=np.uint8)
    plain = labelled_grid(panels, column_titles=["image", "map"], scale=4)
    bar = Colourbar.of(MapScale("per_epoch", 0.0, 0.5), "gray")
    with_bar = labelled_grid(panels, column_titles=["image", "map"], scale=4, column_colourbars=[None, bar])
    assert with_bar.shape[1] == plain.shape[1] and with_bar.shape[0] > plain.shape[0]
    band = with_bar[plain.shape[0]]  # the first row of the colourbar band, right under the grid
    row = band[2 + 32 + 2 : 2 + 32 + 2 + 32]  # under the second column (gap, tile, gap)
    assert row[0].tolist() == [0, 0, 0] and row[-1].tolist() == [255, 255, 255]  # gray: black → white
    assert (np.diff(row[:, 0].astype(int)) >= 0).all()
    assert torch.equal(colormap_table("gray")[0], torch.zeros(3))


def test_overlay_of_a_shared_scale_keeps_relative_magnitude():
    from xai_lightning.logging import heatmaps

    maps = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 0.25)])
    maps[:, 0, 0] = 0.0
    per_map = heatmaps(maps, "gray", "per_map")
    per_epoch = heatmaps(maps, "gray", "per_epoch")
    assert torch.equal(per_map[0], per_map[1])  # the weak map looks as strong as the other
    assert float(per_epoch[1, 1, 1, 0]) == pytest.approx(round(0.25 * 255) / 255, abs=1e-6)


# ---------------------------------------------------------------------------------------------- sinks
def test_sink_set_at_step_overrides_the_step_it_is_given(tmp_path):
    sink = SinkSet([FileSink(directory=tmp_path)])
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with sink.at_step(3):
        sink.images("a/grid", [image], None, step=999)
    sink.images("a/grid", [image], None, step=5)
    assert sorted(p.name for p in (tmp_path / "xai" / "a" / "grid").glob("*.png")) == [
        "step_00000003.png",
        "step_00000005.png",
    ]


def test_file_sink_tables_save_image_cells_and_settings(tmp_path):
    sink = SinkSet([FileSink(directory=tmp_path)])
    image = np.full((5, 6, 3), 77, dtype=np.uint8)
    sink.table("demo/probes", ["image", "label", "score"], [[image, "circle", 0.5]], step=2)
    sink.config("demo", {"num_probe": 8, "layers": ["a", "b"]})
    rows = list(csv.reader(open(tmp_path / "xai" / "demo" / "probes" / "step_00000002.csv")))
    assert rows == [["image", "label", "score"], ["step_00000002_000_00.png", "circle", "0.5"]]
    saved = np.asarray(Image.open(tmp_path / "xai" / "demo" / "probes" / rows[1][0]))
    assert np.array_equal(saved, image)
    import json

    assert json.loads((tmp_path / "xai" / "demo" / "settings.json").read_text()) == {
        "num_probe": 8,
        "layers": ["a", "b"],
    }


def test_deferred_wandb_media_join_one_row_and_settings_reach_run_config(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="sink-deferred")
    sink = SinkSet([sink_for_logger(logger, deferred=True)])
    image = np.full((6, 5, 3), 30, dtype=np.uint8)
    sink.config("demo", {"normalise": "per_epoch", "num_probe": 4})
    sink.images("demo/grid", [image], ["c"], step=3)
    sink.table("demo/probes", ["image", "score"], [[image, 0.5], [image, 0.25]], step=3)
    logger.log_metrics({"val/acc": 0.5, "demo/score": 0.125}, step=3)  # what Lightning writes next
    sink.commit(lightning_writes_row=True)
    sink.images("demo/grid", [image], None, step=7)  # no metrics row follows: commit writes it
    sink.commit()
    sink.commit()  # nothing pending: no empty row
    logger.experiment.finish()
    history = read_wandb_history(wandb_run_dir(tmp_path))
    assert len(history) == 2
    first, second = history
    assert first["trainer/global_step"] == 3 and first["val/acc"] == 0.5 and "demo/grid.filenames" in first
    assert first["demo/probes.nrows"] == 2 and second["trainer/global_step"] == 7 and "demo/grid.filenames" in second
    assert read_wandb_config(wandb_run_dir(tmp_path))["demo"] == {"normalise": "per_epoch", "num_probe": 4}


def test_tensorboard_sink_records_settings_as_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path))
    sink = SinkSet([sink_for_logger(logger)])
    sink.config("demo", {"num_probe": 4})
    sink.table("demo/probes", ["image", "score"], [[np.zeros((3, 2, 3), dtype=np.uint8), 0.5]], step=1)
    sink.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert "demo/settings/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("demo/probes/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "(image 3x2)" in text and "0.5" in text
