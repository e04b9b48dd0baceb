"""The main study: its CI-size config writes a complete report (every verdict row, CI columns, verdict
words, baselines, panels), and on the small config robust gradients sit on the object for every seed."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.test_studies import embedded_images, report_tables
from xai_lightning.studies import load_study_config, run_study

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
SMALL = CONFIGS / "robust_vs_standard_small.yaml"
CI = CONFIGS / "robust_vs_standard_ci.yaml"
WORDS = {"robust higher", "robust lower", "no significant difference", "too few seeds to tell"}
#: The rows the issue asks for, by a word of their name.
EXPECTED_ROWS = (
    "clean accuracy",
    "robust accuracy",
    "Grad-CAM energy",
    "gradient energy",
    "pointing game",
    "deletion AUC",
    "insertion AUC",
    "faithfulness correlation",
    "sanity-check similarity",
    "relative TCAV shape vs colour",
    "dissection shape units",
    "dissection colour units",
)


def _experiment():
    spec = importlib.util.spec_from_file_location("robust_vs_standard", CONFIGS.parent / "robust_vs_standard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    config = load_study_config(CI)
    result, report = _experiment().run(
        config, tmp_path_factory.mktemp("robust_vs_standard_ci"), wandb=True, progress=False
    )
    return result, report.read_text(), config


def test_the_ci_config_is_the_small_study_shrunk():
    small, ci = load_study_config(SMALL), load_study_config(CI)
    assert ci["verdict"] == small["verdict"] and ci["report"] == small["report"] and ci["seeds"] == small["seeds"]
    full = load_study_config(CONFIGS / "robust_vs_standard_full.yaml")
    assert small["seeds"] == [0, 1, 2] and full["seeds"] == [0, 1, 2, 3, 4]
    robust = small["variants"]["robust"][0]["init_args"]
    assert robust["eps"] == 1.0 and robust["norm"] == "l2"


def test_verdict_table_has_every_row_ci_columns_and_verdict_words(ci_study):
    _, html, config = ci_study
    verdict = report_tables(html)[0]
    header, rows = verdict[0], verdict[1:]
    assert header[3:6] == ["standard mean [95% CI]", "robust mean [95% CI]", "robust − standard [95% CI]"]
    assert header[6:9] == ["p (paired t)", "p (Holm)", "p (Wilcoxon)"] and header[-1] == "verdict"
    names = [row[0] for row in rows]
    assert names == [m["name"] for m in config["verdict"]["measures"]]
    for expected in EXPECTED_ROWS:
        assert any(expected in name for name in names), expected
    declared = {m["name"]: m for m in config["verdict"]["measures"]}
    for row in rows:  # every row logged: mean [CI] per arm and of the difference, p, Holm p, words
        assert row[-1] in WORDS, row
        if declared[row[0]].get("baseline"):  # the uniform map, random maps, random CAVs: a number
            assert 0.0 <= abs(float(row[2])) <= 1.0, row
        for cell in row[3:6]:
            assert cell.count("[") == 1 and cell.endswith("]"), (row[0], cell)  # mean [low, high]
        assert row[6] != "–" and row[7] != "–", row  # p and Holm p
    assert "Holm" in html and "excludes 0" in html and "fewer than 3 seeds" in html  # the rule, stated


def test_plots_draw_their_baselines_and_every_plot_has_data(ci_study):
    result, html, config = ci_study
    alts = [image.get("alt", "") for image in embedded_images(html)]
    for plot in config["report"]["plots"]:
        caption = next((alt for alt in alts if alt.startswith(plot["caption"])), None)
        assert caption is not None, plot["title"]
        assert "3 seeds" in caption, caption
        baselines = [plot.get("baseline_label")] if plot.get("baseline") else []
        for baseline in baselines + (["chance"] if "chance" in plot else []):
            assert baseline in caption, (plot["title"], caption)
            if plot.get("baseline"):
                assert all(run.matching(plot["baseline"]) for run in result.runs), plot["baseline"]
    assert "Not logged:" not in html
    by_title = {plot["title"]: plot for plot in config["report"]["plots"]}
    assert by_title["Loss-gradient energy on the object"]["baseline_label"] == "uniform map"
    assert by_title["Validation accuracy"]["chance"] == 0.2


def test_report_carries_panels_tcav_p_values_and_dissection_counts(ci_study):
    result, html, config = ci_study
    for panel in config["report"]["images"]:
        assert f"<h2>{panel['title']}</h2>" in html.replace("&#x27;", "'"), panel["title"]
        assert f"not logged ({panel['key']})" not in html, panel["key"]
    tables = report_tables(html)
    tcav = next(table for table in tables if "p (median over seeds)" in table[0])
    pairs = {(row[0], row[2], row[3]) for row in tcav[1:]}
    assert {("standard", "circle vs red", "circle"), ("robust", "square vs green", "square")} <= pairs
    # The per-category unit counts: the table headed arm, layer, then one column per concept category.
    dissection = next(table for table in tables if table[0][:2] == ["arm", "layer"] and "concept" not in table[0])
    assert "object" in dissection[0] and "colour" in dissection[0]
    assert {row[0] for row in dissection[1:]} == {"standard", "robust"}
    alts = [image.get("alt", "") for image in embedded_images(html)]
    # Grad-CAM, attributions, loss gradients, randomised Grad-CAM maps
    assert sum(alt == "colour scale of the maps" for alt in alts) == 4
    assert not result.failures, result.failures


def test_running_the_study_twice_gives_the_same_verdict_table(ci_study, tmp_path):
    """Every observer of the study (random CAVs, PGD starts, random maps, re-initialisations) draws from
    seeded generators, so a second run of the same config reproduces the verdict number for number."""
    result, html, config = ci_study
    again, report = _experiment().run(copy.deepcopy(config), tmp_path, wandb=False, progress=False)
    assert report_tables(report.read_text())[0] == report_tables(html)[0]
    for first, second in zip(result.runs, again.runs, strict=True):
        assert (first.variant, first.seed) == (second.variant, second.seed)
        assert first.scalars == second.scalars, first.label


def test_relative_tcav_and_magnitude_scalars_are_logged_beside_sign_count(ci_study):
    result, _, _ = ci_study
    run = result.runs[0]
    layer = "network.features.20"
    for concept in ("circle_vs_red", "square_vs_green", "circle"):
        for what in ("score", "sign_count", "magnitude", "p_value", "significant"):
            assert run.matching(f"tcav/{layer}/{concept}/(circle|square)/{what}"), (concept, what)
        assert run.matching(f"tcav/{layer}/{concept}/cav_accuracy"), concept
    assert run.matching(f"tcav/{layer}/random_baseline/circle/magnitude")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="not per-seed robust on ConceptWorld: seed 1's robust arm is below or within 0.01 of the "
    "standard arm in every configuration tried (see the docstring)",
)
@pytest.mark.parametrize("config_path", [SMALL])
def test_robust_gradients_sit_more_on_the_object_for_every_seed(config_path, tmp_path):
    """The effect the study was set up to show, on the small config's training (ε = 1.0, 3 seeds).

    Expected to fail (xfail, out of CI): the claim does not hold for every seed. Last-epoch gradient
    energy in the object mask, robust vs standard, seeds 0 / 1 / 2 (measured 2026-12-03, one thread):
    the small config 0.668/0.509, 0.484/0.477, 0.616/0.580 (seed 1 with two threads: 0.454/0.611);
    cosine learning rate 0.574/0.537, 0.570/0.588, 0.581/0.535; training ε 2.0 0.578/0.537,
    0.562/0.588, 0.535/0.535; 8 epochs with cosine 0.594/0.515, 0.598/0.594, 0.591/0.516; spurious
    colour 0.5 instead of 0.8, 8 epochs with cosine 0.624/0.553, 0.596/0.619, 0.622/0.452. The issue-14b branch
    before the merges gives the same numbers as main (seed 1: 0.484/0.477), so no merge changed it.
    Only without the spurious colour did robust beat standard on all three seeds (0.661/0.554,
    0.615/0.545, 0.560/0.471), where the robust arm learns the shapes poorly in 5 epochs (0.42-0.72).
    The full config (5 seeds, 5,000 images, 10 epochs; measured once, README) shows the effect on
    every seed at ε 2.0 (0.673/0.636, 0.653/0.630, 0.670/0.500, 0.674/0.541, 0.674/0.647), not at
    ε 1.0 (0.595/0.636, 0.660/0.630, 0.560/0.500, 0.450/0.541, 0.658/0.647).

    Only the callback that measures it is kept: observers leave training bit-identical (the
    library's contract, tested in test_observing_does_not_disturb.py), so these are the small
    study's models, and the RobustnessCallback measures them on the same probe set.
    """
    config = copy.deepcopy(load_study_config(config_path))
    robustness = next(o for o in config["observers"] if o["class_path"].endswith("RobustnessCallback"))
    robustness["init_args"]["synthesis_epochs"] = []
    # Only the last epoch is asserted: observe only there (the final weights are always observed).
    robustness["init_args"]["every_n_epochs"] = config["trainer"]["max_epochs"]
    config.update(observers=[robustness], verdict=None)
    del config["verdict"]
    result = run_study(config, output_dir=tmp_path, wandb=False, progress=False)
    key = "robustness/gradient_energy_in_mask"
    for seed in config["seeds"]:
        robust, standard = result.run("robust", seed).last(key), result.run("standard", seed).last(key)
        uniform = result.run("standard", seed).last(key + "_uniform")
        assert robust > standard > uniform, (seed, robust, standard, uniform)


# ---------------------------------------------------------------------- the concept measure
def test_contrast_sets_differ_in_the_two_concepts_only():
    from xai_lightning import ConceptWorld
    from xai_lightning.concepts import concept_contrast_from_world, concept_contrast_latents

    world = ConceptWorld(200, seed=1, label_by="shape", spurious_concept="colour", spurious_p=0.8)
    circle, red = world.shapes.index("circle"), list(world.colours).index("red")
    latent_a, latent_b = concept_contrast_latents(world, "circle", "red", 50, seed=3)
    assert bool((latent_a.shape == circle).all()) and bool((latent_a.colour != red).all())
    assert bool((latent_b.colour == red).all()) and bool((latent_b.shape != circle).all())
    assert len(set(latent_a.colour.tolist())) == 3 and len(set(latent_b.shape.tolist())) == len(world.shapes) - 1
    images_a, images_b = concept_contrast_from_world(world, "circle", "red", 50, seed=3)
    assert images_a.shape == (50, 3, 32, 32) and torch.equal(images_a, world.render(latent_a).images)
    assert torch.equal(images_b, concept_contrast_from_world(world, "circle", "red", 50, seed=3)[1])  # seeded
    # In the data itself, circles are mostly red: why the sets are rendered, not drawn.
    data_circles = world.latent.shape == circle
    assert float((world.latent.colour[data_circles] == red).float().mean()) > 0.7


@pytest.fixture(scope="module")
def shape_and_colour_models(trained_shape_model):
    """The session's shape-labelled SmallCNN, and one labelled by colour (3 epochs), with validation worlds."""
    import pytorch_lightning as pl

    from tests.conftest import quiet_trainer
    from xai_lightning import ConceptWorldDataModule, ImageClassifier, SmallCNN

    shapes = ConceptWorldDataModule(num_train=0, num_val=500, seed=0)
    shapes.setup("validate")
    pl.seed_everything(0, verbose=False)
    colours = ConceptWorldDataModule(num_train=1000, num_val=200, batch_size=64, label_by="colour", shuffle_seed=0)
    model = ImageClassifier(SmallCNN(num_classes=4, width=8), lr=3e-3)
    trainer = quiet_trainer(max_epochs=3, logger=False, enable_checkpointing=False)
    trainer.fit(model, colours)
    assert float(trainer.callback_metrics["val/acc"]) > 0.9
    return {"shape": (trained_shape_model, shapes.val_set), "colour": (model.eval(), colours.val_set)}


def test_relative_tcav_reads_whether_a_class_leans_on_shape_or_colour(shape_and_colour_models):
    """Ground truth: a shape-labelled model's circle class rises along circle-vs-red; a colour-labelled
    model's red class falls along it (it leans on red, not on the circle)."""
    from xai_lightning import TCAV
    from xai_lightning.concepts import concept_contrast_from_world

    magnitude = {}
    for label_by, (model, world) in shape_and_colour_models.items():
        a, b = concept_contrast_from_world(world, "circle", "red", 60, seed=0)
        tcav = TCAV(layers=["network.features.20"], num_random=5, examples_per_concept=20)
        cavs = tcav.fit_relative_cavs(model, {"circle vs red": (a, b)}, world.images)
        rows = torch.nonzero(world.labels == 0).flatten()[:40]  # class 0: circle / red
        result = tcav.score(model, world.images[rows], world.labels[rows], cavs, classes=[0])
        magnitude[label_by] = float(result.magnitudes.mean())
        assert float(result.cav_accuracy.mean()) > 0.9
    assert magnitude["shape"] > 0.9 and magnitude["colour"] < 0.1, magnitude
