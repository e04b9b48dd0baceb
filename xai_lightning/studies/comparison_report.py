"""The HTML report of a comparison study: curves over epochs side by side, image panels, a final table.

The ``report`` section of a study config says what to show::

    report:
      title: Does adversarial training make a model more interpretable?
      intro: One paragraph shown under the title.
      plots:                                  # one figure each; keys are regular expressions
        - {title: Accuracy, keys: ["val/acc"]}
        - {title: Grad-CAM localisation, keys: ["gradcam/.*/energy_in_mask"], ylabel: energy in object}
      images:                                 # first / middle / last logged image per variant
        - {title: Grad-CAM, key: gradcam/grid}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from xai_lightning.logging.html_report import HtmlReport
from xai_lightning.studies.comparison import VariantResult

__all__ = ["first_middle_last", "write_comparison_report"]

_LINESTYLES = ("-", "--", ":", "-.")


def first_middle_last(items: Sequence[Any]) -> list[Any]:
    """The first, middle and last element (fewer when there are fewer than three)."""
    if len(items) <= 3:
        return list(items)
    return [items[0], items[(len(items) - 1) // 2], items[-1]]


def _plot(results: Mapping[str, VariantResult], spec: Mapping[str, Any]) -> tuple[Any, list[str]]:
    figure, axis = plt.subplots(figsize=(5.4, 3.4), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shown: list[str] = []
    for v, (variant, result) in enumerate(results.items()):
        keys = sorted({key for pattern in spec["keys"] for key in result.matching(pattern)})
        for k, key in enumerate(keys):
            epochs, values = result.series(key)
            label = f"{variant}: {key}" if len(keys) > 1 or len(spec["keys"]) > 1 else variant
            axis.plot(np.asarray(epochs) + 1, values, color=colours[v % len(colours)],
                      linestyle=_LINESTYLES[k % len(_LINESTYLES)], marker="o", markersize=3, label=label)
            shown.append(key)
    axis.set_title(spec["title"])
    axis.set_xlabel("epoch")
    axis.set_ylabel(spec.get("ylabel", ""))
    axis.grid(alpha=0.3)
    if shown:
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure, sorted(set(shown))


def write_comparison_report(
    results: Mapping[str, VariantResult], spec: Mapping[str, Any], path: str | Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Write the self-contained HTML report of a comparison study and return its path.

    Every plot listed in ``spec`` appears as an ``<img>`` whose alt text is the plot's title; a
    plot without data is still listed, with a note saying which keys were missing.
    """
    report = HtmlReport(spec.get("title", "Comparison study"))
    if spec.get("intro"):
        report.text(spec["intro"])
    report.table(
        ["variant", "training time (s)", "epochs", "W&B run (offline)"],
        [[name, round(r.seconds, 1), len(r.metrics), str(r.wandb_dir or "-")] for name, r in results.items()],
    )
    report.heading("Over training")
    report.begin_row()
    final_rows: list[list[Any]] = []
    missing: list[str] = []
    for plot in spec.get("plots", []):
        figure, keys = _plot(results, plot)
        report.figure(figure, plot["title"])
        plt.close(figure)
        if not keys:
            missing.append(f"{plot['title']} ({', '.join(plot['keys'])})")
        for key in keys:
            final_rows.append([key] + [
                (lambda s: s[1][-1] if s[1] else float("nan"))(result.series(key)) for result in results.values()
            ])
    if missing:
        report.text("No data was logged for: " + "; ".join(missing), css_class="note")
    if final_rows:
        report.heading("At the last epoch")
        report.table(["metric", *results.keys()], final_rows)
    for panel in spec.get("images", []):
        report.heading(panel["title"])
        for variant, result in results.items():
            files = first_middle_last(result.images(panel["key"]))
            report.begin_row()
            if not files:
                report.text(f"{variant}: no images logged under {panel['key']}", css_class="note")
            for file in files:
                step = int(file.stem.split("_")[1])
                epoch = next((int(r["epoch"]) + 1 for r in result.metrics if int(r["step"]) >= step), "?")
                image = np.asarray(Image.open(file).convert("RGB"))
                report.image(image, f"{variant} · epoch {epoch} (step {step})", width=panel.get("width", 360))
    if config is not None:
        report.heading("Configuration")
        import yaml

        report.preformatted(yaml.safe_dump(dict(config), sort_keys=False))
    return report.write(path)
