"""EmbeddingCallback: how a layer's representation of the probe set organises itself while the model trains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.dynamics_figures import scatter_figure
from xai_lightning.callbacks.epoch_schedule import epoch_listed, every_n_or_last
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.callbacks.reference_images import (
    REFERENCE_PREFIX,
    draw_reference,
    find_split,
    gather_in_parts,
)
from xai_lightning.dynamics import (
    DEFAULT_K,
    check_tsne_points,
    deep_knn_conformity,
    layer_features,
    linear_probe_accuracy,
    pca,
    resolve_feature_sites,
    silhouette_score,
    tsne,
)
from xai_lightning.dynamics.features import FeatureSite

__all__ = ["EmbeddingCallback"]


class _ConceptWorldFactors(Protocol):
    """The factor names ``factor=`` colouring reads from ConceptWorld (or any dataset shaped like it)."""

    shapes: Sequence[str]
    textures: Sequence[str]
    colours: Iterable[str]  # ConceptWorld's name → RGB mapping; iterating it gives the names
    backgrounds: Sequence[str]


Factor = Literal["shape", "texture", "colour", "background"]


class EmbeddingCallback(ObserverCallback):
    """PCA / t-SNE embeddings, class separability and deep-k-NN conformity of layer features.

    Every scheduled epoch, inside the observer guard (training stays bit-identical), the probe
    images' features at each layer (flattened; ``"penultimate"`` = the input of the last
    ``nn.Linear``) are gathered over ranks and analysed on every rank alike (CPU, float64,
    seeded — the same numbers in 1 or 2 processes):

    * PCA with ``torch.pca_lowrank`` (:func:`~xai_lightning.dynamics.pca`; agrees with
      scikit-learn's PCA), a scatter of the first two components coloured by class and, with
      ``factor``, by a ConceptWorld factor (e.g. the spurious colour);
    * t-SNE (scikit-learn, ``tsne_perplexity``) at ``tsne_epochs`` only (it costs seconds);
    * silhouette score by class and held-out linear-probe accuracy;
    * deep k-NN conformity (Papernot & McDaniel 2018): the fraction of each probe's ``knn_k``
      nearest neighbours among ``knn_reference`` *training* images (fixed, seeded) whose label
      agrees with the model's prediction, every ``knn_every_n_epochs`` epochs (the reference
      images need a forward pass each time).

    Logged keys (``<layer>`` = ``penultimate`` or the dotted name):

    ==================================================  ==========================================
    ``embedding/<layer>/pca/explained_variance_ratio/<i>``  share of variance on component ``i``
                                                        (``i = 1 … num_components``)
    ``embedding/<layer>/silhouette``                    silhouette score of the classes (−1 … 1)
    ``embedding/<layer>/linear_probe_acc``              held-out accuracy of a linear probe (half
                                                        the probe images train it)
    ``embedding/<layer>/knn_conformity``                mean deep-k-NN conformity (kNN epochs)
    ``embedding/<layer>/pca``                           figure: PC1 × PC2, by class (and factor), at
                                                        ``figure_every_n_epochs``
    ``embedding/<layer>/tsne``                          figure: t-SNE, by class (and factor)
    ``embedding/<layer>/points``                        table: epoch, probe, label, prediction,
                                                        factor, pc1, pc2, tsne1, tsne2 (NaN when
                                                        not computed) — a fresh table per epoch
    ==================================================  ==========================================

    Args:
        layers: ``"penultimate"``, a dotted module name, ``"auto"`` or a list; unknown names fail
            at ``setup`` with the list of valid names.
        num_probe: probe images (256 by default).
        num_components: principal components computed and logged (≥ 2).
        tsne_epochs: 0-based epochs with a t-SNE (negative count from the end; default ``[-1]``,
            the last epoch; ``[]``: never). Needs more than ``3 · tsne_perplexity`` probe images,
            checked in ``__init__`` and at ``setup`` (the error names the minimum).
        tsne_perplexity: t-SNE perplexity (30, as in van der Maaten & Hinton).
        factor: ConceptWorld factor for the second colouring (``"colour"``, ``"shape"``,
            ``"texture"``, ``"background"``; needs ConceptWorld probe data) or None.
        knn_k: neighbours per layer (Papernot & McDaniel's 75; capped by the reference size).
        knn_reference: training images in the deep-k-NN reference set (0: no deep k-NN).
        knn_every_n_epochs: how often to compute deep k-NN (and at the last epoch). The default 5
            keeps the reference forward passes off most epochs.
        seed: seeds PCA's random range finder, t-SNE, the linear probe's split and the reference draw.
        max_batch: cap on images per forward pass.
        output_key: where the logits are when the model returns a dict/tuple.
        figure_every_n_epochs: draw the PCA scatter plots at the first observation, every n-th
            after it and the last of a fit (t-SNE's are drawn at its epochs;
            :meth:`~xai_lightning.callbacks.ObserverCallback.figures_due`); every observation's
            scalars and ``points`` table rows are logged either way.
        every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`.
    """

    namespace = "embedding"

    def __init__(
        self,
        layers: str | list[str] = "penultimate",
        num_probe: int = 256,
        every_n_epochs: int = 1,
        figure_every_n_epochs: int = 5,
        num_components: int = 2,
        tsne_epochs: list[int] | None = None,
        tsne_perplexity: float = 30.0,
        factor: Factor | None = None,
        knn_k: int = DEFAULT_K,
        knn_reference: int = 1000,
        knn_every_n_epochs: int = 5,
        seed: int = 0,
        max_batch: int | None = 512,
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
        self.set_figure_schedule(figure_every_n_epochs)
        if num_components < 2:
            raise ValueError(f"num_components must be >= 2 (the scatter shows two); got {num_components}")
        if factor is not None and factor not in ("shape", "texture", "colour", "background"):
            raise ValueError(f"factor must be 'shape', 'texture', 'colour', 'background' or None; got {factor!r}")
        if knn_k < 1 or knn_reference < 0 or knn_every_n_epochs < 1:
            raise ValueError(
                f"need knn_k >= 1, knn_reference >= 0, knn_every_n_epochs >= 1; got {knn_k}, "
                f"{knn_reference}, {knn_every_n_epochs}"
            )
        self.tsne_epochs = [-1] if tsne_epochs is None else [int(e) for e in tsne_epochs]
        if self.tsne_epochs:
            check_tsne_points(num_probe, tsne_perplexity, "probe images (num_probe)")
        self.layers = layers
        self.num_components = num_components
        self.tsne_perplexity = tsne_perplexity
        self.factor = factor
        self.knn_k = knn_k
        self.knn_reference = knn_reference
        self.knn_every_n_epochs = knn_every_n_epochs
        self.seed = seed
        self.max_batch = max_batch
        self.output_key = output_key
        self.sites: list[FeatureSite] = []
        self.reference: ProbeSet | None = None
        self.factor_codes: torch.Tensor | None = None
        self.factor_names: tuple[str, ...] = ()
        self.num_classes = 0
        #: The latest embedding per layer (rank zero): ``{"pca": (N, 2), "tsne": (N, 2) or None,
        #: "labels": (N,), "predictions": (N,), "factor": (N,) or None}`` — for reports and notebooks.
        self.embeddings: dict[str, dict[str, torch.Tensor | None]] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, layers=self.layers, num_probe=self.num_probe)

    # ------------------------------------------------------------------ setup
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.labels is None:
            raise ValueError(
                "EmbeddingCallback colours and scores the embedding by class: the probe data needs labels."
            )
        if self.tsne_epochs:
            check_tsne_points(len(probe), self.tsne_perplexity, "probe images")
        one = probe.images[:1].to(pl_module.device)
        self.sites = resolve_feature_sites(pl_module, self.layers, forward=lambda: pl_module(one))
        _, logits = layer_features(pl_module, one, self.sites, output_key=self.output_key)
        self.num_classes = logits.shape[1]
        self.factor_codes, self.factor_names = self._factor(trainer, probe)
        self.reference = None
        if self.knn_reference > 0 and trainer.state.fn != "fit" and find_split(trainer, "train") is None:
            rank_zero_warn(
                "EmbeddingCallback: no training data outside fit, so no deep k-NN reference set; "
                "knn_conformity is not logged."
            )
        elif self.knn_reference > 0:
            self.reference = draw_reference(
                trainer,
                "train",
                self.knn_reference,
                self.seed + 1,
                type(self).__name__,
                "the deep k-NN reference set (knn_reference > 0)",
            )
            if self.reference.labels is None:
                raise ValueError("EmbeddingCallback: deep k-NN needs labelled training images; set knn_reference=0.")

    def _factor(self, trainer: pl.Trainer, probe: ProbeSet) -> tuple[torch.Tensor | None, tuple[str, ...]]:
        if self.factor is None:
            return None, ()
        source = None if self._given_probe is not None else find_probe_dataset(trainer, self.probe_split)
        dataset = getattr(source, "dataset", source)
        latent = getattr(dataset, "latent", None)
        if latent is None or probe.indices is None:
            raise ValueError(
                f"EmbeddingCallback(factor={self.factor!r}) colours by a ConceptWorld factor, but the "
                f"{self.probe_split} data is {type(dataset).__name__}, not ConceptWorld (no .latent). Use "
                "ConceptWorld data or factor=None."
            )
        world = cast(_ConceptWorldFactors, dataset)  # it has .latent: ConceptWorld-like (duck-typed)
        names = {
            "shape": world.shapes,
            "texture": world.textures,
            "colour": tuple(world.colours),
            "background": world.backgrounds,
        }[self.factor]
        return getattr(latent, self.factor)[probe.indices.long()].long().cpu(), tuple(names)

    # ------------------------------------------------------------------ one observation
    def _knn_now(self, trainer: pl.Trainer) -> bool:
        return self.reference is not None and every_n_or_last(trainer, self.knn_every_n_epochs)

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        features, logits = layer_features(
            pl_module, probe.images, self.sites, max_batch=self.max_batch, output_key=self.output_key
        )
        out = {f"features/{name}": value for name, value in features.items()}
        out["logits"] = logits
        if self._knn_now(trainer):
            assert self.reference is not None and self.reference.labels is not None
            shard = self.reference.shard(trainer.global_rank, trainer.world_size).to(probe.images.device)
            assert shard.labels is not None  # a shard of a labelled set keeps its labels
            reference, _ = layer_features(
                pl_module, shard.images, self.sites, max_batch=self.max_batch, output_key=self.output_key
            )
            out.update({f"{REFERENCE_PREFIX}features/{name}": value for name, value in reference.items()})
            out[f"{REFERENCE_PREFIX}labels"] = shard.labels
        return out

    def gather(self, trainer: pl.Trainer, local: dict[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
        reference_total = len(self.reference) if self.reference is not None else 0
        return gather_in_parts(super().gather, trainer, local, total, reference_total)

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        assert probe.labels is not None
        labels = probe.labels.cpu()
        predictions = results["logits"].argmax(1).cpu()
        knn = f"{REFERENCE_PREFIX}labels" in results
        conformity: dict[str, torch.Tensor] = {}
        if knn:
            conformity = deep_knn_conformity(
                {s.name: results[f"features/{s.name}"] for s in self.sites},
                predictions,
                {s.name: results[f"{REFERENCE_PREFIX}features/{s.name}"] for s in self.sites},
                results[f"{REFERENCE_PREFIX}labels"].cpu(),
                self.knn_k,
                num_classes=self.num_classes,
            )
        with_tsne = trainer.is_global_zero and epoch_listed(trainer, self.tsne_epochs)
        scalars: dict[str, float] = {}
        for site in self.sites:
            features = results[f"features/{site.name}"]
            prefix = f"{self.namespace}/{site.name}"
            components = pca(features, self.num_components, seed=self.seed)
            for index, ratio in enumerate(components.explained_variance_ratio.tolist()):
                scalars[f"{prefix}/pca/explained_variance_ratio/{index + 1}"] = ratio
            scalars[f"{prefix}/silhouette"] = silhouette_score(features, labels)
            scalars[f"{prefix}/linear_probe_acc"] = linear_probe_accuracy(features, labels, seed=self.seed)
            if knn:
                scalars[f"{prefix}/knn_conformity"] = float(conformity[site.name].mean())
            if trainer.is_global_zero:
                embedded = tsne(features, self.tsne_perplexity, seed=self.seed) if with_tsne else None
                self._log_embedding(
                    trainer,
                    site.name,
                    components.projected[:, :2],
                    embedded,
                    labels,
                    predictions,
                    probe,
                    draw_pca=self.figures_due(trainer),
                )
        return scalars

    def _colourings(self, labels: torch.Tensor, probe: ProbeSet) -> list[tuple[str, np.ndarray, tuple[str, ...]]]:
        class_names = probe.class_names or tuple(str(k) for k in range(self.num_classes))
        colourings = [("class", labels.numpy(), tuple(class_names))]
        if self.factor_codes is not None:
            colourings.append((self.factor or "factor", self.factor_codes.numpy(), self.factor_names))
        return colourings

    def _log_embedding(
        self,
        trainer: pl.Trainer,
        layer: str,
        projected: torch.Tensor,
        embedded: torch.Tensor | None,
        labels: torch.Tensor,
        predictions: torch.Tensor,
        probe: ProbeSet,
        draw_pca: bool = True,
    ) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        previous_tsne = self.embeddings.get(layer, {}).get("tsne")
        self.embeddings[layer] = {
            "pca": projected.clone(),
            "tsne": embedded if embedded is not None else previous_tsne,
            "labels": labels,
            "predictions": predictions,
            "factor": self.factor_codes,
        }
        colourings = self._colourings(labels, probe)
        if draw_pca:
            figure = scatter_figure(projected.numpy(), colourings, f"{layer}: PCA, epoch {epoch}", ("PC1", "PC2"))
            self.sinks.figure(f"{self.namespace}/{layer}/pca", figure, step)
        if embedded is not None:
            figure = scatter_figure(
                embedded.numpy(), colourings, f"{layer}: t-SNE, epoch {epoch}", ("t-SNE 1", "t-SNE 2")
            )
            self.sinks.figure(f"{self.namespace}/{layer}/tsne", figure, step)
        columns = ["epoch", "probe", "label", "prediction", "factor", "pc1", "pc2", "tsne1", "tsne2"]
        factor = self.factor_codes if self.factor_codes is not None else torch.full_like(labels, -1)
        tsne_points = embedded if embedded is not None else torch.full((len(labels), 2), float("nan"))
        indices = probe.indices if probe.indices is not None else torch.arange(len(labels))
        rows: list[list[Any]] = [
            [
                epoch,
                int(indices[i]),
                int(labels[i]),
                int(predictions[i]),
                int(factor[i]),
                float(projected[i, 0]),
                float(projected[i, 1]),
                float(tsne_points[i, 0]),
                float(tsne_points[i, 1]),
            ]
            for i in range(len(labels))
        ]
        self.sinks.table(f"{self.namespace}/{layer}/points", columns, rows, step)
