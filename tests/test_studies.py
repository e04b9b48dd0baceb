"""Comparison studies: config instantiation, the report (parsed, every plot present, no broken images)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import pytest
from PIL import Image

from xai_lightning import GradCAMCallback, SmallCNN
from xai_lightning.logging import HtmlReport
from xai_lightning.studies import first_middle_last, instantiate, run_comparison, write_comparison_report


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


def test_instantiate_builds_nested_class_paths():
    built = instantiate({
        "callbacks": [{"class_path": "xai_lightning.GradCAMCallback", "init_args": {"num_probe": 3}}],
        "model": {"class_path": "xai_lightning.ImageClassifier",
                  "init_args": {"network": {"class_path": "xai_lightning.SmallCNN", "init_args": {"num_classes": 4}}}},
    })
    assert isinstance(built["callbacks"][0], GradCAMCallback) and built["callbacks"][0].num_probe == 3
    assert isinstance(built["model"].network, SmallCNN) and built["model"].num_classes == 4
    with pytest.raises(ValueError, match="Cannot import class_path 'xai_lightning.Nope'"):
        instantiate({"class_path": "xai_lightning.Nope"})
    with pytest.raises(TypeError, match="xai_lightning.SmallCNN"):
        instantiate({"class_path": "xai_lightning.SmallCNN", "init_args": {"colour": 1}})


def test_html_report_is_self_contained():
    import numpy as np

    report = HtmlReport("A <title>")
    report.heading("Section").begin_row().image(np.zeros((4, 5, 3), dtype=np.uint8), "black")
    report.table(["a", "b"], [[1, 0.123456], ["x", float("nan")]]).preformatted("key: value")
    html = report.render()
    assert "A &lt;title&gt;" in html and "0.1235" in html and "nan" in html
    assert len(embedded_images(html)) == 1
    assert first_middle_last([1, 2, 3, 4, 5, 6]) == [1, 3, 6] and first_middle_last([1, 2]) == [1, 2]


STUDY = {
    "name": "tiny",
    "seed": 0,
    "data": {"class_path": "xai_lightning.ConceptWorldDataModule",
             "init_args": {"num_train": 96, "num_val": 32, "batch_size": 32}},
    "model": {"class_path": "xai_lightning.ImageClassifier",
              "init_args": {"network": {"class_path": "xai_lightning.SmallCNN", "init_args": {"num_classes": 5, "width": 4}}}},
    "trainer": {"max_epochs": 3, "enable_progress_bar": False, "enable_checkpointing": False},
    "observers": [{"class_path": "xai_lightning.GradCAMCallback", "init_args": {"num_probe": 4}}],
    "variants": {"first": [], "second": []},
    "report": {
        "title": "Tiny study",
        "plots": [{"title": "Accuracy", "keys": ["val/acc"]},
                  {"title": "Localisation", "keys": ["gradcam/.*/energy_in_mask"]},
                  {"title": "Nothing logs this", "keys": ["absent/key"]}],
        "images": [{"title": "Grad-CAM", "key": "gradcam/grid"}],
    },
}


def test_comparison_study_trains_identical_variants_and_reports_them(tmp_path, capsys):
    results = run_comparison(STUDY, output_dir=tmp_path, wandb=True)
    assert list(results) == ["first", "second"]
    first, second = results["first"], results["second"]
    # Same seed, data, architecture and no variant callbacks: identical curves.
    assert first.series("val/acc") == second.series("val/acc")
    assert first.series("gradcam/network.features/energy_in_mask") == second.series("gradcam/network.features/energy_in_mask")
    assert len(first.images("gradcam/grid")) == 3 and first.wandb_dir.exists()
    printed = capsys.readouterr().out
    assert "[first] epoch 3/3" in printed and "val/acc=" in printed
    path = write_comparison_report(results, STUDY["report"], tmp_path / "report.html", config=STUDY)
    html = path.read_text()
    images = embedded_images(html)
    titles = [image.get("alt") for image in images]
    assert ["Accuracy", "Localisation", "Nothing logs this"] == titles[:3]
    assert sum("epoch" in (t or "") for t in titles) == 6  # first/middle/last × 2 variants
    assert "No data was logged for: Nothing logs this (absent/key)" in html


def test_study_config_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['variants'\]"):
        run_comparison({k: v for k, v in STUDY.items() if k != "variants"}, output_dir=tmp_path)
