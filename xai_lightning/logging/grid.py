"""Labelled image grids: rows of panels (e.g. image | map | overlay) with a caption per row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xai_lightning.logging.colourbar import Colourbar, colourbar_pixels

__all__ = ["labelled_grid"]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def labelled_grid(
    panels: np.ndarray,
    row_captions: Sequence[str] | None = None,
    column_titles: Sequence[str] | None = None,
    scale: int = 3,
    gap: int = 2,
    column_colourbars: Sequence[Colourbar | None] | None = None,
) -> np.ndarray:
    """Assemble ``panels (R, C, H, W, 3)`` uint8 into one uint8 HWC image with text.

    Each panel is enlarged ``scale``× (nearest neighbour, so pixels stay visible at 32×32);
    ``column_titles`` go above the columns and each row's caption (e.g.
    ``"y=circle  ŷ=circle  p=0.97"``) on the left of the row. ``column_colourbars`` (one entry per
    column, None for columns without one) draws a colourbar under each map column, labelled with
    the values its ends stand for.
    """
    if panels.ndim != 5 or panels.shape[-1] != 3 or panels.dtype != np.uint8:
        raise ValueError(f"panels must be uint8 (rows, columns, H, W, 3); got {panels.dtype} {panels.shape}")
    rows, columns, height, width, _ = panels.shape
    tile_h, tile_w = height * scale, width * scale
    font_size = max(10, min(16, tile_h // 5))
    font = _font(font_size)
    captions = list(row_captions or [""] * rows)
    titles = list(column_titles or [])
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_w = max([int(measure.textlength(c, font=font)) for c in captions] + [0])
    caption_w = caption_w + 8 if caption_w else 0
    title_h = font_size + 6 if titles else 0
    bars = list(column_colourbars or [])
    bar_h = max(4, tile_h // 8)
    legend_h = bar_h + font_size + 8 if any(bar is not None for bar in bars) else 0
    canvas = Image.new(
        "RGB",
        (caption_w + columns * (tile_w + gap) + gap, title_h + rows * (tile_h + gap) + gap + legend_h),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles[:columns]):
        # Keep the informative end of long names ("…features.13") within the tile width.
        while len(title) > 1 and measure.textlength(title, font=font) > tile_w:
            title = "…" + title.lstrip("…")[1:]
        draw.text((caption_w + gap + c * (tile_w + gap), 2), title, fill=(0, 0, 0), font=font)
    for r in range(rows):
        top = title_h + gap + r * (tile_h + gap)
        if captions[r]:
            draw.text((4, top + tile_h // 2 - font_size // 2), captions[r], fill=(0, 0, 0), font=font)
        for c in range(columns):
            tile = Image.fromarray(panels[r, c]).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (caption_w + gap + c * (tile_w + gap), top))
    top = title_h + gap + rows * (tile_h + gap)
    for c, bar in enumerate(bars[:columns]):
        if bar is None:
            continue
        left = caption_w + gap + c * (tile_w + gap)
        canvas.paste(Image.fromarray(colourbar_pixels(bar.colormap, tile_w, bar_h)), (left, top))
        text_top = top + bar_h + 2
        draw.text((left, text_top), bar.low, fill=(0, 0, 0), font=font)
        right = measure.textlength(bar.high, font=font)
        draw.text((left + tile_w - right, text_top), bar.high, fill=(0, 0, 0), font=font)
        if bar.middle:
            middle = measure.textlength(bar.middle, font=font)
            if middle < tile_w - measure.textlength(bar.low + bar.high, font=font) - 8:
                draw.text((left + (tile_w - middle) / 2, text_top), bar.middle, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)
