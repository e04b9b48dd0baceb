"""TCAVCallback: TCAV scores with significance, every epoch, while the model trains."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, draw_probe, find_probe_dataset
from xai_lightning.concepts import (
    TCAV,
    ConceptCAVs,
    concept_contrast_from_world,
    concept_examples_from_world,
    load_concept_folder,
    resolve_world_concept,
    split_balanced,
    tcav_from_derivatives,
)
from xai_lightning.concepts.tcav import ScoreKind, TCAVResult
from xai_lightning.core import resolve_layers, select_logits
from xai_lightning.logging import display_images, labelled_grid, to_uint8_hwc

__all__ = ["TCAVCallback"]

TABLE_COLUMNS = (
    "epoch",
    "step",
    "layer",
    "concept",
    "class",
    "tcav_mean",
    "tcav_std",
    "magnitude_mean",
    "random_mean",
    "random_std",
    "p_value",
    "significant",
    "cav_accuracy_mean",
    "cav_accuracy_std",
    "num_inputs",
    "sign_count_mean",
    "random_magnitude_mean",
    "relative",
)


def concept_folder(concept_dir: str, name: str) -> Path:
    """``concept_dir/name``, refusing names that lead outside ``concept_dir`` (``../x``, absolute paths, links)."""
    root = Path(concept_dir).expanduser().resolve()
    folder = (root / name).resolve()
    if folder == root or root not in folder.parents:
        raise ValueError(
            f"TCAVCallback: concept {name!r} is not a sub-folder of concept_dir={concept_dir!r} (it resolves to "
            f"{str(folder)!r}). With concept_dir, concepts are the names of its sub-folders; give an absolute path "
            "without concept_dir to use a folder elsewhere."
        )
    return folder


def pair_key(a: str, b: str) -> str:
    """The key segment of a relative pair: ``circle``, ``red`` → ``circle_vs_red``."""
    return f"{a}_vs_{b}"


def _is_path(entry: str) -> bool:
    return entry.startswith(("/", "./", "../", "~")) or os.path.isdir(entry)


class TCAVCallback(ObserverCallback):
    """TCAV (Kim et al. 2018) of chosen concepts for chosen classes, every ``every_n_epochs`` epochs.

    At each scheduled epoch, inside the observer guard (training stays bit-identical), it trains
    every concept's CAVs against ``num_random`` random sets drawn from the validation data (plus
    the random-vs-random null), all layers in one batched solve; differentiates the class logit
    of the probe images of each class once; and tests each (layer, concept, class) for
    significance. Logged keys:

    ==================================================  =========================================
    ``tcav/<layer>/<concept>/<class>/score``            mean TCAV (``score_kind``) over random sets
    ``tcav/<layer>/<concept>/<class>/sign_count``       mean sign-count TCAV (fraction of inputs with
                                                        S > 0)
    ``tcav/<layer>/<concept>/<class>/magnitude``        mean magnitude TCAV Σ|S|·[S>0] / Σ|S| (does
                                                        not saturate at 1 as readily)
    ``tcav/<layer>/<concept>/<class>/p_value``          two-sided t-test against random-vs-random
    ``tcav/<layer>/<concept>/<class>/significant``      1.0 / 0.0 (Bonferroni if asked)
    ``tcav/<layer>/<concept>/cav_accuracy``             mean held-out CAV accuracy
    ``tcav/<layer>/<A>_vs_<B>/<class>/…``               the same five keys and ``cav_accuracy`` for
                                                        each relative CAV (concept A vs concept B)
    ``tcav/<layer>/random_baseline/<class>/…``          ``sign_count`` and ``magnitude`` of the
                                                        random-vs-random CAVs (the null)
    ``tcav/scores``                                     table: every (layer, concept, class) row,
                                                        relative pairs as ``"A vs B"`` (a fresh
                                                        table per epoch)
    ``tcav/<layer>/bars``                               bar chart: TCAV ± std per concept and
                                                        class, random baseline, ``*`` = significant
    ``tcav/<layer>/relative_bars``                      the same for the relative pairs
    ``tcav/<layer>/similar``                            probe images most / least similar to each
                                                        concept's CAV (cosine of activations)
    ==================================================  =========================================

    Scalars are logged for ``scalar_concepts`` (default: all concepts) and for every relative pair;
    the table has everything.

    Relative CAVs (Kim et al. 2018, section 3.1: concept A vs concept B instead of vs random) ask
    which of two concepts a class leans on, e.g. ``[circle, red]``: the object's shape or a colour
    spuriously correlated with it. A positive directional derivative along the circle-vs-red CAV
    means that moving the activation from "red object" towards "circle" raises the class logit. For
    ConceptWorld concepts of different families the two sets are rendered to differ in those two
    concepts only (circles of other colours vs red objects of other shapes; see
    :func:`~xai_lightning.concepts.concept_contrast_from_world`); folder or tensor concepts are used as
    given. Each of the ``num_random`` runs uses its own subsample of both sets, and the same t-test
    against the random-vs-random null gives the p-value.

    Args:
        layers: dotted layer name(s) or ``"auto"``; checked at ``setup``.
        concepts: concept names. Each is an image folder when ``concept_dir`` is set
            (``<concept_dir>/<name>``) or when it looks like a path (``/…``, ``./…``, ``~…`` or an
            existing directory); otherwise a ConceptWorld concept (``"striped"``, ``"red"``,
            ``"circle"``, ``"texture/dotted"``, ``"caption"``) drawn from the validation data,
            which must then be a :class:`~xai_lightning.data.ConceptWorld`. ``set_concepts`` gives
            tensors from Python instead.
        classes: class indices to score (default: all classes of the model).
        relative_concepts: pairs ``[A, B]`` of concepts for relative CAVs (names as ``concepts``;
            they need not be listed in ``concepts``).
        num_random: random counter-sets (≥ 2).
        examples_per_concept: examples on each side of every CAV; ConceptWorld concepts draw up
            to 3× as many so that the runs differ.
        every_n_epochs: how often.
        num_probe: probe images whose logit gradients are scored (drawn once from ``probe_split``).
        concept_dir: root folder with one sub-folder of images per concept (as tcav users have).
        random_pool_size: images of the validation data forming the random pool (default:
            ``2 · num_random · examples_per_concept``, capped by the data).
        classifier, alpha, bonferroni, score_kind, seed: see :class:`~xai_lightning.concepts.TCAV`.
        scalar_concepts: concepts whose scalars are logged (None: all).
        num_similar: probe images shown per side in ``tcav/<layer>/similar`` (0: none).
        max_batch: cap on images per forward/backward pass.
        output_key: where the logits are when the model returns a dict/tuple.
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    DDP: the probe images are sharded across ranks and their directional derivatives gathered;
    every rank trains the same CAVs (same weights, same data, deterministic), rank zero logs.
    """

    namespace = "tcav"

    def __init__(
        self,
        layers: str | list[str] = "auto",
        concepts: list[str] | None = None,
        classes: list[int] | None = None,
        relative_concepts: list[list[str]] | None = None,
        num_random: int = 10,
        examples_per_concept: int = 50,
        every_n_epochs: int = 1,
        num_probe: int = 100,
        concept_dir: str | None = None,
        random_pool_size: int | None = None,
        classifier: Literal["logistic", "hinge"] = "logistic",
        alpha: float = 0.05,
        bonferroni: bool = False,
        score_kind: ScoreKind = "sign_count",
        seed: int = 0,
        scalar_concepts: list[str] | None = None,
        num_similar: int = 5,
        max_batch: int | None = 256,
        output_key: str | int | None = None,
        probe_split: ProbeSplit = "val",
        probe_seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(
            num_probe=num_probe,
            every_n_epochs=every_n_epochs,
            probe_split=probe_split,
            probe_seed=probe_seed,
            on_error=on_error,
        )
        self.tcav = TCAV(
            layers=layers,
            num_random=num_random,
            examples_per_concept=examples_per_concept,
            classifier=classifier,
            alpha=alpha,
            bonferroni=bonferroni,
            score_kind=score_kind,
            seed=seed,
            max_batch=max_batch,
            output_key=output_key,
        )
        if concepts is not None and len(set(concepts)) != len(concepts):
            raise ValueError(f"concepts must be unique; got {concepts}")
        pairs = [list(pair) for pair in (relative_concepts or [])]
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(name, str) and name for name in pair):
                raise ValueError(
                    f"relative_concepts takes pairs of two different concept names, e.g. [[circle, red]]; got {pair!r}"
                )
        if len({pair_key(*pair) for pair in pairs}) != len(pairs):
            raise ValueError(f"relative_concepts has a duplicate pair: {pairs}")
        if num_similar < 0:
            raise ValueError(f"num_similar must be >= 0; got {num_similar}")
        if random_pool_size is not None and random_pool_size < examples_per_concept:
            raise ValueError(
                f"random_pool_size must be >= examples_per_concept ({examples_per_concept}); got {random_pool_size}"
            )
        if concept_dir is not None:
            for entry in concepts or []:
                concept_folder(concept_dir, entry)  # a name that escapes concept_dir fails here
        self.layers = layers
        self.concepts = list(concepts) if concepts is not None else None
        self.relative_concepts = pairs
        self.classes = list(classes) if classes is not None else None
        self.absent_classes: list[int] = []
        self.num_random = num_random
        self.examples_per_concept = examples_per_concept
        self.concept_dir = concept_dir
        self.random_pool_size = random_pool_size
        self.seed = seed
        self.scalar_concepts = scalar_concepts
        self.num_similar = num_similar
        self.output_key = output_key
        self.layer_names: list[str] = []
        self.class_indices: list[int] = []
        self.concept_images: dict[str, torch.Tensor] = {}
        self.random_pool: torch.Tensor | None = None
        self.cavs: ConceptCAVs | None = None
        self.result: TCAVResult | None = None
        self.relative_images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.relative_cavs: ConceptCAVs | None = None
        self.relative_result: TCAVResult | None = None
        self.table_history: list[list[Any]] = []
        self._given_concepts: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ Python API
    def set_concepts(self, concepts: dict[str, torch.Tensor]) -> "TCAVCallback":
        """Use these concept images ``name → (N, C, H, W)`` instead of ``concepts``/folders."""
        self._given_concepts = {name: images.detach().float().cpu() for name, images in concepts.items()}
        return self

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace,
            layers=self.layers,
            concepts=self.concepts,
            classes=self.classes,
            relative_concepts=self.relative_concepts or None,
        )

    # ------------------------------------------------------------------ setup
    def _load_concepts(self, trainer: pl.Trainer, probe: ProbeSet) -> dict[str, torch.Tensor]:
        if self._given_concepts is not None:
            return dict(self._given_concepts)
        if not self.concepts:
            raise ValueError(
                "TCAVCallback needs concepts: pass concepts=[...] (names or folders) or call set_concepts()."
            )
        size = tuple(probe.images.shape[-2:])
        channels = probe.images.shape[1]
        loaded: dict[str, torch.Tensor] = {}
        world = None
        for entry in self.concepts:
            if self.concept_dir is not None or _is_path(entry):
                folder = concept_folder(self.concept_dir, entry) if self.concept_dir is not None else Path(entry)
                loaded[entry] = load_concept_folder(folder, image_size=size, channels=channels)
                continue
            if world is None:
                world = self._concept_world(trainer)
            name = resolve_world_concept(world, entry)
            count = 3 * self.examples_per_concept
            try:
                loaded[entry] = concept_examples_from_world(world, name, count, seed=self.seed)
            except ValueError:
                loaded[entry] = concept_examples_from_world(world, name, self.examples_per_concept, seed=self.seed)
        return loaded

    def _load_relative(
        self, trainer: pl.Trainer, probe: ProbeSet, loaded: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``"A vs B"`` → (images of A, images of B) for every relative pair."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        given = self._given_concepts or {}
        world = None
        for a, b in self.relative_concepts:
            name = f"{a} vs {b}"
            from_world = [
                entry for entry in (a, b) if entry not in given and self.concept_dir is None and not _is_path(entry)
            ]
            if len(from_world) == 2:
                world = world or self._concept_world(trainer)
                out[name] = concept_contrast_from_world(world, a, b, 3 * self.examples_per_concept, seed=self.seed)
                continue
            sides = []
            for entry in (a, b):
                if entry in loaded:
                    sides.append(loaded[entry])
                elif entry in given:
                    sides.append(given[entry])
                elif self.concept_dir is not None or _is_path(entry):
                    folder = concept_folder(self.concept_dir, entry) if self.concept_dir is not None else Path(entry)
                    sides.append(
                        load_concept_folder(
                            folder, image_size=tuple(probe.images.shape[-2:]), channels=probe.images.shape[1]
                        )
                    )
                else:
                    world = world or self._concept_world(trainer)
                    sides.append(
                        concept_examples_from_world(
                            world, resolve_world_concept(world, entry), 3 * self.examples_per_concept, seed=self.seed
                        )
                    )
            out[name] = (sides[0], sides[1])
        return out

    def _concept_world(self, trainer: pl.Trainer) -> Any:
        source = find_probe_dataset(trainer, "val")
        dataset = getattr(source, "dataset", source)
        if dataset is None or not hasattr(dataset, "latent") or not hasattr(dataset, "concept_names"):
            raise ValueError(
                f"TCAVCallback: concepts {self.concepts} are ConceptWorld concept names, but the validation data is "
                f"{type(dataset).__name__}, not ConceptWorld. Give image folders instead "
                "(concept_dir='path/to/concepts' with one sub-folder per concept, or paths), or call "
                "set_concepts({name: images})."
            )
        return dataset

    def _random_pool(self, trainer: pl.Trainer) -> torch.Tensor:
        source = find_probe_dataset(trainer, "val") or find_probe_dataset(trainer, "train")
        wanted = self.random_pool_size or 2 * self.num_random * self.examples_per_concept
        if source is None:
            if self.probe is not None:
                return self.probe.images
            raise ValueError("TCAVCallback draws random sets from the validation data, but the Trainer has none.")
        pool, _ = draw_probe(source, wanted, seed=self.seed + 1)
        return pool.images

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(f"TCAVCallback explains images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        if probe.labels is None:
            raise ValueError("TCAVCallback scores the inputs of each class, so the probe data needs labels.")
        one = probe.images[:1].to(pl_module.device)
        self.layer_names = resolve_layers(pl_module, self.layers, forward=lambda: pl_module(one))
        num_classes = select_logits(pl_module(one), self.output_key).shape[1]
        self.class_indices = list(range(num_classes)) if self.classes is None else list(self.classes)
        bad = [k for k in self.class_indices if not 0 <= k < num_classes]
        if bad:
            raise ValueError(
                f"TCAVCallback: class index {bad[0]} is out of range: the model has {num_classes} classes "
                f"(valid 0..{num_classes - 1})."
            )
        # A class without probe images has no TCAV score: say so once instead of logging NaN every epoch.
        self.absent_classes = [k for k in self.class_indices if not bool((probe.labels == k).any())]
        if self.absent_classes:
            rank_zero_warn(
                f"TCAVCallback: no probe image has class {self.absent_classes} (of {probe.labels.numel()} probes), so "
                f"their TCAV scores are undefined and not logged; raise num_probe or pass classes=[...]."
            )
        self.concept_images = (
            self._load_concepts(trainer, probe)
            if (self.concepts or self._given_concepts or not self.relative_concepts)
            else {}
        )
        self.relative_images = self._load_relative(trainer, probe, self.concept_images)
        checked = dict(self.concept_images)
        checked.update(
            {
                f"{name}[{side}]": images
                for name, pair in self.relative_images.items()
                for side, images in zip("AB", pair)
            }
        )
        for name, images in checked.items():
            if images.shape[1:] != probe.images.shape[1:]:
                raise ValueError(
                    f"Concept {name!r} images are {tuple(images.shape[1:])} but the model's inputs are "
                    f"{tuple(probe.images.shape[1:])}."
                )
        smallest = min(images.shape[0] for images in checked.values())
        split_balanced(
            min(smallest, self.examples_per_concept), self.tcav.test_fraction, self.seed
        )  # too few → error now
        if self.scalar_concepts is not None:
            unknown = [c for c in self.scalar_concepts if c not in self.concept_images]
            if unknown:
                raise ValueError(f"scalar_concepts {unknown} are not among the concepts {list(self.concept_images)}")
        self.random_pool = self._random_pool(trainer)
        if self.random_pool.shape[0] < min(smallest, self.examples_per_concept):
            raise ValueError(
                f"TCAVCallback: the random pool has {self.random_pool.shape[0]} images but each random set needs "
                f"{min(smallest, self.examples_per_concept)}; add validation data or lower examples_per_concept."
            )

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert self.random_pool is not None and probe.labels is not None
        device = probe.images.device
        concepts = {name: images.to(device) for name, images in self.concept_images.items()}
        pool = self.random_pool.to(device)
        self.cavs = (
            self.tcav.fit_cavs(pl_module, concepts, pool, layers=self.layer_names, trainer=trainer)
            if concepts
            else None
        )
        if self.relative_images:
            pairs = {name: (a.to(device), b.to(device)) for name, (a, b) in self.relative_images.items()}
            self.relative_cavs = self.tcav.fit_relative_cavs(
                pl_module, pairs, pool, layers=self.layer_names, trainer=trainer
            )
        # Classes outside `classes` are differentiated too (as class 0) and masked out in report.
        targets = torch.where(
            torch.isin(probe.labels, torch.as_tensor(self.class_indices, device=device)),
            probe.labels,
            torch.zeros_like(probe.labels),
        )
        # One pass over the probe, streamed: gradients for the concept and the relative CAVs, and the
        # activations (for the similarity images) of the same pass, reduced to per-image scores slice by slice.
        kinds = [
            (kind, cavs)
            for kind, cavs in (("derivative", self.cavs), ("relative", self.relative_cavs))
            if cavs is not None
        ]
        derivative_sets, similarities = self.tcav.probe_derivative_sets(
            pl_module,
            probe.images,
            targets,
            [cavs for _, cavs in kinds],
            similarity_cavs=self.cavs if self.num_similar else None,
            trainer=trainer,
        )
        out: dict[str, torch.Tensor] = {}
        for (kind, _), derivatives in zip(kinds, derivative_sets):
            out.update({f"{kind}/{layer}": value for layer, value in derivatives.items()})
        out.update({f"similarity/{layer}": value for layer, value in similarities.items()})
        out["labels"] = probe.labels
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        # The same significance test and score kind for the plain and the relative CAVs.
        scored = functools.partial(
            tcav_from_derivatives,
            alpha=self.tcav.alpha,
            bonferroni=self.tcav.bonferroni,
            score_kind=self.tcav.score_kind,
            class_names=probe.class_names,
        )
        rows: list[dict[str, Any]] = []
        scalars: dict[str, float] = {}
        result = relative = None
        if self.cavs is not None:
            derivatives = {layer: results[f"derivative/{layer}"] for layer in self.layer_names}
            result = scored(derivatives, results["labels"], self.class_indices, self.cavs)
            self.result = result
            tracked = set(self.scalar_concepts if self.scalar_concepts is not None else result.concepts)
            for row in result.rows():
                rows.append({**row, "relative": False})
                if row["concept"] in tracked:
                    scalars.update(self._row_scalars(row, row["concept"]))
        if self.relative_cavs is not None:
            derivatives = {layer: results[f"relative/{layer}"] for layer in self.layer_names}
            relative = scored(derivatives, results["labels"], self.class_indices, self.relative_cavs)
            self.relative_result = relative
            for row in relative.rows():
                rows.append({**row, "relative": True})
                scalars.update(self._row_scalars(row, pair_key(*row["concept"].split(" vs ", 1))))
        baseline = result or relative
        if baseline is not None:
            for row in baseline.rows():
                if row["class_index"] in self.absent_classes:
                    continue
                prefix = f"{self.namespace}/{row['layer']}/random_baseline/{row['class']}"
                scalars[f"{prefix}/sign_count"] = row["random_sign_count_mean"]
                scalars[f"{prefix}/magnitude"] = row["random_magnitude_mean"]
        epoch, step = trainer.current_epoch, trainer.global_step
        table = [[epoch, step] + [row[c] for c in TABLE_COLUMNS[2:]] for row in rows]
        self.table_history.extend(table)
        if trainer.is_global_zero:
            self.sinks.table(f"{self.namespace}/scores", list(TABLE_COLUMNS), table, step)
            for layer in self.layer_names:
                for shown, what in ((result, "bars"), (relative, "relative_bars")):
                    if shown is not None:
                        self._log_bars(layer, shown, step, epoch, what)
                if self.num_similar and f"similarity/{layer}" in results:
                    self._log_similar(layer, probe, results[f"similarity/{layer}"], step)
        return scalars

    def _row_scalars(self, row: dict[str, Any], concept_key: str) -> dict[str, float]:
        if row["class_index"] in self.absent_classes:
            return {}
        prefix = f"{self.namespace}/{row['layer']}/{concept_key}"
        return {
            f"{prefix}/{row['class']}/score": row["tcav_mean"],
            f"{prefix}/{row['class']}/sign_count": row["sign_count_mean"],
            f"{prefix}/{row['class']}/magnitude": row["magnitude_mean"],
            f"{prefix}/{row['class']}/p_value": row["p_value"],
            f"{prefix}/{row['class']}/significant": float(row["significant"]),
            f"{prefix}/cav_accuracy": row["cav_accuracy_mean"],
        }

    def _log_bars(self, layer: str, result: TCAVResult, step: int, epoch: int, what: str = "bars") -> None:
        from matplotlib.figure import Figure

        li = result.layers.index(layer)
        concepts, classes = result.concepts, result.classes
        width = 0.8 / (len(concepts) + 1)
        figure = Figure(figsize=(2.6 + 1.3 * len(classes) * (len(concepts) + 1) * 0.45, 3.2), layout="constrained")
        axis = figure.add_subplot()
        x = np.arange(len(classes))
        for ci, concept in enumerate(concepts):
            means = result.mean[li, ci].numpy()
            stds = np.nan_to_num(result.std[li, ci].numpy())
            bars = axis.bar(x + ci * width, means, width, yerr=stds, capsize=2, label=concept)
            for ki, bar in enumerate(bars):
                mark = "*" if bool(result.significant[li, ci, ki]) else "ns"
                axis.text(
                    bar.get_x() + bar.get_width() / 2,
                    min(float(np.nan_to_num(means[ki])) + stds[ki], 1.0) + 0.02,
                    mark,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        axis.bar(
            x + len(concepts) * width,
            result.random_mean[li].numpy(),
            width,
            yerr=np.nan_to_num(result.random_std[li].numpy()),
            capsize=2,
            color="lightgrey",
            hatch="//",
            label="random",
        )
        axis.set_xticks(x + width * len(concepts) / 2, [result.class_name(k) for k in classes])
        axis.set_ylim(0, 1.15)
        axis.set_ylabel(f"TCAV ({result.score_kind})")
        axis.set_title(f"{layer}, epoch {epoch}", fontsize=9)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        self.sinks.figure(f"{self.namespace}/{layer}/{what}", figure, step)

    def _log_similar(self, layer: str, probe: ProbeSet, similarity: torch.Tensor, step: int) -> None:
        shown = min(self.num_similar, len(probe))
        images = display_images(probe.images)  # (N, H, W, 3)
        panels, captions = [], []
        for ci, concept in enumerate(self.cavs.concepts if self.cavs else ()):
            order = torch.argsort(similarity[:, ci], descending=True, stable=True)
            rows = torch.cat([order[:shown], order.flip(0)[:shown]])
            panels.append(images[rows])
            captions.append(concept)
        if not panels:
            return
        grid = labelled_grid(
            to_uint8_hwc(torch.stack(panels)),  # (concepts, 2 · shown, H, W, 3)
            row_captions=captions,
            column_titles=[f"most {i + 1}" for i in range(shown)] + [f"least {i + 1}" for i in range(shown)],
        )
        self.sinks.images(
            f"{self.namespace}/{layer}/similar",
            [np.ascontiguousarray(grid)],
            [f"probe images most / least similar to each CAV ({layer})"],
            step,
        )

    # ------------------------------------------------------------------ checkpointing
    def extra_state(self) -> dict[str, Any]:
        return {
            "cavs": self.cavs.to_dict() if self.cavs is not None else None,
            "table": list(self.table_history),
            "relative_cavs": self.relative_cavs.to_dict() if self.relative_cavs is not None else None,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        cavs = state.get("cavs")
        self.cavs = ConceptCAVs.from_dict(cavs) if cavs is not None else None
        relative = state.get("relative_cavs")
        self.relative_cavs = ConceptCAVs.from_dict(relative) if relative is not None else None
        self.table_history = list(state.get("table", []))
