"""Sinks (W&B, TensorBoard, files) and rendering (colormaps, overlays, labelled grids, figures).

This package is named ``logging`` inside ``xai_lightning``; modules use absolute imports, so
``import logging`` still finds the standard library.
"""

from xai_lightning.logging.colormap import (
    NORMALISE_MODES,
    MapScale,
    NormaliseMode,
    apply_colormap,
    check_normalise,
    colormap_table,
    display_colormap,
    normalize_maps,
    scale_maps,
)
from xai_lightning.logging.colourbar import Colourbar, colourbar_pixels, scaled_heatmaps
from xai_lightning.logging.figure import figure_to_array
from xai_lightning.logging.file_sink import FileSink
from xai_lightning.logging.grid import labelled_grid
from xai_lightning.logging.heatmap_overlay import blend, display_images, heatmaps, overlay, to_uint8_hwc
from xai_lightning.logging.html_report import HtmlReport
from xai_lightning.logging.html_sink import log_html
from xai_lightning.logging.sink import Sink, SinkSet, check_image, is_image
from xai_lightning.logging.steps import logging_step
from xai_lightning.logging.tensorboard_sink import TensorBoardSink
from xai_lightning.logging.token_highlights import token_html
from xai_lightning.logging.trainer_sinks import sink_for_logger, sinks_for_trainer
from xai_lightning.logging.wandb_sink import WandbSink

__all__ = [
    "NORMALISE_MODES",
    "Colourbar",
    "FileSink",
    "MapScale",
    "NormaliseMode",
    "HtmlReport",
    "Sink",
    "SinkSet",
    "TensorBoardSink",
    "WandbSink",
    "apply_colormap",
    "blend",
    "check_image",
    "check_normalise",
    "colormap_table",
    "colourbar_pixels",
    "display_colormap",
    "display_images",
    "figure_to_array",
    "heatmaps",
    "is_image",
    "labelled_grid",
    "log_html",
    "logging_step",
    "normalize_maps",
    "overlay",
    "scale_maps",
    "scaled_heatmaps",
    "sink_for_logger",
    "sinks_for_trainer",
    "to_uint8_hwc",
    "token_html",
]
