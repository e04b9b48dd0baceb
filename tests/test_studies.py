"""Studies: config checks, paired seeds, the verdict table, reproducibility, reading runs back, the report command."""

from __future__ import annotations

import base64
import copy
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from xai_lightning import GradCAMCallback, SmallCNN
from xai_lightning.cli import main as cli_main
from xai_lightning.logging import HtmlReport
from xai_lightning.studies import (
    first_middle_last,
    instantiate,
    load_runs,
    plan_study,
    run_study,
    study_verdict,
    write_study_report,
)
from xai_lightning.studies.comparison_report import curve_figure
from xai_lightning.studies.runs import RunRecord
from xai_lightning.studies.verdict import parse_verdict, verdict_table


class ImageCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def embedded_images(html: str) -> list[dict[str, str]]:
    collector = ImageCollector()
    collector.feed(html)
    for image in collector.images:
        assert image["src"].startswith("data:image/png;base64,"), "images must be embedded, not referenced"
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert decoded.size[0] > 0 and decoded.size[1] > 0
    return collector.images


class TableCollector(HTMLParser):
    """Every ``<table>`` of a report as a list of rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def report_tables(html: str) -> list[list[list[str]]]:
    collector = TableCollector()
    collector.feed(html)
    return collector.tables


def test_instantiate_builds_nested_class_paths():
    built = instantiate(
        {
            "callbacks": [{"class_path": "xai_lightning.GradCAMCallback", "init_args": {"num_probe": 3}}],
            "model": {
                "class_path": "xai_lightning.ImageClassifier",
                "init_args": {"network": {"class_path": "xai_lightning.SmallCNN", "init_args": {"num_classes": 4}}},
            },
        }
    )
    assert isinstance(built["callbacks"][0], GradCAMCallback) and built["callbacks"][0].num_probe == 3
    assert isinstance(built["model"].network, SmallCNN) and built["model"].num_classes == 4
    with pytest.raises(ValueError, match="Cannot import class_path 'xai_lightning.Nope'"):
        instantiate({"class_path": "xai_lightning.Nope"})
    with pytest.raises(TypeError, match="xai_lightning.SmallCNN"):
        instantiate({"class_path": "xai_lightning.SmallCNN", "init_args": {"colour": 1}})


def test_html_report_is_self_contained():
    report = HtmlReport("A <title>")
    report.heading("Section").begin_row().image(np.zeros((4, 5, 3), dtype=np.uint8), "black")
    report.table(["a", "b"], [[1, 0.123456], ["x", float("nan")]]).preformatted("key: value")
    html = report.render()
    assert "A &lt;title&gt;" in html and "0.1235" in html and "nan" in html
    assert len(embedded_images(html)) == 1
    assert first_middle_last([1, 2, 3, 4, 5, 6]) == [1, 3, 6] and first_middle_last([1, 2]) == [1, 2]


# ---------------------------------------------------------------------- a tiny study
ADVERSARIAL = {"class_path": "xai_lightning.AdversarialTrainingCallback", "init_args": {"eps": 1.0, "steps": 1}}
VERDICT = {
    "reference": "standard",
    "treatment": "robust",
    "measures": [
        {"name": "clean accuracy", "key": "val/acc", "better": "higher"},
        {
            "name": "Grad-CAM energy in mask",
            "key": "gradcam/.*/energy_in_mask",
            "better": "higher",
            "baseline": "gradcam/.*/energy_in_mask_uniform",
        },
        {
            "name": "deletion AUC",
            "key": "quality/gradcam/deletion_auc",
            "better": "lower",
            "baseline": "quality/random/deletion_auc",
            "requires": "ExplanationQualityCallback",
        },
    ],
}
STUDY = {
    "name": "tiny",
    "seeds": [0, 1, 2],
    "data": {
        "class_path": "xai_lightning.ConceptWorldDataModule",
        "init_args": {"num_train": 96, "num_val": 32, "batch_size": 32},
    },
    "model": {
        "class_path": "xai_lightning.ImageClassifier",
        "init_args": {"network": {"class_path": "xai_lightning.SmallCNN", "init_args": {"num_classes": 5, "width": 4}}},
    },
    "trainer": {"max_epochs": 2, "enable_checkpointing": False, "deterministic": True},
    "observers": [{"class_path": "xai_lightning.GradCAMCallback", "init_args": {"num_probe": 4}}],
    "variants": {"standard": [], "robust": [ADVERSARIAL]},
    "verdict": VERDICT,
    "report": {
        "title": "Tiny study",
        "plots": [
            {"title": "Accuracy", "keys": ["val/acc"], "chance": 0.2},
            {
                "title": "Localisation",
                "keys": ["gradcam/.*/energy_in_mask"],
                "baseline": "gradcam/.*/energy_in_mask_uniform",
                "baseline_label": "uniform map",
            },
            {"title": "Nothing logs this", "keys": ["absent/key"]},
        ],
        "images": [{"title": "Grad-CAM", "key": "gradcam/grid", "colormap": "jet"}],
    },
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_study")
    return run_study(STUDY, output_dir=root, wandb=True, progress=False)


def test_study_trains_every_arm_per_seed_and_logs_each_run_to_its_own_wandb_run(tiny_study):
    assert [(run.variant, run.seed) for run in tiny_study.runs] == [
        ("standard", 0),
        ("robust", 0),
        ("standard", 1),
        ("robust", 1),
        ("standard", 2),
        ("robust", 2),
    ]
    for run in tiny_study.runs:
        assert run.matching(r"gradcam/.*/energy_in_mask") and [e for e, _ in run.scalars["val/acc"]] == [0, 1]
        assert len(run.matching_images("gradcam/grid")) == 2 and run.seconds > 0 and run.cpu_seconds > 0
        assert run.wandb_dir is not None and run.wandb_dir.exists()
    wandb_dirs = {run.wandb_dir for run in tiny_study.runs}
    assert len(wandb_dirs) == 6  # one W&B run per (arm, seed)
    # Tagged with arm and seed, all in one group: read back from the offline runs themselves.
    wandb_runs = load_runs([tiny_study.root / "wandb"])
    assert sorted((r.variant, r.seed) for r in wandb_runs) == sorted((r.variant, r.seed) for r in tiny_study.runs)


def test_wandb_and_csv_copies_of_the_runs_give_the_same_verdict(tiny_study):
    from_csv = study_verdict(tiny_study.runs)[1]
    from_wandb = study_verdict(load_runs([tiny_study.root / "wandb"]))[1]
    assert [row.cells() for row in from_csv] == [row.cells() for row in from_wandb]


def test_verdict_rows_absent_data_reads_not_logged_and_too_few_seeds(tiny_study):
    spec, rows = study_verdict(tiny_study.runs)
    assert [row.measure.name for row in rows] == ["clean accuracy", "Grad-CAM energy in mask", "deletion AUC"]
    deletion = rows[2]
    assert not deletion.logged and deletion.verdict == "not logged (needs ExplanationQualityCallback)"
    assert deletion.cells()[3] == deletion.verdict and deletion.cells()[-1] == deletion.verdict
    assert rows[0].comparison.n == 3
    assert rows[0].verdict in ("robust higher", "robust lower", "no significant difference")
    # Two seeds only: no verdict, by the rule.
    two = [run for run in tiny_study.runs if run.seed != 2]
    assert {row.verdict for row in verdict_table(two, spec) if row.logged} == {"too few seeds to tell"}
    # The uniform baseline is the mean mask area of the probe images (the same for every run).
    assert rows[1].baseline == pytest.approx(tiny_study.runs[0].last("gradcam/.*/energy_in_mask_uniform"))


def test_report_has_the_verdict_first_every_plot_and_panel(tiny_study, tmp_path):
    path = write_study_report(tiny_study.runs, tmp_path / "report.html")
    html = path.read_text()
    assert html.index("Verdict") < html.index("Over training") < html.index("Grad-CAM</h2>")
    verdict = report_tables(html)[0]
    assert verdict[0][:3] == ["measure", "better", "baseline"] and "[95% CI]" in verdict[0][3]
    assert [row[0] for row in verdict[1:]] == ["clean accuracy", "Grad-CAM energy in mask", "deletion AUC"]
    assert "Holm" in html and "excludes 0" in html  # the rule is stated
    alts = [image.get("alt", "") for image in embedded_images(html)]
    assert any(alt.startswith("Accuracy") and "chance" in alt for alt in alts)
    assert any(alt.startswith("Localisation") and "uniform map" in alt and "3 seeds" in alt for alt in alts)
    assert "Not logged: Nothing logs this (absent/key)" in html
    assert sum("epoch" in alt for alt in alts) == 4  # first and last epoch × 2 arms (first seed)
    assert "colour scale of the maps" in alts


def test_curves_have_integer_epoch_ticks_bands_and_an_outside_legend(tiny_study):
    by_arm = {"standard": tiny_study.arm("standard"), "robust": tiny_study.arm("robust")}
    spec = STUDY["report"]["plots"][1]
    figure, drawn = curve_figure(by_arm, spec)
    axis = figure.axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()
    ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    legend = axis.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 >= axis.bbox.x1 - 1  # outside, to the right
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["standard", "robust", "uniform map"] and drawn["baselines"] == ["uniform map"]
    assert len(axis.collections) == 2  # one CI band per arm
    # The band is the t-interval of the seeds' values at each epoch.
    values = [run.measure("gradcam/.*/energy_in_mask")[1] for run in by_arm["robust"]]
    from xai_lightning.studies.statistics import t_interval

    band = axis.collections[1].get_paths()[0].vertices[:, 1]
    interval = t_interval(values)
    assert band.min() <= interval.low + 1e-9 and band.max() >= interval.high - 1e-9


def test_the_same_config_and_seeds_give_the_same_verdict_table(tiny_study, tmp_path):
    again = run_study(STUDY, output_dir=tmp_path, wandb=False, progress=False)
    first = [row.cells() for row in study_verdict(tiny_study.runs)[1]]
    second = [row.cells() for row in study_verdict(again.runs)[1]]
    assert first == second
    for one, two in zip(tiny_study.runs, again.runs):
        assert one.scalars == two.scalars  # number for number


# ---------------------------------------------------------------------- pairing
class RecordTraining(pl.Callback):
    """Records the initial weights and every training batch's labels (read-only)."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.labels: list[torch.Tensor] = []

    def on_fit_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labels.append(batch[1].detach().clone())


class DrawsRandomNumbers(pl.Callback):
    """Consumes the global RNG before every batch, as an arm with extra randomness might."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.rand(7)


def _pairing_study(shuffle_seed: object = "study") -> dict:
    study = copy.deepcopy(STUDY)
    study.update(seeds=[3], observers=[{"class_path": "tests.test_studies.RecordTraining"}], verdict=None, report={})
    del study["verdict"]
    study["variants"] = {
        "standard": [],
        "robust": [ADVERSARIAL],
        "noisy": [{"class_path": "tests.test_studies.DrawsRandomNumbers"}],
    }
    study["trainer"] = dict(study["trainer"], max_epochs=2, limit_val_batches=0)
    if shuffle_seed != "study":
        study["data"]["init_args"]["shuffle_seed"] = shuffle_seed
    return study


def test_runs_of_one_seed_share_initial_weights_and_data_order(tmp_path):
    result = run_study(_pairing_study(), output_dir=tmp_path / "paired", wandb=False, progress=False)
    recorders = {label.split(" ")[0]: callbacks[-1] for label, callbacks in result.callbacks.items()}
    standard = recorders["standard"]
    assert len(standard.labels) == 6  # 3 batches × 2 epochs
    for other in ("robust", "noisy"):
        assert all(torch.equal(standard.initial[k], recorders[other].initial[k]) for k in standard.initial)
        assert all(torch.equal(a, b) for a, b in zip(standard.labels, recorders[other].labels)), other
    # Epochs are shuffled differently from each other (the generator advances), but reproducibly.
    assert not torch.equal(standard.labels[0], standard.labels[3])
    # Without the data module's own generator, extra random draws change the order: the control.
    unpaired = run_study(
        _pairing_study(shuffle_seed=None), output_dir=tmp_path / "unpaired", wandb=False, progress=False
    )
    recorders = {label.split(" ")[0]: callbacks[-1] for label, callbacks in unpaired.callbacks.items()}
    assert not all(torch.equal(a, b) for a, b in zip(recorders["standard"].labels, recorders["noisy"].labels))


# ---------------------------------------------------------------------- bad input
def test_study_config_errors_name_the_offending_entry(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['variants'\]"):
        run_study({k: v for k, v in STUDY.items() if k != "variants"}, output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"seeds has a duplicate: 1 appears 2 times in \[0, 1, 1\]"):
        plan_study(dict(STUDY, seeds=[0, 1, 1]))
    unknown = copy.deepcopy(STUDY)
    unknown["verdict"]["measures"].append({"name": "shape bias", "key": "shapebias/score", "better": "higher"})
    with pytest.raises(ValueError, match=r"verdict.measures\[3\] \('shape bias'\): unknown measure.*'shapebias/'"):
        plan_study(unknown)
    misspelt = copy.deepcopy(STUDY)
    misspelt["verdict"]["measures"][0]["beter"] = "higher"
    with pytest.raises(
        ValueError, match=r"verdict.measures\[0\] \('clean accuracy'\) has unknown field\(s\) \['beter'\]"
    ):
        plan_study(misspelt)
    direction = copy.deepcopy(STUDY)
    direction["verdict"]["measures"][1]["better"] = "up"
    with pytest.raises(ValueError, match=r"'Grad-CAM energy in mask'.*better must be 'higher' or 'lower'"):
        plan_study(direction)
    with pytest.raises(ValueError, match=r"verdict.treatment is 'robust_eps9'"):
        plan_study(dict(STUDY, verdict=dict(VERDICT, treatment="robust_eps9")))
    with pytest.raises(ValueError, match=r"no variant has a callback that takes eps"):
        plan_study(dict(STUDY, epsilons=[0.5], variants={"a": [], "b": []}, verdict=None))
    with pytest.raises(ValueError, match=r"trains at eps 1, which is not among epsilons \[0.5, 2.0\]"):
        plan_study(dict(STUDY, epsilons=[0.5, 2.0]))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['seedz'\]"):
        plan_study(dict(STUDY, seedz=[0]))


def test_an_epsilon_sweep_has_one_robust_arm_per_epsilon():
    plan = plan_study(dict(STUDY, epsilons=[0.5, 1.0, 2.0]))
    assert [(arm.name, arm.epsilon) for arm in plan.arms] == [
        ("standard", None),
        ("robust_eps0.5", 0.5),
        ("robust", 1.0),
        ("robust_eps2", 2.0),
    ]
    assert [arm.callbacks[0]["init_args"]["eps"] for arm in plan.arms[1:]] == [0.5, 1.0, 2.0]
    assert plan.config_id == plan_study(dict(STUDY, epsilons=[0.5, 1.0, 2.0], seeds=[7])).config_id
    assert plan.config_id != plan_study(STUDY).config_id


def test_report_command_reads_any_runs_and_names_bad_input(tiny_study, tmp_path, capsys):
    cli_main(["report", str(tiny_study.root), "--output", str(tmp_path / "cli.html")])
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and "not logged (needs ExplanationQualityCallback)" in printed
    html = (tmp_path / "cli.html").read_text()
    expected = write_study_report(tiny_study.runs, tmp_path / "direct.html").read_text()
    assert report_tables(html)[0] == report_tables(expected)[0]  # the study's own verdict, rebuilt from disk

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["report", str(empty)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "No callback logs under" in error and "metrics.csv" in error and "offline-run-*" in error
    with pytest.raises(ValueError, match="looked for CSV logs .*metrics.csv.* and offline W&B runs"):
        load_runs([empty])

    # A run of another config in the same directory: refused, naming it.
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_study.root / "standard" / "seed0", mixed / "a")
    shutil.copytree(tiny_study.root / "robust" / "seed0", mixed / "b")
    metadata = json.loads((mixed / "b" / "study_run.json").read_text())
    metadata["config_id"] = "0123456789ab"
    (mixed / "b" / "study_run.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"different study configs: '.*mixed/b' \(config 0123456789ab\)"):
        load_runs([mixed])


def test_a_plain_run_without_a_study_gets_curves_and_panels(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from tests.conftest import quiet_trainer, small_classifier, small_datamodule

    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=2,
        callbacks=[GradCAMCallback(num_probe=4)],
        logger=CSVLogger(str(tmp_path), name="plain"),
        enable_checkpointing=False,
        limit_train_batches=2,
    )
    trainer.fit(small_classifier(width=4), small_datamodule(num_train=64, num_val=16))
    runs = load_runs([tmp_path / "plain"])
    assert len(runs) == 1 and runs[0].seed is None and runs[0].config is None
    assert [e for e, _ in runs[0].scalars["gradcam/network.features/energy_in_mask"]] == [0, 1]
    html = write_study_report(runs, tmp_path / "plain.html").read_text()
    alts = [image.get("alt", "") for image in embedded_images(html)]
    assert any(alt.startswith("val/acc") for alt in alts) and any("epoch 2" in alt for alt in alts)
    assert "Verdict" not in html  # no seeds, no verdict


def test_verdict_parsing_accepts_rows_for_callbacks_the_study_does_not_configure():
    spec = parse_verdict(VERDICT, ["standard", "robust"], {"gradcam": "GradCAMCallback"})
    assert [m.requires for m in spec.measures] == [None, None, "ExplanationQualityCallback"]
    run = RunRecord(path=None, variant="standard", seed=0, scalars={"val/acc": [(0, 0.5)]})
    rows = verdict_table([run], spec)
    assert [row.verdict for row in rows] == [
        "not logged",
        "not logged",
        "not logged (needs ExplanationQualityCallback)",
    ]
