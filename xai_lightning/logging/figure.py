"""Render a matplotlib figure to a uint8 HWC array (for sinks that log figures as images)."""

from __future__ import annotations

import numpy as np

__all__ = ["figure_to_array"]


def figure_to_array(figure) -> np.ndarray:
    """Draw ``figure`` with the Agg canvas and return its RGB pixels as ``(H, W, 3)`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()
