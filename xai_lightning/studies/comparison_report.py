"""The HTML report of a study (or of any runs): verdict table first, then curves with confidence
bands, the robustness dial, TCAV and dissection tables, image panels, and the configuration.

It is built from runs read back from disk (:class:`~xai_lightning.studies.runs.RunRecord`), so
``xai-lightning report RUN_DIR`` and a study produce the same report. The ``report`` section of a
study config says what to show::

    report:
      title: Does adversarial training make a model more interpretable?
      intro: One paragraph shown under the title.
      plots:                            # one figure each; keys are regular expressions (full match)
        - title: Gradient energy on the object
          keys: ["robustness/gradient_energy_in_mask"]      # one line per arm and key pattern
          labels: [gradient]                                # short legend labels per pattern (optional)
          baseline: "robustness/gradient_energy_in_mask_uniform"   # drawn grey dashed
          baseline_label: uniform map
          chance: 0.2                                       # drawn as a dotted line (optional)
          ylabel: energy in object mask
          caption: Higher means the loss gradient sits on the object; the uniform map is the floor.
      images:                           # first / middle / last logged image of each arm's first seed
        - {title: Grad-CAM, key: gradcam/grid, colormap: jet, colorbar: Grad-CAM (per-image max = 1)}

Every curve is the mean over seeds with a band for its 95 % t-interval (no band with one seed).
A plot or row without data says "not logged" and names what it looked for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from xai_lightning.logging.html_report import HtmlReport
from xai_lightning.studies.runs import RunRecord
from xai_lightning.studies.statistics import bootstrap_interval, t_interval
from xai_lightning.studies.verdict import (
    VerdictRow,
    VerdictSpec,
    parse_verdict,
    verdict_columns,
    verdict_table,
)

__all__ = ["curve_figure", "first_middle_last", "write_study_report"]

_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")
#: Colour-blind-safe palette (Okabe & Ito 2008).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_EXTRA_STYLE = """
table { display: block; overflow-x: auto; max-width: 100%; font-size: .82em; }
td:first-child, th:first-child { text-align: left; }
p.caption { font-size: .9em; color: #444; margin-top: -.6em; }
p.rule { background: #f6f6f6; border-left: 3px solid #888; padding: .4em .8em; }
"""


def first_middle_last(items: Sequence[Any]) -> list[Any]:
    """The first, middle and last element (fewer when there are fewer than three)."""
    if len(items) <= 3:
        return list(items)
    return [items[0], items[(len(items) - 1) // 2], items[-1]]


# ---------------------------------------------------------------------- grouping
def arm_order(runs: Sequence[RunRecord], config: Mapping[str, Any] | None) -> list[str]:
    """Arms in the study's order (variants as configured, sweep arms by ε), else alphabetical."""
    present = sorted({run.variant for run in runs})
    if config is None:
        return present
    from xai_lightning.studies.plan import plan_study

    try:
        planned = [arm.name for arm in plan_study(config).arms]
    except ValueError:
        planned = list(config.get("variants", {}))
    return [name for name in planned if name in present] + [name for name in present if name not in planned]


def _by_arm(runs: Sequence[RunRecord], arms: Sequence[str]) -> dict[str, list[RunRecord]]:
    return {arm: [run for run in runs if run.variant == arm] for arm in arms}


def _band(series: Sequence[Mapping[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch over runs: (epochs, mean, low, high); low/high NaN where fewer than 2 runs logged."""
    epochs = sorted({e for s in series for e in s})
    mean, low, high = [], [], []
    for epoch in epochs:
        values = [s[epoch] for s in series if epoch in s]
        interval = t_interval(values)
        mean.append(interval.estimate)
        low.append(interval.low)
        high.append(interval.high)
    return np.asarray(epochs, dtype=float), np.asarray(mean), np.asarray(low), np.asarray(high)


# ---------------------------------------------------------------------- figures
def curve_figure(by_arm: Mapping[str, Sequence[RunRecord]], spec: Mapping[str, Any]) -> tuple[Figure, dict[str, Any]]:
    """One plot of ``spec`` (see the module docstring): mean ± 95 % CI over seeds per arm and key
    pattern, over epochs (1-based, integer ticks), baselines drawn, legend outside the axes.

    Returns the figure and what it drew: ``{"keys": [...], "baselines": [labels], "seeds": n}``.
    """
    figure = Figure(figsize=(6.6, 3.3), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    patterns = list(spec["keys"])
    labels = list(spec.get("labels") or [])
    drawn: dict[str, Any] = {"keys": set(), "baselines": [], "seeds": 0}
    for a, (arm, runs) in enumerate(by_arm.items()):
        for p, pattern in enumerate(patterns):
            series = [run.measure(pattern) for run in runs]
            series = [s for s in series if s]
            if not series:
                continue
            drawn["keys"].update(k for run in runs for k in run.matching(pattern))
            drawn["seeds"] = max(drawn["seeds"], len(series))
            epochs, mean, low, high = _band(series)
            x = epochs + 1
            colour = _COLOURS[a % len(_COLOURS)]
            name = arm if len(patterns) == 1 else f"{arm} · {labels[p] if p < len(labels) else pattern}"
            axis.plot(
                x,
                mean,
                color=colour,
                linestyle=_LINESTYLES[p % len(_LINESTYLES)],
                marker=_MARKERS[a % len(_MARKERS)],
                markersize=3.5,
                linewidth=1.6,
                label=name,
            )
            if np.isfinite(low).any():
                axis.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
    baseline = spec.get("baseline")
    if baseline:
        series = [s for runs in by_arm.values() for run in runs for s in [run.measure(baseline)] if s]
        if series:
            epochs, mean, _, _ = _band(series)
            label = spec.get("baseline_label", "baseline")
            axis.plot(epochs + 1, mean, color="0.45", linestyle="--", linewidth=1.2, label=label)
            drawn["baselines"].append(label)
    if spec.get("chance") is not None:
        label = spec.get("chance_label", "chance")
        axis.axhline(float(spec["chance"]), color="0.2", linestyle=":", linewidth=1.2, label=label)
        drawn["baselines"].append(label)
    axis.set_title(spec["title"], fontsize=10)
    axis.set_xlabel("epoch")
    axis.set_ylabel(spec.get("ylabel", ""), fontsize=9)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if spec.get("ylim"):
        axis.set_ylim(*spec["ylim"])
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if not drawn["keys"]:
        axis.text(0.5, 0.5, "not logged", transform=axis.transAxes, ha="center", va="center", color="0.4")
    drawn["keys"] = sorted(drawn["keys"])
    return figure, drawn


def dial_figure(by_arm: Mapping[str, Sequence[RunRecord]], rows: Sequence[VerdictRow], reference: str) -> Figure | None:
    """The robustness dial: each logged verdict measure at the last epoch against ε (mean ± 95 % CI
    over seeds); arms without adversarial training sit at ε = 0."""
    points: dict[str, list[tuple[float, RunRecord]]] = {}
    for arm, runs in by_arm.items():
        for run in runs:
            epsilon = run.epsilon if run.epsilon is not None else 0.0
            points.setdefault(arm, []).append((epsilon, run))
    epsilons = sorted({e for pts in points.values() for e, _ in pts})
    logged = [row for row in rows if row.logged]
    if len(epsilons) < 3 or not logged:
        return None
    columns = 3
    grid_rows = math.ceil(len(logged) / columns)
    figure = Figure(figsize=(3.1 * columns, 2.5 * grid_rows + 0.3), dpi=100, layout="constrained")
    for index, row in enumerate(logged):
        axis = figure.add_subplot(grid_rows, columns, index + 1)
        xs, means, errors = [], [], []
        for epsilon in epsilons:
            values = [
                v
                for pts in points.values()
                for e, run in pts
                if e == epsilon
                for v in [run.last(row.measure.key)]
                if v is not None
            ]
            if not values:
                continue
            interval = t_interval(values)
            xs.append(epsilon)
            means.append(interval.estimate)
            errors.append(0.0 if math.isnan(interval.low) else interval.estimate - interval.low)
        axis.errorbar(xs, means, yerr=errors, color=_COLOURS[0], marker="o", markersize=4, capsize=3, linewidth=1.4)
        if row.baseline is not None:
            axis.axhline(row.baseline, color="0.45", linestyle="--", linewidth=1.0)
        axis.set_title(row.measure.name, fontsize=9)
        axis.set_xlabel("ε (L2, training)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(f"The robustness dial ({reference} at ε = 0; dashed: baseline)", fontsize=10)
    return figure


def colorbar_figure(colormap: str, label: str) -> Figure:
    """A horizontal colour bar for the heat maps of an image panel."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    figure = Figure(figsize=(3.4, 0.75), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    figure.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=colormap), cax=axis, orientation="horizontal")
    axis.set_xlabel(label, fontsize=8)
    axis.tick_params(labelsize=7)
    return figure


# ---------------------------------------------------------------------- tables
def _interval_text(values: Sequence[float]) -> str:
    return str(t_interval(values)) if values else "not logged"


def _tcav_rows(by_arm: Mapping[str, Sequence[RunRecord]]) -> list[list[Any]]:
    """Last logged TCAV table of every run, aggregated over seeds per (arm, layer, concept, class)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for arm, runs in by_arm.items():
        for run in runs:
            tables = run.table_rows("tcav/scores")
            if not tables:
                continue
            for row in tables[-1][1]:
                groups.setdefault((arm, row["layer"], row["concept"], row["class"]), []).append(row)

    def numbers(rows: Sequence[Mapping[str, str]], column: str) -> list[float]:
        return [float(r[column]) for r in rows if r.get(column) not in (None, "", "nan")]

    out = []
    for (arm, layer, concept, target), rows in groups.items():
        significant = sum(str(r.get("significant")).lower() in ("true", "1", "1.0") for r in rows)
        p_values = numbers(rows, "p_value")
        out.append(
            [
                arm,
                layer,
                concept,
                target,
                _interval_text(numbers(rows, "sign_count_mean") or numbers(rows, "tcav_mean")),
                _interval_text(numbers(rows, "magnitude_mean")),
                _interval_text(numbers(rows, "random_magnitude_mean")),
                f"{np.median(p_values):.3g}" if p_values else "–",
                f"{significant}/{len(rows)}",
                _interval_text(numbers(rows, "cav_accuracy_mean")),
            ]
        )
    return out


def _dissection_rows(by_arm: Mapping[str, Sequence[RunRecord]]) -> tuple[list[str], list[list[Any]]]:
    pattern = re.compile(r"dissection/(.+)/interpretable/([^/]+)")
    categories = sorted(
        {
            m.group(2)
            for runs in by_arm.values()
            for run in runs
            for key in run.scalars
            for m in [pattern.fullmatch(key)]
            if m
        }
    )
    layers = sorted(
        {
            m.group(1)
            for runs in by_arm.values()
            for run in runs
            for key in run.scalars
            for m in [pattern.fullmatch(key)]
            if m
        }
    )
    rows = []
    for layer in layers:
        for arm, runs in by_arm.items():
            cells: list[Any] = [arm, layer]
            for category in categories:
                key = f"dissection/{re.escape(layer)}/interpretable/{re.escape(category)}"
                cells.append(_interval_text([v for run in runs for v in [run.last(key)] if v is not None]))
            rows.append(cells)
    return categories, rows


# ---------------------------------------------------------------------- default specs
def default_spec(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """What to show for runs without a study config: one plot per scalar key, every image key."""
    keys = sorted({key for run in runs for key in run.scalars})
    keys = [k for k in keys if not re.search(r"/(p_value|significant|step)$", k)][:60]
    images = sorted({key for run in runs for key in run.images})
    return {
        "title": "Training report",
        "plots": [{"title": key, "keys": [re.escape(key)], "ylabel": key.rsplit("/", 1)[-1]} for key in keys],
        "images": [{"title": key, "key": key} for key in images],
    }


# ---------------------------------------------------------------------- the report
def _verdict(runs: Sequence[RunRecord], config: Mapping[str, Any] | None, arms: Sequence[str]) -> VerdictSpec | None:
    if config is None or not config.get("verdict"):
        return None
    if sum(run.seed is not None for run in runs) < 2:
        return None
    return parse_verdict(config["verdict"], list(arms), namespaces=None)


def study_verdict(
    runs: Sequence[RunRecord], config: Mapping[str, Any] | None = None
) -> tuple[VerdictSpec, list[VerdictRow]] | None:
    """The verdict spec and table of ``runs`` (None when the runs have no verdict section or no seeds)."""
    config = config if config is not None else runs[0].config if runs else None
    spec = _verdict(runs, config, arm_order(runs, config))
    return None if spec is None else (spec, verdict_table(runs, spec))


def write_study_report(
    runs: Sequence[RunRecord],
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    failures: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write the self-contained HTML report of ``runs`` and return its path.

    Args:
        runs: runs read back from disk (:func:`~xai_lightning.studies.runs.load_runs`).
        config: the study config (default: the one the runs carry; none for plain runs).
        failures: run label → observer failure messages, listed in the report.
    """
    if not runs:
        raise ValueError("A report needs at least one run.")
    config = config if config is not None else runs[0].config
    spec = dict((config or {}).get("report") or {}) if config is not None else default_spec(runs)
    arms = arm_order(runs, config)
    by_arm = _by_arm(runs, arms)
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    report = HtmlReport(spec.get("title", "Study report"))
    if spec.get("intro"):
        report.text(spec["intro"])
    last_epochs = sorted({max(e for s in run.scalars.values() for e, _ in s) + 1 for run in runs if run.scalars})
    report.text(
        f"Runs: {len(runs)} — arms {', '.join(arms)}; "
        + (
            f"seeds {', '.join(map(str, seeds))} (the runs of one seed share initial weights and data order). "
            if seeds
            else "no seeds recorded (plain runs). "
        )
        + (f"Trained for {', '.join(map(str, last_epochs))} epoch(s)." if last_epochs else "")
    )

    # 1. The verdict, first.
    spec_and_rows = None
    try:
        spec_and_rows = study_verdict(runs, config)
    except ValueError as error:
        report.text(f"No verdict table: {error}", css_class="note")
    if spec_and_rows is not None:
        verdict_spec, rows = spec_and_rows
        report.heading("Verdict")
        report.text(verdict_spec.rule(), css_class="rule")
        report.table(verdict_columns(verdict_spec), [row.cells() for row in rows])
        n = max((row.comparison.n for row in rows if row.comparison is not None), default=0)
        report.text(
            f"Each cell: mean over {n} seed(s) at the last epoch with its {verdict_spec.confidence:.0%} t-interval; "
            "'baseline' is the reference the measure must beat (uniform map, random maps, random CAVs), averaged over "
            "all runs; 'not logged' rows had no data in these runs.",
            css_class="caption",
        )
        logged = [row for row in rows if row.logged]
        if logged:
            boot_rows = []
            for row in logged:
                assert row.comparison is not None
                sides = [
                    [v for run in by_arm.get(arm, []) for v in [run.last(row.measure.key)] if v is not None]
                    for arm in (verdict_spec.reference, verdict_spec.treatment)
                ]
                boot_rows.append(
                    [
                        row.measure.name,
                        *(str(bootstrap_interval(side, seed=verdict_spec.bootstrap_seed)) for side in sides),
                        str(row.comparison.difference_bootstrap),
                    ]
                )
            report.table(
                [
                    "measure",
                    f"{verdict_spec.reference} [bootstrap CI]",
                    f"{verdict_spec.treatment} [bootstrap CI]",
                    f"{verdict_spec.treatment} − {verdict_spec.reference} [bootstrap CI]",
                ],
                boot_rows,
            )
            report.text(
                "Second estimate of the same intervals: seeded percentile bootstrap of the mean, 10 000 resamples.",
                css_class="caption",
            )

    # 2. The runs.
    report.heading("Runs")
    report.table(
        ["arm", "seed", "ε", "epochs", "wall (s)", "CPU (s)", "observer failures", "W&B run (offline)"],
        [
            [
                run.variant,
                "-" if run.seed is None else run.seed,
                "-" if run.epsilon is None else f"{run.epsilon:g}",
                max((e for s in run.scalars.values() for e, _ in s), default=-1) + 1,
                "-" if run.seconds is None else round(run.seconds, 1),
                "-" if run.cpu_seconds is None else round(run.cpu_seconds, 1),
                len((failures or {}).get(run.label, [])),
                str(run.wandb_dir or "-"),
            ]
            for run in runs
        ],
    )
    for label, messages in (failures or {}).items():
        for message in messages:
            report.text(f"{label}: {message}", css_class="note")

    # 3. Curves over training.
    report.heading("Over training")
    missing = []
    for plot in spec.get("plots", []):
        figure, drawn = curve_figure(by_arm, plot)
        band = (
            f"bands: 95 % t-interval over {drawn['seeds']} seeds" if drawn["seeds"] > 1 else "one run per arm: no band"
        )
        drawn_baselines = f"; grey/dotted: {', '.join(drawn['baselines'])}" if drawn["baselines"] else ""
        caption = f"{plot.get('caption', plot['title'])} ({band}{drawn_baselines})"
        report.begin_row()
        report.figure(figure, caption)
        if not drawn["keys"]:
            missing.append(f"{plot['title']} ({', '.join(plot['keys'])})")
    if missing:
        report.text("Not logged: " + "; ".join(missing), css_class="note")

    # 4. The robustness dial.
    if spec_and_rows is not None:
        dial = dial_figure(by_arm, spec_and_rows[1], spec_and_rows[0].reference)
        if dial is not None:
            report.heading("The robustness dial")
            report.begin_row()
            report.figure(
                dial,
                "Each verdict measure at the last epoch against the training ε (mean ± 95 % CI over "
                "seeds): look for measures that rise or fall steadily with ε.",
            )

    # 5. Concepts and units.
    tcav = _tcav_rows(by_arm)
    if tcav:
        report.heading("TCAV at the last epoch")
        report.table(
            [
                "arm",
                "layer",
                "concept",
                "class",
                "TCAV sign count",
                "TCAV magnitude",
                "random magnitude",
                "p (median over seeds)",
                "significant (seeds)",
                "CAV accuracy",
            ],
            tcav,
        )
        report.text(
            "Mean [95 % CI] over seeds. 'A vs B' rows are relative CAVs: a magnitude above the random "
            "CAVs' means the class leans on A (the object's shape) more than on B (its spuriously "
            "correlated colour).",
            css_class="caption",
        )
    categories, dissection = _dissection_rows(by_arm)
    if dissection:
        report.heading("Network dissection at the last epoch: interpretable units per category")
        report.table(["arm", "layer", *categories], dissection)
        report.text(
            "Units whose best IoU with a concept of the category exceeds 0.04, mean [95 % CI] over seeds.",
            css_class="caption",
        )

    # 6. Image panels.
    for panel in spec.get("images", []):
        report.heading(panel["title"])
        if panel.get("caption"):
            report.text(panel["caption"], css_class="caption")
        for arm, arm_runs in by_arm.items():
            shown = arm_runs[:1]
            report.begin_row()
            for run in shown:
                files = first_middle_last(run.matching_images(panel["key"]))
                if not files:
                    report.text(f"{arm}: not logged ({panel['key']})", css_class="note")
                    continue
                for epoch, file in files:
                    image = np.asarray(Image.open(file).convert("RGB"))
                    seed = "" if run.seed is None else f" seed {run.seed}"
                    report.image(image, f"{arm}{seed} · epoch {epoch + 1}", width=panel.get("width", 380))
        if panel.get("colormap"):
            report.begin_row()
            report.figure(
                colorbar_figure(panel["colormap"], panel.get("colorbar", "map value (per-image max = 1)")),
                "colour scale of the maps",
            )

    if config is not None:
        import yaml

        report.heading("Configuration")
        report.preformatted(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))
    html = report.render().replace("</style>", _EXTRA_STYLE + "</style>", 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
