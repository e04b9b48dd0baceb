"""Sinks (W&B, TensorBoard, files) and rendering (colormaps, overlays, labelled grids, figures).

This package is named ``logging`` inside ``xai_lightning``; modules use absolute imports, so
``import logging`` still finds the standard library.
"""

from xai_lightning.logging.colormap import apply_colormap, normalize_maps
from xai_lightning.logging.figure import figure_to_array
from xai_lightning.logging.file_sink import FileSink
from xai_lightning.logging.grid import labelled_grid
from xai_lightning.logging.html_report import HtmlReport
from xai_lightning.logging.html_sink import log_html
from xai_lightning.logging.overlay import display_images, heatmaps, overlay, to_uint8_hwc
from xai_lightning.logging.sink import Sink, SinkSet, check_image
from xai_lightning.logging.tensorboard_sink import TensorBoardSink
from xai_lightning.logging.token_html import token_html
from xai_lightning.logging.trainer_sinks import sink_for_logger, sinks_for_trainer
from xai_lightning.logging.wandb_sink import WandbSink

__all__ = [
    "FileSink",
    "HtmlReport",
    "Sink",
    "SinkSet",
    "TensorBoardSink",
    "WandbSink",
    "apply_colormap",
    "check_image",
    "display_images",
    "figure_to_array",
    "heatmaps",
    "labelled_grid",
    "log_html",
    "normalize_maps",
    "overlay",
    "sink_for_logger",
    "sinks_for_trainer",
    "to_uint8_hwc",
    "token_html",
]
