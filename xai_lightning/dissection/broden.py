"""The Broden on-disk format (Bau et al. 2017): a reader, and an exporter for ConceptWorld.

A Broden directory holds

* ``index.csv`` — one row per image: ``image,split,ih,iw,sh,sw`` then one column per category
  (``color,object,material,part,scene,texture``). A pixel category's cell lists segmentation
  PNGs (``;``-separated, one per overlapping label layer); an image-level category's cell
  (``scene``) lists label numbers. An empty cell: the image has no labels of that category.
* ``images/`` — the images and segmentations (paths in ``index.csv`` are relative to it). A
  segmentation PNG stores the label number of every pixel as ``R + 256·G`` (0 = unlabelled).
* ``label.csv`` — ``number,name,category,frequency,coverage,syns``; ``category`` reads like
  ``object(412);part(23)`` (a label may occur in several categories; we take the one with the
  most images, as NetDissect does).
* ``category.csv`` (``name,first,last,count,frequency``) and ``c_<category>.csv``
  (``code,number,name,frequency,coverage``): the per-category label codes.

:class:`BrodenDataset` reads such a directory (the real Broden too) into items with
``image (3, H, W)`` and ``masks (C, H, W)``; :func:`export_broden` writes a ConceptWorld dataset
in the format, so the reader is tested on data whose masks are known.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xai_lightning.dissection.concept_labels import ConceptLabels
from xai_lightning.dissection.vocabulary import NON_CONCEPT_CATEGORIES, ConceptVocabulary, vocabulary_from_dataset

__all__ = ["BRODEN_CATEGORIES", "BrodenDataset", "export_broden"]

#: The category columns of Broden's ``index.csv``, in order.
BRODEN_CATEGORIES: tuple[str, ...] = ("color", "object", "material", "part", "scene", "texture")
#: ConceptWorld's category names that Broden spells differently.
_TO_BRODEN = {"colour": "color"}
_CATEGORY_COUNT = re.compile(r"([^;()]+)\((\d+)\)")


def _inside(root: Path, relative: str, what: str) -> Path:
    """``root/relative``, refusing entries of ``index.csv`` that point outside ``root`` (``../``, absolute paths).

    Lexical (no file system access), so the whole index is checked when the dataset is opened.
    """
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, relative))
    if not path.startswith(base + os.sep):
        raise ValueError(
            f"{what} {relative!r} in {root.parent / 'index.csv'} points outside the dataset's images directory "
            f"{base!r}; Broden paths are relative to images/. Fix index.csv."
        )
    return Path(path)


def _decode_segmentation(path: Path) -> torch.Tensor:
    """``(h, w)`` long label numbers of a segmentation PNG: ``R + 256·G``."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1])


def _encode_segmentation(labels: torch.Tensor) -> np.ndarray:
    """``(h, w)`` label numbers → uint8 RGB with ``R + 256·G`` = the number."""
    numbers = labels.long().numpy()
    rgb = np.zeros((*numbers.shape, 3), dtype=np.uint8)
    rgb[..., 0] = numbers % 256
    rgb[..., 1] = numbers // 256
    return rgb


def _primary_category(text: str, known: Sequence[str]) -> str | None:
    """The category with the largest count in ``object(412);part(23)`` (first on ties)."""
    best, best_count = None, -1
    for name, count in _CATEGORY_COUNT.findall(text or ""):
        name = name.strip()
        if name in known and int(count) > best_count:
            best, best_count = name, int(count)
    if best is None and text and text.strip() in known:
        best = text.strip()
    return best


class BrodenDataset(torch.utils.data.Dataset):
    """Images and concept masks of a Broden-format directory.

    Args:
        root: the directory with ``index.csv``, ``label.csv`` and ``images/``.
        categories: the categories to read (default: every category column of ``index.csv``
            that has labels).
        split: keep only rows of this split (``"train"``/``"val"``); None keeps all.
        mask_size: ``"image"`` (default) — masks upsampled (nearest) to the image size, as the
            callbacks' probe sets want; ``"segmentation"`` — at the stored ``sh × sw``.

    Items: ``image (3, ih, iw)`` float in [0, 1], ``masks (C, H, W)`` bool over
    :attr:`concept_names`, ``labelled (G,)`` bool over :attr:`category_names` (the row has labels of
    the category) and ``index``. Dense masks cost ``C·H·W`` bytes an item: fine for ConceptWorld,
    heavy for the full Broden (~1,200 labels) — use :meth:`concept_labels` (label layers) there.

    Raises:
        FileNotFoundError: naming the missing file when ``root`` is not a Broden directory.
    """

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        split: str | None = None,
        mask_size: Literal["image", "segmentation"] = "image",
    ) -> None:
        self.root = Path(root)
        for name in ("index.csv", "label.csv"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(
                    f"{self.root / name} does not exist: a Broden directory holds index.csv, label.csv, category.csv "
                    "and images/ (see xai_lightning.dissection.export_broden for the format)."
                )
        if mask_size not in ("image", "segmentation"):
            raise ValueError(f"mask_size must be 'image' or 'segmentation'; got {mask_size!r}")
        self.mask_size = mask_size
        with open(self.root / "index.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c for c in (reader.fieldnames or []) if c in BRODEN_CATEGORIES]
            rows = [row for row in reader if split is None or row.get("split") == split]
        images = self.root / "images"
        for row in rows:  # every path must stay inside images/: checked now, not at the n-th item
            _inside(images, row.get("image") or "", "Image")
            for category in columns:
                for entry in (row.get(category) or "").split(";"):
                    entry = entry.strip()
                    if entry and not entry.isdigit():
                        _inside(images, entry, "Segmentation")
        self.rows = rows
        with open(self.root / "label.csv", newline="") as handle:
            labels = list(csv.DictReader(handle))
        wanted = list(categories) if categories is not None else columns
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            raise ValueError(f"Categories {unknown} are not columns of {self.root / 'index.csv'}; columns: {columns}")
        names, cats, numbers = [], [], []
        for label in labels:
            number = int(label["number"])
            if number == 0:
                continue
            primary = _primary_category(label.get("category", ""), wanted)
            if primary is not None:
                names.append(label["name"])
                cats.append(primary)
                numbers.append(number)
        if not names:
            raise ValueError(f"{self.root / 'label.csv'} has no labels in the categories {wanted}")
        self.vocabulary = ConceptVocabulary(tuple(names), tuple(cats))
        self.categories = tuple(c for c in wanted if c in self.vocabulary.category_names)
        # label number -> concept index + 1 (0: not a concept we read)
        self._lookup = torch.zeros(max(numbers) + 1, dtype=torch.long)
        self._lookup[torch.tensor(numbers)] = torch.arange(1, len(numbers) + 1)

    # ------------------------------------------------------------------ vocabulary
    @property
    def concept_vocabulary(self) -> ConceptVocabulary:
        return self.vocabulary

    @property
    def concept_names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    @property
    def concept_categories(self) -> dict[str, str]:
        return dict(zip(self.vocabulary.names, self.vocabulary.categories))

    @property
    def category_names(self) -> tuple[str, ...]:
        return self.vocabulary.category_names

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ reading
    def _concepts(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.clamp(0, len(self._lookup) - 1) * (numbers < len(self._lookup))
        return self._lookup[numbers]

    def _layers(self, row: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, sh, sw)`` long concept index + 1 layers and ``(G,)`` labelled categories of one row."""
        height, width = int(row["sh"]), int(row["sw"])
        layers, labelled = [], torch.zeros(len(self.category_names), dtype=torch.bool)
        for g, category in enumerate(self.category_names):
            cell = (row.get(category) or "").strip()
            if not cell:
                continue
            labelled[g] = True
            for entry in cell.split(";"):
                entry = entry.strip()
                if not entry:
                    continue
                if entry.isdigit():  # an image-level label: the whole image
                    layers.append(self._concepts(torch.full((height, width), int(entry), dtype=torch.long)))
                else:
                    segmentation = _decode_segmentation(_inside(self.root / "images", entry, "Segmentation"))
                    if tuple(segmentation.shape) != (height, width):
                        raise ValueError(
                            f"Segmentation {self.root / 'images' / entry} has shape {tuple(segmentation.shape)} but "
                            f"index.csv says sh x sw = {height} x {width}."
                        )
                    layers.append(self._concepts(segmentation))
        if not layers:
            layers.append(torch.zeros(height, width, dtype=torch.long))
        return torch.stack(layers), labelled

    def _image(self, row: dict[str, str]) -> torch.Tensor:
        path = _inside(self.root / "images", row["image"], "Image")
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def _resize(self, layers: torch.Tensor, row: dict[str, str]) -> torch.Tensor:
        if self.mask_size == "segmentation":
            return layers
        size = (int(row["ih"]), int(row["iw"]))
        if tuple(layers.shape[-2:]) == size:
            return layers
        return F.interpolate(layers.unsqueeze(0).float(), size=size, mode="nearest").squeeze(0).long()

    def concept_labels(self, indices: Sequence[int] | torch.Tensor) -> ConceptLabels:
        """Label layers of several rows (all of one mask size), without dense masks."""
        parts = []
        for i in torch.as_tensor(indices).view(-1).tolist():
            layers, labelled = self._layers(self.rows[i])
            layers = self._resize(layers, self.rows[i])
            parts.append(ConceptLabels(layers.unsqueeze(0).to(torch.int32), labelled.unsqueeze(0)))
        return ConceptLabels.cat(parts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        layers, labelled = self._layers(row)
        layers = self._resize(layers, row)
        masks = torch.zeros(len(self.vocabulary) + 1, *layers.shape[-2:], dtype=torch.bool)
        masks.scatter_(0, layers, True)
        return {"image": self._image(row), "masks": masks[1:], "labelled": labelled, "index": index}


def export_broden(
    dataset: Any,
    root: str | Path,
    indices: Sequence[int] | torch.Tensor | None = None,
    split: str = "train",
    exclude_categories: Sequence[str] = NON_CONCEPT_CATEGORIES,
) -> Path:
    """Write ``dataset`` (a ConceptWorld, or anything with ``concept_names``/``concept_categories``
    whose items carry ``image`` and ``masks``) as a Broden directory under ``root``.

    Concepts keep their names (``"colour/red"``); categories take Broden's spelling (``colour`` →
    ``color``). A category whose concepts cover whole images (ConceptWorld's scenes) is written as
    image-level label numbers, like Broden's ``scene``; the others as segmentation PNGs, one per
    layer of overlapping labels (e.g. ``part/corner`` over ``part/edge``). Images are lossless PNGs.

    Returns the directory.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    vocabulary, channels = vocabulary_from_dataset(dataset, exclude_categories)
    broden_category = [_TO_BRODEN.get(c, c) for c in vocabulary.categories]
    unknown = sorted({c for c in broden_category if c not in BRODEN_CATEGORIES})
    if unknown:
        raise ValueError(f"Categories {unknown} have no Broden column; Broden's are {list(BRODEN_CATEGORIES)}")
    rows = range(len(dataset)) if indices is None else torch.as_tensor(indices).view(-1).tolist()
    frequency = torch.zeros(len(vocabulary), dtype=torch.long)
    coverage = torch.zeros(len(vocabulary), dtype=torch.float64)
    index_rows = []
    for i in rows:
        item = dataset[int(i)]
        image = item["image"]
        masks = torch.as_tensor(item["masks"])[channels].bool()
        stem = f"conceptworld/{int(i):06d}"
        (root / "images" / "conceptworld").mkdir(exist_ok=True)
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"{stem}.png")
        height, width = masks.shape[-2:]
        present = masks.flatten(1).any(1)
        frequency += present.long()
        coverage += masks.flatten(1).double().mean(1)
        row = {
            "image": f"{stem}.png",
            "split": split,
            "ih": image.shape[-2],
            "iw": image.shape[-1],
            "sh": height,
            "sw": width,
        }
        for category in BRODEN_CATEGORIES:
            members = [c for c in range(len(vocabulary)) if broden_category[c] == category and bool(present[c])]
            if not members:
                row[category] = ""
                continue
            if all(bool(masks[c].all()) for c in members):
                row[category] = ";".join(str(c + 1) for c in members)
                continue
            chosen = masks[members]  # (m, h, w)
            rank = chosen.long().cumsum(0) - 1
            depth = int(rank.max()) + 1
            files = []
            for layer in range(depth):
                numbers = torch.zeros(height, width, dtype=torch.long)
                for position, c in enumerate(members):
                    numbers[(rank[position] == layer) & chosen[position]] = c + 1
                name = f"{stem}_{category}_{layer}.png"
                Image.fromarray(_encode_segmentation(numbers)).save(root / "images" / name)
                files.append(name)
            row[category] = ";".join(files)
        index_rows.append(row)

    with open(root / "index.csv", "w", newline="") as handle:
        index_writer = csv.DictWriter(handle, fieldnames=["image", "split", "ih", "iw", "sh", "sw", *BRODEN_CATEGORIES])
        index_writer.writeheader()
        index_writer.writerows(index_rows)
    with open(root / "label.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for c, name in enumerate(vocabulary.names):
            writer.writerow(
                [
                    c + 1,
                    name,
                    f"{broden_category[c]}({int(frequency[c])})",
                    int(frequency[c]),
                    f"{float(coverage[c]):.6f}",
                    "",
                ]
            )
    used = [category for category in BRODEN_CATEGORIES if category in broden_category]
    with open(root / "category.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for category in used:
            members = [c for c in range(len(vocabulary)) if broden_category[c] == category]
            count = sum(1 for r in index_rows if r[category])
            writer.writerow([category, members[0] + 1, members[-1] + 1, len(members), count])
    for category in used:
        with open(root / f"c_{category}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["code", "number", "name", "frequency", "coverage"])
            members = [c for c in range(len(vocabulary)) if broden_category[c] == category]
            for code, c in enumerate(members, start=1):
                writer.writerow([code, c + 1, vocabulary.names[c], int(frequency[c]), f"{float(coverage[c]):.6f}"])
    return root
